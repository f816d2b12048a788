"""Benchmark: sampling tokens/s, emo_jax's jit KV-cache sampler vs HF transformers'
PyTorch ``generate``, same shapes, same CPU.

    python experiments/bench_generate.py                  # tiny and gpt2 (124M), batch 64
    python experiments/bench_generate.py --presets smollm2-135m   # LLaMA, real weights
    python experiments/bench_generate.py --presets tiny --repeats 2

Unbiased (ancestral) sampling, exactly ``--new-tokens`` new tokens per row (the paper's 80),
left-padded prompts of 10-30 tokens, float32 (GPT-2 presets random weights, SmolLM2
its own). Each row is a fresh process;
time is the median of ``--repeats`` calls after a warm-up call (compilation). Prints a
Markdown table with tokens/s (rows × new tokens / time) and the ratio to HF.
"""

from __future__ import annotations

import argparse
import json
import os

import benchmarking

METHODS = ("emo_jax sample (jit, KV cache)", "HF transformers generate (PyTorch)")


def _prompts(batch, vocab, seed=0):
  import numpy as np

  rng = np.random.default_rng(seed)
  lengths = rng.integers(10, 31, batch)
  return [rng.integers(0, vocab, n).tolist() for n in lengths]


def _worker(args):
  from emo_jax import models

  packaged = args.preset in models.PACKAGED_MODELS
  if packaged:
    _spec, config = models.pretrained_architecture(args.preset)
    vocab = config.vocab_size
  else:
    vocab = models.from_config("gpt2", args.preset).vocab_size
  prompts = _prompts(args.batch, vocab)
  if args.method.startswith("emo_jax"):
    import jax
    import jax.numpy as jnp

    from emo_jax import sampling

    if packaged:
      model, params = models.from_pretrained(args.preset)
    else:
      model = models.from_config("gpt2", args.preset)
      params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    ids, mask = sampling.left_pad(prompts)
    run = lambda: sampling.sample(
      model, params, ids, mask, jax.random.key(1), max_new_tokens=args.new_tokens
    ).block_until_ready()
  else:
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    if packaged:  # transformers reads the same GGUF file.
      path = models.resolve_source(args.preset)
      model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
      ).eval()
    else:
      config = models.from_config("gpt2", args.preset).config
      model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
          vocab_size=config.vocab_size,
          n_positions=config.n_positions,
          n_embd=config.n_embd,
          n_layer=config.n_layer,
          n_head=config.n_head,
        )
      ).eval()
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):  # Left padding, as generate expects.
      ids[row, width - len(prompt) :] = torch.tensor(prompt)
      mask[row, width - len(prompt) :] = 1

    def run():
      with torch.no_grad():
        model.generate(
          input_ids=ids,
          attention_mask=mask,
          do_sample=True,
          top_k=0,
          top_p=1.0,
          max_new_tokens=args.new_tokens,
          min_new_tokens=args.new_tokens,
          pad_token_id=0,
        )

  seconds = benchmarking.median_seconds(run, args.repeats)
  print(json.dumps(dict(seconds=seconds, peak=benchmarking.peak_rss_bytes())))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--presets",
    nargs="+",
    default=["tiny", "gpt2"],
    help="GPT-2 presets (random weights) or packaged models (smollm2-135m: "
    "the real weights, both sides from its GGUF)",
  )
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--new-tokens", type=int, default=80)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--method", help=argparse.SUPPRESS)
  parser.add_argument("--preset", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return _worker(args)

  results = {}
  for preset in args.presets:
    for method in METHODS:
      result = benchmarking.run_worker(
        __file__,
        [
          "--method",
          method,
          "--preset",
          preset,
          "--batch",
          str(args.batch),
          "--new-tokens",
          str(args.new_tokens),
          "--repeats",
          str(args.repeats),
        ],
        f"{preset} {method}",
      )
      if result is not None:
        results[preset, method] = result

  tokens = args.batch * args.new_tokens
  print(
    f"\nBatch {args.batch}, {args.new_tokens} new tokens per row (unbiased sampling), "
    f"prompts of 10-30 tokens left-padded, float32, {os.cpu_count()} CPU threads, median "
    f"of {args.repeats} after a warm-up call.\n"
  )
  print("| preset | method | time (s) | tokens/s | × HF tokens/s | peak RSS (GB) |")
  print("|---|---|---:|---:|---:|---:|")
  for preset in args.presets:
    hf = results.get((preset, METHODS[1]))
    for method in METHODS:
      r = results.get((preset, method))
      if r is None:
        continue
      ratio = f"{hf['seconds'] / r['seconds']:.2f}" if hf else "–"
      print(
        f"| {preset} | {method} | {r['seconds']:.2f} | {tokens / r['seconds']:.0f} "
        f"| {ratio} | {r['peak'] / 1e9:.2f} |"
      )


if __name__ == "__main__":
  main()
