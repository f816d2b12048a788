"""Batched autoregressive sampling with the model's KV cache, compiled once per shape.

Prompts are left-padded to a common length so every row's next token is written at the same
cache slot; positions count only real tokens (``cumsum(mask) - 1``), exactly as if each row
were alone. The prompt is pre-filled in one call, then ``lax.scan`` emits exactly
``max_new_tokens`` tokens (the paper forces 80).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """``[B, P]`` ids and mask (1 = real token), each prompt right-aligned."""
  length = max(len(p) for p in prompts)
  if min(len(p) for p in prompts) == 0:
    raise ValueError("every prompt needs at least one token (e.g. the EOS id).")
  ids = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), np.int32)
  for row, prompt in enumerate(prompts):
    ids[row, length - len(prompt):] = prompt
    mask[row, length - len(prompt):] = 1
  return ids, mask


def filter_logits(logits: jax.Array, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """Temperature, then top-k, then nucleus filtering; removed tokens get ``-inf``."""
  logits = logits.astype(jnp.float32) / temperature  # [B, V]
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # [B, V], descending
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
    cutoff_index = jnp.sum(cumulative < top_p, axis=-1, keepdims=True)  # [B, 1]
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k",
                                             "top_p", "greedy"))
def sample(model, params, prompt_ids, prompt_mask, rng, *, max_new_tokens: int,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           greedy: bool = False) -> jax.Array:
  """``[B, max_new_tokens]`` continuations of left-padded prompts.

  Args:
    model: a GPT-2 module (static); params: its parameters.
    prompt_ids, prompt_mask: ``[B, P]`` from :func:`left_pad`.
    rng: a PRNG key; row ``b`` uses ``fold_in(rng, b)``, so a row's sample does not depend
      on the other rows of the batch.
    max_new_tokens: tokens generated per row; ``P + max_new_tokens <= n_positions``.
    greedy: argmax instead of sampling (then temperature/top-k/top-p do not matter).
  """
  batch, prompt_length = prompt_ids.shape
  total = prompt_length + max_new_tokens
  if total > model.config.n_positions:
    raise ValueError(f"prompt {prompt_length} + {max_new_tokens} new tokens exceeds "
                     f"n_positions={model.config.n_positions}.")
  # Only the cache's shapes are needed from init: eval_shape runs no initialiser.
  cache_shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((batch, total), jnp.int32),
                         decode=True)["cache"])
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)
  key_mask = jnp.concatenate([prompt_mask, jnp.ones((batch, max_new_tokens), jnp.int32)], 1)
  positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)  # [B, P]
  logits, state = model.apply({"params": params, "cache": cache}, prompt_ids,
                              attention_mask=key_mask, position_ids=positions, decode=True,
                              mutable=["cache"])
  row_keys = jax.vmap(lambda b: jax.random.fold_in(rng, b))(jnp.arange(batch))

  def choose(step_logits, step):
    if greedy:
      return jnp.argmax(step_logits, axis=-1).astype(jnp.int32)
    keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(row_keys)
    filtered = filter_logits(step_logits, temperature, top_k, top_p)
    return jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)

  def step_fn(carry, step):
    cache, last_logits, next_position = carry
    token = choose(last_logits, step)  # [B]
    logits, state = model.apply({"params": params, "cache": cache}, token[:, None],
                                attention_mask=key_mask, position_ids=next_position[:, None],
                                decode=True, mutable=["cache"])
    return (state["cache"], logits[:, -1], next_position + 1), token

  first_position = positions[:, -1] + 1
  _, tokens = jax.lax.scan(step_fn, (state["cache"], logits[:, -1], first_position),
                           jnp.arange(max_new_tokens))
  return tokens.T  # [B, max_new_tokens]
