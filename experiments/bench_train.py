"""Benchmark: one optimizer step, emo_jax (MLE / EMO naive / EMO fused) vs HF transformers'
PyTorch model (CE / the official EMO arithmetic), GPT-2 small or SmolLM2-135M.

    python experiments/bench_train.py                       # GPT-2 small, batch 4 x 256 tokens
    python experiments/bench_train.py --model smollm2-135m  # LLaMA, the real SmolLM2 weights
    python experiments/bench_train.py --model tiny --repeats 2   # a quick look

Every row runs in a fresh process (peak RSS belongs to it alone). A step is forward,
backward and an AdamW update (dropout 0 except where a row says, float32; GPT-2 random weights, SmolLM2 its
dequantized GGUF weights on both sides; the EMO cost embeddings are a frozen copy of the
head). Time is the median of ``--repeats`` steps after one warm-up
step (compilation). GFLOP/s counts 6 FLOPs per parameter per token for the transformer and
head plus the attention score/value matmuls (12·layers·length·width per token), and for EMO
one more ``2·N·V·d`` matmul per token (the cost projection); the ceiling row is a jitted
float32 ``[N, d] @ [d, V]`` matmul (the LoRA rows leave GFLOP/s out: their frozen weights need
no weight gradients, so 6 FLOPs a parameter does not hold). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os

from bench_loss import official_emo_loss

import benchmarking

# LoRA rank 16, alpha 32 on every projection, base frozen (configs/smollm2_instruct.py's
# adapters), with and without dropout on the adapters' inputs.
LORA_METHODS = {
  "emo_jax MLE LoRA r16 (fused)": 0.0,
  "emo_jax MLE LoRA r16 dropout 0.05 (fused)": 0.05,
}
LORA_TARGETS = {
  "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
  "gpt2": ("c_attn", "c_proj", "c_fc"),
}
METHODS = (
  "matmul ceiling",
  "emo_jax MLE (fused)",
  "emo_jax EMO (naive)",
  "emo_jax EMO (fused)",
  *LORA_METHODS,
  "PyTorch HF CE",
  "PyTorch HF official EMO",
)


def _architecture(model_name, length):
  """``(model, pretrained)``: a packaged model's architecture (its weights are loaded by the
  workers) or a GPT-2 preset with random weights."""
  from emo_jax import models

  if model_name in models.PACKAGED_MODELS:
    spec, config = models.pretrained_architecture(model_name)
    return models.build(spec.name, config), True
  return models.from_config("gpt2", model_name, max_length=max(length, 64), dropout=0.0), False


def _jax_worker(method, model_name, batch, length, repeats):
  import jax
  import jax.numpy as jnp
  import numpy as np

  from emo_jax import models

  model, pretrained = _architecture(model_name, length)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, model.vocab_size, (1, batch, length + 1)).astype(np.int32)
  micro = {
    "inputs": tokens[..., :-1],
    "targets": tokens[..., 1:],
    "weights": np.ones((1, batch, length), np.float32),
  }
  if method == "matmul ceiling":
    hidden = jnp.asarray(rng.standard_normal((batch * length, model.hidden_size), np.float32))
    head = jnp.asarray(rng.standard_normal((model.vocab_size, model.hidden_size), np.float32))
    jax.block_until_ready((hidden, head))
    baseline = benchmarking.rss_bytes()
    matmul = jax.jit(lambda h, w: h @ w.T)
    seconds = benchmarking.median_seconds(lambda: matmul(hidden, head).block_until_ready(), repeats)
    return seconds, baseline

  loss_name = "mle" if "MLE" in method else "emo"
  params = models.from_pretrained(model_name)[1] if pretrained else None
  dropout = LORA_METHODS.get(method)
  if dropout is not None:
    from emo_jax.models import lora

    config = lora.LoraConfig(rank=16, alpha=32, dropout=dropout, targets=LORA_TARGETS[model.family])
    model = lora.adapt(model, config)
  batch_arrays = jax.device_put(micro)
  state, step = benchmarking.train_step_setup(
    model,
    loss_name,
    length,
    batch_arrays,
    fused="fused" in method,
    params=params,
    use_dropout=bool(dropout),
  )
  jax.block_until_ready((state, batch_arrays))
  baseline = benchmarking.rss_bytes()
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], batch_arrays)
    jax.block_until_ready(metrics)

  return benchmarking.median_seconds(run, repeats), baseline


def _torch_model(model_name, length):
  import torch
  import transformers

  from emo_jax import models

  torch.manual_seed(0)
  if model_name in models.PACKAGED_MODELS:  # transformers reads the same GGUF file.
    path = models.resolve_source(model_name)
    return transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    )
  ours = _architecture(model_name, length)[0].config
  return transformers.GPT2LMHeadModel(
    transformers.GPT2Config(
      vocab_size=ours.vocab_size,
      n_positions=ours.n_positions,
      n_embd=ours.n_embd,
      n_layer=ours.n_layer,
      n_head=ours.n_head,
      embd_pdrop=0.0,
      attn_pdrop=0.0,
      resid_pdrop=0.0,
    )
  )


def _torch_worker(method, model_name, batch, length, repeats):
  import torch

  model = _torch_model(model_name, length)
  model.train()
  vocab = model.config.vocab_size
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
  head = model.get_output_embeddings().weight.detach()
  cost = (head / head.norm(dim=-1, keepdim=True)).clone()
  tokens = torch.randint(0, vocab, (batch, length + 1))
  inputs, labels = tokens[:, :-1], tokens[:, 1:]
  baseline = benchmarking.rss_bytes()

  def run():
    optimizer.zero_grad(set_to_none=True)
    logits = model(input_ids=inputs).logits.reshape(-1, vocab)  # [N, V]
    flat_labels = labels.reshape(-1)
    if method == "PyTorch HF CE":
      loss = torch.nn.functional.cross_entropy(logits, flat_labels)
    else:
      loss = official_emo_loss(logits, flat_labels, cost).mean()
    loss.backward()
    optimizer.step()

  return benchmarking.median_seconds(run, repeats), baseline


def _flops_per_step(method, model_name, batch, length):
  model, _ = _architecture(model_name, length)
  if method == "matmul ceiling":
    return 2 * batch * length * model.vocab_size * model.hidden_size
  return benchmarking.train_step_flops(model, batch, length, emo="EMO" in method)


def _worker(args):
  if args.method.startswith("PyTorch"):
    import torch

    torch.set_num_threads(os.cpu_count())
    seconds, baseline = _torch_worker(
      args.method, args.model, args.batch, args.length, args.repeats
    )
  else:
    seconds, baseline = _jax_worker(args.method, args.model, args.batch, args.length, args.repeats)
  flops = _flops_per_step(args.method, args.model, args.batch, args.length)
  print(
    json.dumps(
      dict(seconds=seconds, baseline=baseline, peak=benchmarking.peak_rss_bytes(), flops=flops)
    )
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--model",
    default="gpt2",
    help="a GPT-2 preset with random weights (gpt2 = 124M, tiny) or a "
    "packaged pretrained model (smollm2-135m: real weights, both sides "
    "loaded from its GGUF)",
  )
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
      __file__,
      [
        "--method",
        method,
        "--model",
        args.model,
        "--batch",
        str(args.batch),
        "--length",
        str(args.length),
        "--repeats",
        str(args.repeats),
      ],
      method,
    )
    if result is not None:
      results[method] = result

  tokens = args.batch * args.length
  print(
    f"\nModel {args.model!r}, batch {args.batch} x {args.length} tokens, float32, "
    f"{os.cpu_count()} CPU threads, median of {args.repeats} steps after a warm-up step.\n"
  )
  print(
    "| method | step (s) | tokens/s | × emo_jax MLE time | × PyTorch EMO tokens/s "
    "| GFLOP/s | % ceiling | peak RSS (GB) | Δ RSS (GB) |"
  )
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
    if method in LORA_METHODS:  # Frozen weights skip their gradients: not 6 FLOPs a parameter.
      gflops, share = "–", "–"
    else:
      gflops = f"{gflops:.0f}"
    print(
      f"| {method} | {r['seconds']:.2f} | {' | '.join(cells)} | {gflops} | {share} "
      f"| {r['peak'] / 1e9:.2f} | {(r['peak'] - r['baseline']) / 1e9:.2f} |"
    )


if __name__ == "__main__":
  main()
