"""What every benchmark script shares: timing, memory readings, one fresh process per row.

Each script re-runs itself with ``--worker ...`` for every row; the worker prints one JSON
line (its measurements) last, which :func:`run_worker` parses.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time


def rss_bytes() -> int:
  """Resident memory of this process now."""
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
  """Peak resident memory of this process so far."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def median_seconds(fn, repeats: int) -> float:
  """Median wall-clock of ``repeats`` calls after one warm-up call (compilation)."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def run_worker(script: str, worker_args: list[str], label: str) -> dict | None:
  """Runs ``script --worker *worker_args`` in a fresh process; its last stdout line (JSON),
  or None after printing the worker's error."""
  out = subprocess.run(
    [sys.executable, script, "--worker", *worker_args], capture_output=True, text=True, check=False
  )
  if out.returncode != 0:
    print(f"{label} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
    return None
  result = json.loads(out.stdout.strip().splitlines()[-1])
  print(f"  measured {label}: {result['seconds']:.2f} s", file=sys.stderr, flush=True)
  return result


def train_step_flops(model, batch: int, length: int, emo: bool) -> int:
  """FLOPs of one training step (forward + backward) of ``batch`` x ``length`` tokens: 6 per
  matmul parameter per token (embedding lookups excluded, the head included) plus attention's
  score/value matmuls (``12·layers·length·heads·head_width`` per token, not discounted for
  causality); EMO adds one ``2·N·V·d`` cost projection (``p @ Ê``)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from flax import traverse_util

  tokens = batch * length
  vocab, width = model.vocab_size, model.hidden_size
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  sizes = {
    path: leaf.size
    for path, leaf in traverse_util.flatten_dict(nn.meta.unbox(shapes["params"])).items()
  }
  embedding_tables = sum(
    size
    for path, size in sizes.items()
    if path[-2:] in (("wte", "embedding"), ("wpe", "embedding"), ("embed_tokens", "embedding"))
  )
  matmul_params = sum(sizes.values()) - embedding_tables + vocab * width  # + the head.
  layers = sum(1 for path in sizes if path[-2:] in (("c_attn", "kernel"), ("q_proj", "kernel")))
  heads_width = (
    width
    if model.family == "gpt2"
    else (model.config.num_attention_heads * model.config.head_width)
  )
  attention = 12 * layers * length * heads_width  # QKᵀ and AV, fwd + bwd.
  flops = tokens * (6 * matmul_params + attention)
  if emo:
    flops += 2 * tokens * vocab * width
  return flops


def tokamax_cross_entropy(hidden, head, targets):
  """Mean CE of ``hidden [N, d] @ head [V, d]ᵀ`` by openxla tokamax's fused
  ``linear_softmax_cross_entropy_loss`` (its ``xla`` backend; 0.0.12 has no GPU kernel)."""
  import tokamax
  from absl import flags

  if not flags.FLAGS.is_parsed():  # tokamax reads its absl flags from sys.argv (the script's).
    flags.FLAGS.mark_as_parsed()
  return tokamax.linear_softmax_cross_entropy_loss(
    hidden, targets, head.T.astype(hidden.dtype), reduction="mean", implementation="xla"
  )


def train_step_setup(
  model, loss_name: str, length: int, batch, *, fused=True, params=None, use_dropout=False
):
  """``(state, step)`` for timing: a fresh state on one device (``params``, e.g. pretrained
  weights, replace the random ones), EMO's cost a frozen normalised copy of the head, and
  the trainer's step with the state donated; AdamW, dropout only with ``use_dropout``, EMO's
  published weighting without a clamp.

  ``step`` is compiled ahead of time for ``batch`` and this state's shardings, so a timed
  call can never include a compilation: a state or batch that would need another one is an
  error instead (a jitted step silently recompiles when, say, freshly loaded weights arrive
  uncommitted and its own outputs do not).
  """
  import functools

  import jax
  import jax.numpy as jnp
  import ml_collections
  import optax

  from emo_jax import models, sharding, train
  from emo_jax.models import lora

  loss_config = ml_collections.ConfigDict(
    dict(
      name=loss_name,
      weighting="mle",
      max_weight=None,
      detach_target_prob=False,
      mixing_ratio=0.5,
      gamma=0.5,
      fused=fused,
      chunk_size=None,
    )
  )
  optimizer = optax.adamw(1e-4)
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  state, shardings = train.create_train_state(
    model,
    optimizer,
    mesh,
    jax.random.key(0),
    length,
    use_cost_placeholder=loss_name == "emo",
    cost_dim=model.hidden_size,
  )
  if params is not None:  # AdamW's initial state (zeros) does not depend on their values.
    adapters, base = lora.split(state.params)  # LoRA keeps its fresh adapters.
    params = lora.combine(adapters, params) if base else params
    state = state.replace(params=jax.device_put(params, shardings.params))
  if loss_name == "emo":
    head = models.output_embeddings(model, state.params)
    unit = head / jnp.linalg.norm(head, axis=-1, keepdims=True)
    state = state.replace(cost={"embeddings": jax.device_put(unit, shardings.cost["embeddings"])})
  step = jax.jit(
    functools.partial(
      train.train_step,
      model=model,
      optimizer=optimizer,
      objective=train.make_objective(loss_config),
      skip_nonfinite=False,
      use_dropout=use_dropout,
    ),
    donate_argnums=(0,),
  )
  return state, step.lower(state, batch).compile()
