"""Benchmark: loss forward+backward w.r.t. hidden states and LM head, naive vs fused vs PyTorch.

    python experiments/bench_loss.py                    # N in {2048, 8192}, GPT-2 small shapes
    python experiments/bench_loss.py --tokens 512 --repeats 3   # a quick look

Every (method, N) runs in a fresh process, so peak RSS belongs to that configuration alone:
the increment is peak RSS minus the RSS once the inputs exist. Time is the median of
``--repeats`` runs after one warm-up (compilation). GFLOP/s counts each method's own matmuls
(2·N·V·d each: CE 3, fused EMO 4, naive EMO 5 with d_c = d); the ceiling is a jitted
``[N, d] @ [d, V]`` float32 matmul measured the same way. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os

import benchmarking

VOCAB, WIDTH = 50257, 768
METHODS = {
  # name: (framework, matmul count per fwd+bwd)
  "matmul ceiling": ("jax", 1),
  "naive CE (JAX)": ("jax", 3),
  "naive EMO (JAX)": ("jax", 5),
  "fused CE (JAX)": ("jax", 3),
  "fused EMO (JAX)": ("jax", 4),
  # openxla tokamax 0.0.12's linear_softmax_cross_entropy_loss: backends 'xla' (materialises
  # the [N, V] logits) and 'mosaic_tpu'; none for GPU, so 'xla' is what runs off TPU.
  "tokamax CE (xla)": ("jax", 3),
  "PyTorch CE": ("torch", 3),
  "PyTorch official EMO": ("torch", 5),
}


def _jax_worker(method, tokens, repeats, chunk_size):
  chunk_size = chunk_size or None  # 0: the library's default.
  import jax
  import jax.numpy as jnp
  import numpy as np

  from emo_jax import fused_losses, losses

  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.standard_normal((tokens, WIDTH), np.float32))
  head = jnp.asarray(0.02 * rng.standard_normal((VOCAB, WIDTH), np.float32))
  labels = jnp.asarray(rng.integers(0, VOCAB, tokens, dtype=np.int32))
  cost = jnp.asarray(rng.standard_normal((VOCAB, WIDTH), np.float32))
  jax.block_until_ready((hidden, head, labels, cost))
  baseline = benchmarking.rss_bytes()

  if method == "matmul ceiling":
    fn = jax.jit(lambda h, w: h @ w.T)
    run = lambda: fn(hidden, head).block_until_ready()
  else:
    # Labels and costs are jit arguments (closing over them would bake them in as constants).
    objectives = {
      "naive CE (JAX)": lambda h, w, t, e: losses.masked_mean(losses.cross_entropy(h @ w.T, t)),
      "naive EMO (JAX)": lambda h, w, t, e: losses.masked_mean(losses.emo(h @ w.T, t, e)),
      "fused CE (JAX)": lambda h, w, t, e: fused_losses.fused_cross_entropy(
        h, w, t, chunk_size=chunk_size
      )[0],
      "fused EMO (JAX)": lambda h, w, t, e: fused_losses.fused_emo(
        h, w, t, e, chunk_size=chunk_size
      )[0],
      "tokamax CE (xla)": lambda h, w, t, e: benchmarking.tokamax_cross_entropy(h, w, t),
    }
    fn = jax.jit(jax.value_and_grad(objectives[method], argnums=(0, 1)))
    run = lambda: jax.block_until_ready(fn(hidden, head, labels, cost))
  return benchmarking.median_seconds(run, repeats), baseline


def official_emo_loss(logits, labels, cost_embeddings):
  """Per-token EMO loss with the arithmetic of the paper's released PyTorch code.

  Transcribed from the formulas of DRSY/EMO ``language_modeling/gpt2.py`` (mode "emo"):
  one-hot targets smoothed by 1e-15, L2-normalised cost embeddings, ``softmax @ E`` and
  ``one_hot @ E``, the weight ``(CE / (DEMD + 1e-10)).detach()``. Used as the outside anchor
  by the benchmarks; emo_jax's own losses are tested against a NumPy transcription instead.
  """
  import torch

  vocab = logits.shape[-1]
  ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
  one_hot = torch.nn.functional.one_hot(labels, num_classes=vocab).to(logits.dtype)
  stable_onehot = (one_hot + 1e-15) / torch.linalg.vector_norm(
    one_hot + 1e-15, ord=1, dim=-1, keepdim=True
  )
  unit = cost_embeddings / torch.linalg.vector_norm(cost_embeddings, ord=2, dim=1, keepdim=True)
  target_repr = stable_onehot @ unit
  model_repr = torch.log_softmax(logits, dim=-1).exp() @ unit
  demd = 1 - torch.sum(target_repr * model_repr, dim=-1)
  return (ce + (ce / (demd + 1e-10)).detach() * demd) * 0.5


def _torch_worker(method, tokens, repeats):
  import torch

  torch.manual_seed(0)
  hidden = torch.randn(tokens, WIDTH, requires_grad=True)
  head = (0.02 * torch.randn(VOCAB, WIDTH)).requires_grad_()
  labels = torch.randint(0, VOCAB, (tokens,))
  cost = torch.randn(VOCAB, WIDTH)
  baseline = benchmarking.rss_bytes()

  def run():
    hidden.grad = head.grad = None
    logits = hidden @ head.T
    if method == "PyTorch CE":
      loss = torch.nn.functional.cross_entropy(logits, labels)
    else:
      loss = official_emo_loss(logits, labels, cost).mean()
    loss.backward()

  return benchmarking.median_seconds(run, repeats), baseline


def _worker(args):
  framework, _ = METHODS[args.method]
  if framework == "torch":
    import torch

    torch.set_num_threads(os.cpu_count())
    seconds, baseline = _torch_worker(args.method, args.tokens, args.repeats)
  else:
    seconds, baseline = _jax_worker(args.method, args.tokens, args.repeats, args.chunk_size)
  print(json.dumps(dict(seconds=seconds, baseline=baseline, peak=benchmarking.peak_rss_bytes())))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument(
    "--chunk-size", type=int, default=0, help="fused chunk size (default 0: emo_jax's default)"
  )
  parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--method", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    args.tokens = args.tokens[0]
    return _worker(args)

  results = {}
  for tokens in args.tokens:
    for method in args.methods:
      result = benchmarking.run_worker(
        __file__,
        [
          "--method",
          method,
          "--tokens",
          str(tokens),
          "--repeats",
          str(args.repeats),
          "--chunk-size",
          str(args.chunk_size),
        ],
        f"{method} N={tokens}",
      )
      if result is not None:
        results[method, tokens] = result

  print(
    f"\nV = {VOCAB}, d = d_c = {WIDTH}, float32, {os.cpu_count()} CPU threads, "
    f"median of {args.repeats} after warm-up, fused chunk "
    f"{args.chunk_size or 'default (CE-type 512, EMO 341; balanced)'}.\n"
  )
  print(
    "| method | N | time (s) | × fused CE | × naive CE | GFLOP/s | % ceiling "
    "| peak RSS (GB) | Δ RSS (GB) | Δ / fused CE Δ |"
  )
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for tokens in args.tokens:
    ceiling = results.get(("matmul ceiling", tokens))
    ceiling_gflops = (2 * tokens * VOCAB * WIDTH / ceiling["seconds"] / 1e9) if ceiling else None
    fused_ce = results.get(("fused CE (JAX)", tokens))
    naive_ce = results.get(("naive CE (JAX)", tokens))
    for method in args.methods:
      r = results.get((method, tokens))
      if r is None:
        continue
      gflops = METHODS[method][1] * 2 * tokens * VOCAB * WIDTH / r["seconds"] / 1e9
      increment = r["peak"] - r["baseline"]
      ratio = lambda other, key, r=r: f"{r[key] / other[key]:.2f}" if other else "–"
      delta_ratio = (
        f"{increment / (fused_ce['peak'] - fused_ce['baseline']):.2f}" if fused_ce else "–"
      )
      share = f"{100 * gflops / ceiling_gflops:.0f}%" if ceiling_gflops else "–"
      print(
        f"| {method} | {tokens} | {r['seconds']:.2f} | {ratio(fused_ce, 'seconds')} "
        f"| {ratio(naive_ce, 'seconds')} | {gflops:.0f} | {share} "
        f"| {r['peak'] / 1e9:.2f} | {increment / 1e9:.2f} | {delta_ratio} |"
      )


if __name__ == "__main__":
  main()
