"""Benchmark: one optimizer step of GPT-2 small, emo_jax (MLE / EMO naive / EMO fused) vs
HF transformers' PyTorch GPT2LMHeadModel (CE / the official EMO arithmetic).

    python experiments/bench_train.py                       # batch 4 x 256 tokens, 124M
    python experiments/bench_train.py --preset tiny --repeats 2   # a quick look

Every row runs in a fresh process (peak RSS belongs to it alone). A step is forward,
backward and an AdamW update (dropout 0, float32, random weights; the EMO cost embeddings
are a frozen copy of the head). Time is the median of ``--repeats`` steps after one warm-up
step (compilation). GFLOP/s counts 6 FLOPs per parameter per token for the transformer and
head plus the attention score/value matmuls (12·layers·length·width per token), and for EMO
one more ``2·N·V·d`` matmul per token (the cost projection); the ceiling row is a jitted
float32 ``[N, d] @ [d, V]`` matmul. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os

import benchmarking
from bench_loss import official_emo_loss

METHODS = ("matmul ceiling", "emo_jax MLE (fused)", "emo_jax EMO (naive)",
           "emo_jax EMO (fused)", "PyTorch HF CE", "PyTorch HF official EMO")


def _jax_worker(method, preset, batch, length, repeats):
  import functools
  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np
  import optax
  from emo_jax import sharding, train
  from emo_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel

  config = GPT2Config.preset(preset, n_positions=max(length, 64), embd_pdrop=0.0,
                             attn_pdrop=0.0, resid_pdrop=0.0)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, config.vocab_size, (1, batch, length + 1)).astype(np.int32)
  micro = {"inputs": tokens[..., :-1], "targets": tokens[..., 1:],
           "weights": np.ones((1, batch, length), np.float32)}
  if method == "matmul ceiling":
    hidden = jnp.asarray(rng.standard_normal((batch * length, config.n_embd), np.float32))
    head = jnp.asarray(rng.standard_normal((config.vocab_size, config.n_embd), np.float32))
    jax.block_until_ready((hidden, head))
    baseline = benchmarking.rss_bytes()
    matmul = jax.jit(lambda h, w: h @ w.T)
    seconds = benchmarking.median_seconds(lambda: matmul(hidden, head).block_until_ready(),
                                          repeats)
    return seconds, baseline, config

  model = GPT2LMHeadModel(config)
  loss_name = "mle" if "MLE" in method else "emo"
  loss_config = ml_collections.ConfigDict(dict(
      name=loss_name, weighting="mle", max_weight=None, detach_target_prob=False,
      mixing_ratio=0.5, gamma=0.5, fused="fused" in method, chunk_size=None))
  optimizer = optax.adamw(1e-4)
  mesh = sharding.make_mesh(1, 1)
  state, shardings = train.create_train_state(
      model, optimizer, mesh, jax.random.key(0), length,
      use_cost_placeholder=loss_name == "emo", cost_dim=config.n_embd)
  if loss_name == "emo":
    head = state.params["wte"]["embedding"]
    state = state.replace(cost={"embeddings": head / jnp.linalg.norm(head, axis=-1,
                                                                     keepdims=True)})
  step = jax.jit(functools.partial(
      train.train_step, model=model, optimizer=optimizer,
      objective=train.make_objective(loss_config), skip_nonfinite=False, use_dropout=False),
      donate_argnums=(0,))
  batch_arrays = jax.device_put(micro)
  jax.block_until_ready((state, batch_arrays))
  baseline = benchmarking.rss_bytes()
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], batch_arrays)
    jax.block_until_ready(metrics)

  return benchmarking.median_seconds(run, repeats), baseline, config


def _torch_worker(method, preset, batch, length, repeats):
  import torch
  import transformers
  from emo_jax.models.gpt2 import GPT2Config

  ours = GPT2Config.preset(preset, n_positions=max(length, 64))
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=ours.vocab_size, n_positions=ours.n_positions, n_embd=ours.n_embd,
      n_layer=ours.n_layer, n_head=ours.n_head, embd_pdrop=0.0, attn_pdrop=0.0,
      resid_pdrop=0.0))
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
  head = model.lm_head.weight.detach()
  cost = (head / head.norm(dim=-1, keepdim=True)).clone()
  tokens = torch.randint(0, ours.vocab_size, (batch, length + 1))
  inputs, labels = tokens[:, :-1], tokens[:, 1:]
  baseline = benchmarking.rss_bytes()

  def run():
    optimizer.zero_grad(set_to_none=True)
    logits = model(input_ids=inputs).logits.reshape(-1, ours.vocab_size)  # [N, V]
    flat_labels = labels.reshape(-1)
    if method == "PyTorch HF CE":
      loss = torch.nn.functional.cross_entropy(logits, flat_labels)
    else:
      loss = official_emo_loss(logits, flat_labels, cost).mean()
    loss.backward()
    optimizer.step()

  return benchmarking.median_seconds(run, repeats), baseline, ours


def _flops_per_step(method, config, batch, length):
  tokens = batch * length
  if method == "matmul ceiling":
    return 2 * tokens * config.vocab_size * config.n_embd
  width, layers, vocab = config.n_embd, config.n_layer, config.vocab_size
  block_params = layers * 12 * width * width  # qkv 3d², proj d², mlp 8d².
  head_params = vocab * width
  attention = 12 * layers * length * width  # QKᵀ and AV, fwd + bwd, causal not discounted.
  flops = tokens * (6 * (block_params + head_params) + attention)
  if "EMO" in method:
    flops += 2 * tokens * vocab * width  # p @ Ê (the naive paths also pay one-hot @ Ê).
  return flops


def _worker(args):
  if args.method.startswith("PyTorch"):
    import torch
    torch.set_num_threads(os.cpu_count())
    seconds, baseline, config = _torch_worker(args.method, args.preset, args.batch,
                                              args.length, args.repeats)
  else:
    seconds, baseline, config = _jax_worker(args.method, args.preset, args.batch,
                                            args.length, args.repeats)
  flops = _flops_per_step(args.method, config, args.batch, args.length)
  print(json.dumps(dict(seconds=seconds, baseline=baseline, peak=benchmarking.peak_rss_bytes(),
                        flops=flops)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="gpt2", help="GPT2Config preset (gpt2 = 124M)")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--method", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return _worker(args)

  results = {}
  for method in args.methods:
    result = benchmarking.run_worker(
        __file__, ["--method", method, "--preset", args.preset, "--batch", str(args.batch),
                   "--length", str(args.length), "--repeats", str(args.repeats)], method)
    if result is not None:
      results[method] = result

  tokens = args.batch * args.length
  print(f"\nGPT-2 preset {args.preset!r}, batch {args.batch} x {args.length} tokens, float32, "
        f"{os.cpu_count()} CPU threads, median of {args.repeats} steps after a warm-up step.\n")
  print("| method | step (s) | tokens/s | × emo_jax MLE time | × PyTorch EMO tokens/s "
        "| GFLOP/s | % ceiling | peak RSS (GB) | Δ RSS (GB) |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  ceiling = results.get("matmul ceiling")
  ceiling_gflops = ceiling["flops"] / ceiling["seconds"] / 1e9 if ceiling else None
  mle = results.get("emo_jax MLE (fused)")
  torch_emo = results.get("PyTorch HF official EMO")
  for method in args.methods:
    r = results.get(method)
    if r is None:
      continue
    gflops = r["flops"] / r["seconds"] / 1e9
    cells = ["–", "–", "–"]  # tokens/s and the ratios mean nothing for the matmul row.
    if method != "matmul ceiling":
      cells[0] = f"{tokens / r['seconds']:.0f}"
      if mle:
        cells[1] = f"{r['seconds'] / mle['seconds']:.2f}"
      if torch_emo:
        cells[2] = f"{torch_emo['seconds'] / r['seconds']:.2f}"
    share = f"{100 * gflops / ceiling_gflops:.0f}%" if ceiling_gflops else "–"
    print(f"| {method} | {r['seconds']:.2f} | {' | '.join(cells)} | {gflops:.0f} | {share} "
          f"| {r['peak'] / 1e9:.2f} | {(r['peak'] - r['baseline']) / 1e9:.2f} |")

if __name__ == "__main__":
  main()
