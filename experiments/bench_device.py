"""The accelerator benchmark (issue #20): train steps, the loss alone, and a profile of the EMO step.

    python experiments/bench_device.py                # on one GPU (sized for < 8 min; not yet run there)
    python experiments/bench_device.py --smoke        # every code path at toy sizes (CPU too)

Prints three Markdown tables and writes them (with the raw numbers) to ``--out``:

1. **Train steps**: GPT-2 small and a SmolLM2-135M-shaped LLaMA with random weights,
   bfloat16 activations (float32 parameters, optimizer and losses), AdamW, one jitted step
   with donation, MLE and EMO (both fused; EMO's cost a frozen normalised copy of the head),
   ``--batch`` x 1024 tokens. Tokens/s, the EMO / MLE time ratio, and MFU: the model FLOPs of
   :func:`benchmarking.train_step_flops` (EMO's extra ``p @ Ê`` not counted, so its MFU is
   comparable with MLE's) over the chip's dense bf16 peak (``--peak-tflops``; by default from
   the device kind, H100/H200: 989) and over a bf16 ``[8192, 8192]^2`` matmul measured here.
2. **Loss alone**: N = 16,384 tokens, V = 50,257, d = 768 (GPT-2 small's head), bfloat16
   hidden states and float32 head, value and gradients w.r.t. both: naive CE, naive EMO,
   fused CE, fused EMO, and tokamax's ``linear_softmax_cross_entropy_loss`` (its ``xla``
   backend: 0.0.12 has no GPU kernel for it). Each row in a fresh process: median time, peak
   device memory (``memory_stats``), TFLOP/s of its matmuls (CE 3, fused EMO 4, naive EMO 5
   times ``2·N·V·d``).
3. **Profile** of the GPT-2 small EMO step: three steps under ``jax.profiler.trace`` (Perfetto
   trace, parsed here), the device ops by total time.

XLA's GPU autotuning is left at its default (on); the script prints ``XLA_FLAGS``.

On the lent H200 (README: packages there), the image has jax, flax, optax, orbax and chex;
carry wheels of ml-collections, qwix (imported by the trainer) and, for the tokamax row,
tokamax with einshape, pydantic, typeguard 2.13.3 and immutabledict (a missing tokamax only
drops its row).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time

import benchmarking

# Dense bf16 peak (TFLOP/s) per device kind, by the vendors' datasheets.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v5": 459.0, "TPU v4": 275.0}
LOSS_METHODS = {  # name: matmuls of 2·N·V·d, forward + backward
  "naive CE": 3,
  "naive EMO": 5,
  "fused CE": 3,
  "fused EMO": 4,
  "tokamax CE (xla)": 3,
}


def _peak_tflops(device_kind: str, override: float | None) -> float | None:
  if override:
    return override
  for name, peak in PEAK_BF16_TFLOPS.items():
    if name.lower() in device_kind.lower():
      return peak
  return None


def _median_device_seconds(fn, repeats: int) -> float:
  import jax

  return benchmarking.median_seconds(lambda: jax.block_until_ready(fn()), repeats)


def measured_matmul_tflops(size: int, repeats: int) -> float:
  import jax
  import jax.numpy as jnp

  a = jnp.ones((size, size), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(0), (size, size), jnp.bfloat16)
  matmul = jax.jit(lambda x, y: x @ y)
  seconds = _median_device_seconds(lambda: matmul(a, b), repeats)
  return 2 * size**3 / seconds / 1e12


def _model(name: str, smoke: bool, length: int):
  from emo_jax import models

  family, preset = {
    "GPT-2 small": ("gpt2", "gpt2"),
    "SmolLM2-135M shape": ("llama", "smollm2-135m"),
  }[name]
  if smoke:
    preset = "tiny"
  return models.from_config(family, preset, max_length=length, dropout=0.0, dtype="bfloat16")


def _batch(model, batch: int, length: int):
  import jax
  import numpy as np

  tokens = np.random.default_rng(0).integers(0, model.vocab_size, (1, batch, length + 1))
  return jax.device_put(
    {
      "inputs": tokens[..., :-1].astype(np.int32),
      "targets": tokens[..., 1:].astype(np.int32),
      "weights": np.ones((1, batch, length), np.float32),
    }
  )


def train_step_rows(args) -> list[dict]:
  rows = []
  for name in ("GPT-2 small", "SmolLM2-135M shape"):
    model = _model(name, args.smoke, args.length)
    flops = benchmarking.train_step_flops(model, args.batch, args.length, emo=False)
    for loss_name in ("mle", "emo"):
      batch = _batch(model, args.batch, args.length)
      start = time.perf_counter()
      state, step = benchmarking.train_step_setup(model, loss_name, args.length, batch)
      compile_seconds = time.perf_counter() - start  # Initialisation included.
      state, metrics = step(state, batch)  # Warm-up.
      float(metrics["loss"])
      times = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        float(metrics["loss"])  # A host sync per step, as the trainer's logging does.
        times.append(time.perf_counter() - start)
      seconds = sorted(times)[len(times) // 2]
      rows.append(
        dict(
          model=name,
          loss=loss_name,
          seconds=seconds,
          tokens_per_second=args.batch * args.length / seconds,
          model_tflops=flops / seconds / 1e12,
          compile_seconds=compile_seconds,
        )
      )
      print(f"  {name} {loss_name}: {seconds * 1e3:.1f} ms/step", file=sys.stderr, flush=True)
      del state
  return rows


def _loss_worker(method: str, tokens: int, vocab: int, width: int, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from emo_jax import fused_losses, losses

  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.standard_normal((tokens, width)), jnp.bfloat16)  # [N, d]
  head = jnp.asarray(0.02 * rng.standard_normal((vocab, width)), jnp.float32)  # [V, d]
  labels = jnp.asarray(rng.integers(0, vocab, tokens), jnp.int32)
  cost = jnp.asarray(rng.standard_normal((vocab, width)), jnp.float32)
  cost = cost / jnp.linalg.norm(cost, axis=-1, keepdims=True)

  def logits(h, w):
    return jnp.einsum("nd,vd->nv", h, w.astype(h.dtype), preferred_element_type=jnp.float32)

  objectives = {
    "naive CE": lambda h, w, t, e: losses.masked_mean(losses.cross_entropy(logits(h, w), t)),
    "naive EMO": lambda h, w, t, e: losses.masked_mean(losses.emo(logits(h, w), t, e)),
    "fused CE": lambda h, w, t, e: fused_losses.fused_cross_entropy(h, w, t)[0],
    "fused EMO": lambda h, w, t, e: fused_losses.fused_emo(h, w, t, e)[0],
    "tokamax CE (xla)": lambda h, w, t, e: benchmarking.tokamax_cross_entropy(h, w, t),
  }
  fn = jax.jit(jax.value_and_grad(objectives[method], argnums=(0, 1)))
  jax.block_until_ready((hidden, head, labels, cost))
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  before = stats.get("bytes_in_use", 0)
  seconds = _median_device_seconds(lambda: fn(hidden, head, labels, cost), repeats)
  stats = device.memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return dict(
    seconds=seconds,
    peak_increment=None if peak is None else peak - before,
    tflops=LOSS_METHODS[method] * 2 * tokens * vocab * width / seconds / 1e12,
  )


def loss_rows(args) -> list[dict]:
  tokens, vocab, width = (512, 1000, 64) if args.smoke else (16384, 50257, 768)
  rows = []
  for method in LOSS_METHODS:
    result = benchmarking.run_worker(
      __file__,
      [
        "--method",
        method,
        "--tokens",
        str(tokens),
        "--vocab",
        str(vocab),
        "--width",
        str(width),
        "--repeats",
        str(args.repeats),
      ],
      f"loss {method}",
    )
    if result is not None:
      rows.append(dict(method=method, tokens=tokens, vocab=vocab, width=width, **result))
  return rows


def profile_rows(args, top: int = 15) -> list[dict]:
  """Device ops of three GPT-2 small EMO steps, by total time (Perfetto trace events)."""
  import glob

  import jax

  model = _model("GPT-2 small", args.smoke, args.length)
  batch = _batch(model, args.batch, args.length)
  state, step = benchmarking.train_step_setup(model, "emo", args.length, batch)
  state, metrics = step(state, batch)
  float(metrics["loss"])
  trace_dir = tempfile.mkdtemp(prefix="emo_profile_")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(3):
      state, metrics = step(state, batch)
    float(metrics["loss"])
  paths = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
  if not paths:
    print(f"no Perfetto trace under {trace_dir}", file=sys.stderr)
    return []
  with gzip.open(paths[0], "rt") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  process_names = {
    e["pid"]: e["args"]["name"]
    for e in events
    if e.get("ph") == "M" and e.get("name") == "process_name" and "args" in e
  }
  device_pids = {
    pid for pid, name in process_names.items() if "/device:" in name and "CPU" not in name
  }
  if not device_pids:  # The CPU backend: its XLA ops run on host threads.
    device_pids = set(process_names)
  totals: dict[str, float] = {}
  for e in events:
    if e.get("ph") == "X" and e.get("pid") in device_pids and "dur" in e:
      totals[e["name"]] = totals.get(e["name"], 0.0) + float(e["dur"])
  whole = sum(totals.values()) or 1.0
  ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
  return [dict(op=name, microseconds=us / 3, share=us / whole) for name, us in ranked]


def print_tables(info, steps, loss, profile) -> str:
  lines = [
    (
      f"Device: {info['device']} ({info['backend']}), jax {info['jax']}; XLA_FLAGS="
      f"{info['xla_flags']!r}; bf16 matmul {info['matmul_size']}^3 measured "
      f"{info['matmul_tflops']:.0f} TFLOP/s; peak for MFU {info['peak_tflops'] or '–'} TFLOP/s."
    ),
    "",
    (
      f"Train steps: {info['batch']} x {info['length']} tokens, bfloat16 activations, AdamW, "
      "fused losses; median of the timed steps after compilation."
    ),
    "",
    (
      "| model | loss | ms / step | tokens/s | × MLE time | model TFLOP/s | MFU (peak) "
      "| MFU (measured matmul) | init + compile (s) |"
    ),
    "|---|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for row in steps:
    mle = next(r for r in steps if r["model"] == row["model"] and r["loss"] == "mle")
    peak = info["peak_tflops"]
    lines.append(
      f"| {row['model']} | {row['loss']} | {row['seconds'] * 1e3:.1f} "
      f"| {row['tokens_per_second']:,.0f} | {row['seconds'] / mle['seconds']:.2f} "
      f"| {row['model_tflops']:.1f} | "
      + (f"{100 * row['model_tflops'] / peak:.1f}%" if peak else "–")
      + f" | {100 * row['model_tflops'] / info['matmul_tflops']:.1f}% "
      f"| {row['compile_seconds']:.0f} |"
    )
  if loss:
    first = loss[0]
    lines += [
      "",
      (
        f"Loss alone: N = {first['tokens']}, V = {first['vocab']}, d = {first['width']}, "
        "bf16 hidden, f32 head; value + gradients w.r.t. both; each row a fresh process."
      ),
      "",
      "| method | ms | × fused CE | peak memory increment (GB) | TFLOP/s |",
      "|---|---:|---:|---:|---:|",
    ]
    fused_ce = next((r for r in loss if r["method"] == "fused CE"), None)
    for row in loss:
      ratio = f"{row['seconds'] / fused_ce['seconds']:.2f}" if fused_ce else "–"
      memory = "–" if row["peak_increment"] is None else f"{row['peak_increment'] / 1e9:.2f}"
      lines.append(
        f"| {row['method']} | {row['seconds'] * 1e3:.2f} | {ratio} | {memory} "
        f"| {row['tflops']:.1f} |"
      )
  if profile:
    lines += [
      "",
      "Profile: GPT-2 small EMO step, device ops by total time (per step).",
      "",
      "| op | µs / step | share |",
      "|---|---:|---:|",
    ]
    lines += [
      f"| `{r['op'][:80]}` | {r['microseconds']:.0f} | {100 * r['share']:.1f}% |" for r in profile
    ]
  text = "\n".join(lines)
  print(text)
  return text


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true", help="toy sizes: every code path, fast")
  parser.add_argument("--batch", type=int, default=32, help="sequences of --length per step")
  parser.add_argument("--length", type=int, default=1024)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--peak-tflops", type=float, default=None)
  parser.add_argument("--out", default=os.environ.get("OUT", "."), help="where tables go")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--method", help=argparse.SUPPRESS)
  parser.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    result = _loss_worker(args.method, args.tokens, args.vocab, args.width, args.repeats)
    print(json.dumps(result))
    return
  if args.smoke:
    args.batch, args.length, args.repeats = 2, 32, 2

  import jax

  device = jax.devices()[0]
  matmul_size = 512 if args.smoke else 8192
  info = dict(
    device=device.device_kind,
    backend=jax.default_backend(),
    jax=jax.__version__,
    xla_flags=os.environ.get("XLA_FLAGS", ""),
    matmul_size=matmul_size,
    matmul_tflops=measured_matmul_tflops(matmul_size, args.repeats),
    peak_tflops=_peak_tflops(device.device_kind, args.peak_tflops),
    batch=args.batch,
    length=args.length,
  )
  steps = train_step_rows(args)
  loss = loss_rows(args)
  profile = profile_rows(args)
  text = print_tables(info, steps, loss, profile)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "bench_device.md"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(args.out, "bench_device.json"), "w") as f:
    json.dump(dict(info=info, train_steps=steps, loss=loss, profile=profile), f, indent=1)


if __name__ == "__main__":
  main()
