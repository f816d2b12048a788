"""Batched autoregressive sampling with the model's KV cache, compiled once per shape.

Prompts are left-padded to a common length so every row's next token is written at the same
cache slot; positions count only real tokens (``cumsum(mask) - 1``), exactly as if each row
were alone. The prompt is pre-filled in one call, then ``lax.scan`` emits exactly
``max_new_tokens`` tokens (the paper forces 80; with ``eos_id`` a finished row repeats EOS).
Decoding: unbiased (ancestral) sampling by default -- the paper's main setting -- or
temperature / top-k / top-p / typical filtering, or greedy. :func:`generate` runs any number
of prompts in fixed-size batches, optionally split over a device mesh.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emo_jax import sharding
from emo_jax.models import causal_lm


def left_pad(
  prompts: Sequence[Sequence[int]], pad_id: int = 0, length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """``[B, P]`` ids and mask (1 = real token), each prompt right-aligned; ``P`` is the
  longest prompt unless ``length`` is given."""
  length = length or max(len(p) for p in prompts)
  if max(len(p) for p in prompts) > length:
    raise ValueError(f"a prompt is longer than length={length}.")
  if min(len(p) for p in prompts) == 0:
    raise ValueError("every prompt needs at least one token (e.g. the EOS id).")
  ids = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), np.int32)
  for row, prompt in enumerate(prompts):
    ids[row, length - len(prompt) :] = prompt
    mask[row, length - len(prompt) :] = 1
  return ids, mask


def filter_logits(
  logits: jax.Array,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  typical_p: float = 1.0,
) -> jax.Array:
  """Temperature, then top-k, nucleus (top-p) and locally typical filtering.

  Removed tokens get ``-inf``; every filter keeps at least the single best token. With the
  defaults nothing is removed: unbiased (ancestral) sampling, the paper's main setting.

  Args:
    logits: ``[B, V]`` next-token logits.
    top_k: keep the ``k`` largest logits (0 = off).
    top_p: keep the smallest set of most probable tokens whose mass reaches ``top_p``.
    typical_p: keep the tokens whose surprisal is closest to the entropy until their mass
      reaches ``typical_p`` (Meister et al., 2023).
  """
  logits = logits.astype(jnp.float32) / temperature  # [B, V]
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    logits = _keep_smallest_mass(logits, -logits, top_p)
  if typical_p < 1.0:
    log_probs = jax.nn.log_softmax(logits, axis=-1)  # [B, V]
    probs = jnp.exp(log_probs)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * log_probs, 0.0), axis=-1, keepdims=True)
    logits = _keep_smallest_mass(logits, jnp.abs(-log_probs - entropy), typical_p)
  return logits


def _keep_smallest_mass(logits: jax.Array, order_key: jax.Array, mass: float) -> jax.Array:
  """Keeps tokens in increasing ``order_key`` until their probability reaches ``mass``."""
  order = jnp.argsort(order_key, axis=-1)  # [B, V]
  sorted_probs = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), order, axis=-1)
  mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs  # [B, V]
  keep_sorted = mass_before < mass  # The first token always has mass_before = 0.
  keep = (
    jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
  )
  return jnp.where(keep, logits, -jnp.inf)


def _inverse_cdf_sample(keys: jax.Array, logits: jax.Array) -> jax.Array:
  """One token per row drawn from ``softmax(logits)`` with a single uniform per row.

  ``jax.random.categorical`` draws a Gumbel variate for every vocabulary entry: on CPU that
  random-number generation (B·V per step) dominated decoding. Inverting the CDF needs one
  uniform per row and a cumulative sum.
  """
  cdf = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)  # [B, V]
  uniform = jax.vmap(jax.random.uniform)(keys) * cdf[:, -1]  # [B]
  # The first index whose CDF exceeds u: a token with positive probability (filtered
  # tokens add nothing to the CDF, so they are never the first to exceed it).
  token = jnp.sum(cdf <= uniform[:, None], axis=-1)
  return jnp.minimum(token, logits.shape[-1] - 1).astype(jnp.int32)


@functools.partial(
  jax.jit,
  static_argnames=(
    "model",
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "greedy",
    "eos_id",
  ),
)
def sample(
  model,
  params,
  prompt_ids,
  prompt_mask,
  rng,
  row_offset=0,
  *,
  max_new_tokens: int,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  typical_p: float = 1.0,
  greedy: bool = False,
  eos_id: int | None = None,
) -> jax.Array:
  """``[B, max_new_tokens]`` continuations of left-padded prompts.

  Args:
    model: a causal LM (:class:`emo_jax.models.CausalLM`, static); params: its parameters.
    prompt_ids, prompt_mask: ``[B, P]`` from :func:`left_pad`.
    rng: a PRNG key; row ``b`` uses ``fold_in(rng, row_offset + b)``, so a row's sample
      does not depend on the other rows of the batch (nor, through ``row_offset``, on how a
      long prompt list was cut into batches).
    max_new_tokens: tokens generated per row; ``P + max_new_tokens <= model.max_length``.
    temperature, top_k, top_p, typical_p: see :func:`filter_logits`.
    greedy: argmax instead of sampling (then the filters do not matter).
    eos_id: if given, a row that emits it stops: every later token is ``eos_id`` too
      (shapes stay static; :func:`trim_at_eos` cuts them). None forces exactly
      ``max_new_tokens`` real tokens, as the paper does.
  """
  batch, prompt_length = prompt_ids.shape
  total = prompt_length + max_new_tokens
  if total > model.max_length:
    raise ValueError(
      f"prompt {prompt_length} + {max_new_tokens} new tokens exceeds max_length={model.max_length}."
    )
  cache = causal_lm.empty_cache(model, batch, total)
  key_mask = jnp.concatenate([prompt_mask, jnp.ones((batch, max_new_tokens), jnp.int32)], 1)
  positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)  # [B, P]

  def prefill(module, ids, mask, position_ids):
    # Only the last prompt position is sampled from: the head (a [V, d] matmul per token)
    # runs on that one alone.
    hidden = module.hidden_states(ids, mask, position_ids, decode=True)  # [B, P, d]
    return causal_lm.head_logits(hidden[:, -1:], module.output_embeddings())  # [B, 1, V]

  logits, state = model.apply(
    {"params": params, "cache": cache},
    prompt_ids,
    key_mask,
    positions,
    method=prefill,
    mutable=["cache"],
  )
  row_keys = jax.vmap(lambda b: jax.random.fold_in(rng, b))(row_offset + jnp.arange(batch))

  def choose(step_logits, step):
    if greedy:
      return jnp.argmax(step_logits, axis=-1).astype(jnp.int32)
    keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(row_keys)
    filtered = filter_logits(step_logits, temperature, top_k, top_p, typical_p)
    return _inverse_cdf_sample(keys, filtered)

  def step_fn(carry, step):
    cache, last_logits, next_position, finished = carry
    token = choose(last_logits, step)  # [B]
    if eos_id is not None:
      token = jnp.where(finished, eos_id, token)
      finished = finished | (token == eos_id)
    logits, state = model.apply(
      {"params": params, "cache": cache},
      token[:, None],
      attention_mask=key_mask,
      position_ids=next_position[:, None],
      decode=True,
      mutable=["cache"],
    )
    return (state["cache"], logits[:, -1], next_position + 1, finished), token

  first_position = positions[:, -1] + 1
  carry = (state["cache"], logits[:, -1], first_position, jnp.zeros((batch,), bool))
  _, tokens = jax.lax.scan(step_fn, carry, jnp.arange(max_new_tokens))
  return tokens.T  # [B, max_new_tokens]


def trim_at_eos(tokens: Sequence[int], eos_id: int) -> list[int]:
  """The tokens before the first ``eos_id``."""
  tokens = list(tokens)
  return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens


def generate(
  model,
  params,
  prompts: Sequence[Sequence[int]],
  rng: jax.Array,
  *,
  max_new_tokens: int,
  batch_size: int,
  mesh=None,
  eos_id: int | None = None,
  pad_id: int = 0,
  progress: bool = True,
  **decoding,
) -> list[list[int]]:
  """Continuations of any number of prompts, ``batch_size`` rows per compiled call.

  Every batch is padded to ``batch_size`` rows (one compilation) and, with a ``mesh``,
  split over all its devices like a training batch. Prints a progress line with tokens/s.
  ``decoding`` takes :func:`sample`'s keywords (temperature, top_k, top_p, typical_p,
  greedy). Row ``i`` of the whole list uses ``fold_in(rng, i)``, so results do not depend
  on ``batch_size``.
  """
  if mesh is not None and batch_size % mesh.size:
    raise ValueError(f"batch_size {batch_size} must be a multiple of the {mesh.size} devices.")
  prompt_length = max(len(p) for p in prompts)
  outputs, start_time, generated = [], time.time(), 0
  for start in range(0, len(prompts), batch_size):
    chunk = list(prompts[start : start + batch_size])
    real_rows = len(chunk)
    chunk += [chunk[-1]] * (batch_size - real_rows)  # Padding rows, dropped below.
    ids, mask = left_pad(chunk, pad_id, length=prompt_length)
    if mesh is not None:
      ids, mask = (jax.device_put(x, sharding.batch_sharding(mesh, 2)) for x in (ids, mask))
    tokens = sample(
      model,
      params,
      ids,
      mask,
      rng,
      row_offset=start,
      max_new_tokens=max_new_tokens,
      eos_id=eos_id,
      **decoding,
    )
    tokens = np.asarray(jax.device_get(tokens))[:real_rows]
    outputs += [row.tolist() for row in tokens]
    generated += real_rows * max_new_tokens
    if progress:
      elapsed = time.time() - start_time
      print(
        f"\rgenerate: {len(outputs)}/{len(prompts)} prompts, "
        f"{generated / max(elapsed, 1e-9):.0f} tokens/s",
        end="",
        file=sys.stderr,
        flush=True,
      )
  if progress:
    print(file=sys.stderr)
  return outputs
