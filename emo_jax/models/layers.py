"""Layers shared by the model families: dense with logical axes, RMSNorm, rotary embeddings,
masked (grouped-query) attention and the decoding KV cache.

Every parameter carries *logical* axis names; ``emo_jax.sharding`` maps them onto the mesh, so
a family only has to use these names (``vocab``, ``embed``, ``mlp``, ``qkv``, ``positions``,
``norm``) to be shardable.

Shapes: ``B`` batch, ``T`` new tokens, ``S`` keys (``T``, or the cache length when
decoding), ``H`` query heads, ``K`` key/value heads (``H`` a multiple of ``K``), ``D`` head
width.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any


def dense(
  features: int,
  axes: tuple[str, str],
  name: str,
  dtype,
  param_dtype,
  *,
  stddev: float = 0.02,
  use_bias: bool = True,
) -> nn.Dense:
  """``nn.Dense`` whose kernel ``[in, out]`` (and bias ``[out]``) have logical axis names."""
  return nn.Dense(
    features,
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
    use_bias=use_bias,
    kernel_init=nn.with_logical_partitioning(nn.initializers.normal(stddev), axes),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
  )


class RMSNorm(nn.Module):
  """Root-mean-square norm (Zhang & Sennrich, 2019): ``x / rms(x) * scale``.

  The statistics are taken in float32 whatever the activation dtype, as HF's
  ``LlamaRMSNorm`` does; the normalised activations are cast back before the scale.
  """

  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param(
      "scale",
      nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
      (x.shape[-1],),
      self.param_dtype,
    )
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return normed.astype(self.dtype) * jnp.asarray(scale, self.dtype)


def rotary_tables(position_ids: Array, head_dim: int, theta: float) -> tuple[Array, Array]:
  """``cos``, ``sin`` ``[B, T, D]`` (float32) of rotary embeddings at ``position_ids [B, T]``.

  Frequencies ``θ^(-2i/D)`` for ``i < D/2``, repeated for both halves of the head: HF's
  "rotate half" layout, not the interleaved one of the original RoFormer code.
  """
  if head_dim % 2:
    raise ValueError(f"rotary embeddings need an even head width, got {head_dim}.")
  inverse_frequency = 1.0 / (
    theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  )  # [D/2]
  angles = position_ids.astype(jnp.float32)[..., None] * inverse_frequency  # [B, T, D/2]
  angles = jnp.concatenate([angles, angles], axis=-1)  # [B, T, D]
  return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
  """Rotates ``x [B, T, heads, D]`` by the tables of :func:`rotary_tables` (float32 math)."""
  x32 = x.astype(jnp.float32)
  first, second = jnp.split(x32, 2, axis=-1)
  rotated_half = jnp.concatenate([-second, first], axis=-1)  # [B, T, heads, D]
  out = x32 * cos[:, :, None, :] + rotated_half * sin[:, :, None, :]
  return out.astype(x.dtype)


def update_kv_cache(
  module: nn.Module, key: Array, value: Array
) -> tuple[Array, Array, Array, Array]:
  """Appends ``key``/``value [B, K, T, D]`` (head-major) to ``module``'s ``cache`` collection.

  ``init`` with a ``[B, max_length]`` input allocates a ``[B, K, max_length, D]`` cache (only
  the key/value heads: grouped-query attention keeps it ``H / K`` times smaller) and attends
  within its input. Afterwards each call writes at the cache index and returns the whole
  cache, a ``[B, S]`` mask of its filled slots, and the index the new tokens start at. The
  head-major layout is what the attention matmuls read: a token-major cache would be
  transposed (copied whole) in every layer at every decoding step.
  """
  is_initialized = module.has_variable("cache", "cached_key")
  cached_key = module.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
  cached_value = module.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
  cache_index = module.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
  if not is_initialized:
    key_mask = jnp.ones((key.shape[0], key.shape[2]), jnp.bool_)  # [B, T]
    return key, value, key_mask, jnp.array(0, jnp.int32)
  offset = cache_index.value
  max_length = cached_key.value.shape[2]
  cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, (0, 0, offset, 0))
  cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, 0, offset, 0))
  cache_index.value = offset + key.shape[2]
  filled = jnp.arange(max_length) < cache_index.value  # [S]
  return (
    cached_key.value,
    cached_value.value,
    jnp.broadcast_to(filled, (key.shape[0], max_length)),
    offset,
  )


def causal_attention(
  module: nn.Module,
  query: Array,
  key: Array,
  value: Array,
  attention_mask: Array | None,
  decode: bool,
  dtype,
  weights_dropout: Callable[[Array], Array] | None = None,
) -> Array:
  """Causal softmax attention of ``query [B, T, H, D]`` over ``key``/``value [B, T, K, D]``.

  With ``decode`` the keys and values go through :func:`update_kv_cache` first. ``H`` must
  be a multiple of ``K``: each group of ``H / K`` query heads shares one key/value head.
  ``attention_mask [B, S]`` masks padded keys (0) and, outside decoding, holds segment ids:
  with several examples packed in a row (ids 1, 2, ...), a query attends only to keys with its
  own id; a 0/1 mask is the usual padding mask. Scores and softmax are
  float32; the returned ``[B, T, H, D]`` is in ``dtype``.
  """
  batch, length, num_heads, head_dim = query.shape
  num_kv_heads = key.shape[2]
  if num_heads % num_kv_heads:
    raise ValueError(
      f"{num_heads} query heads do not split into groups over {num_kv_heads} key/value heads."
    )
  groups = num_heads // num_kv_heads
  query_positions = jnp.arange(length)  # [T], relative to the first new token
  if decode:
    key, value = (t.transpose(0, 2, 1, 3) for t in (key, value))  # [B, K, T, D]
    key, value, key_mask, offset = update_kv_cache(module, key, value)  # [B, K, S, D]
    query_positions = query_positions + offset
    key_positions = jnp.arange(key.shape[2])  # [S]: the cache's slots
  else:
    key_positions = query_positions
    key_mask = jnp.ones((batch, length), jnp.bool_)
  causal = key_positions[None, :] <= query_positions[:, None]  # [T, S]
  mask = causal[None, None] & key_mask[:, None, None, :]  # [B, 1, T, S]
  if attention_mask is not None:
    mask = mask & (attention_mask != 0)[:, None, None, :]
    if not decode:
      # Packed rows: a query sees only keys of its own segment. A 0/1 mask is one segment;
      # padded queries (0) keep seeing every real key before them, as HF's do.
      segment = attention_mask[:, :, None]  # [B, T, 1]
      same = (segment == attention_mask[:, None, :]) | (segment == 0)  # [B, T, S]
      mask = mask & same[:, None]

  def softmax_weights(scores, mask):
    # HF fills masked scores with the dtype's minimum, which keeps fully masked rows (left
    # padding) finite: they average the values instead of producing NaN.
    scores = jnp.where(mask, scores / jnp.sqrt(head_dim), jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
    return weights if weights_dropout is None else weights_dropout(weights)

  if decode:
    # Query head h = k·G + g reads key/value head k: the G queries of a group become rows of
    # one matmul against the head-major cache, which is read in place, never repeated.
    grouped = query.reshape(batch, length, num_kv_heads, groups, head_dim)
    grouped = grouped.transpose(0, 2, 3, 1, 4).reshape(batch, num_kv_heads, groups * length, -1)
    scores = jnp.einsum(
      "bkqd,bksd->bkqs", grouped, key, preferred_element_type=jnp.float32
    )  # [B, K, G·T, S]
    weights = softmax_weights(scores, jnp.tile(mask, (1, 1, groups, 1)))  # [B, K, G·T, S]
    out = jnp.einsum("bkqs,bksd->bkqd", weights, value)  # [B, K, G·T, D]
    out = out.reshape(batch, num_kv_heads, groups, length, head_dim).transpose(0, 3, 1, 2, 4)
    return out.reshape(batch, length, num_heads, head_dim)  # [B, T, H, D]

  if groups > 1:
    # Without a cache (training, scoring): repeating K/V to H heads leaves two 4-D batched
    # matmuls, which XLA:CPU runs well; a separate group axis in the einsums made a fwd + bwd
    # step ~1.6x slower.
    key, value = (jnp.repeat(t, groups, axis=2) for t in (key, value))  # [B, S, H, D]
  scores = jnp.einsum(
    "bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32
  )  # [B, H, T, S]
  weights = softmax_weights(scores, mask)  # [B, H, T, S]
  return jnp.einsum("bhqk,bkhd->bqhd", weights, value)  # [B, T, H, D]


def check_positions(
  module: nn.Module, input_ids: Array, position_ids: Array | None, decode: bool, max_length: int
) -> Array:
  """``position_ids [B, T]``, defaulting to ``0..T-1``; errors for over-long inputs and for
  decoding without explicit positions."""
  batch, length = input_ids.shape
  if length > max_length:
    raise ValueError(f"sequence length {length} exceeds max_length={max_length} of this model.")
  if position_ids is None:
    if decode and not module.is_initializing():  # Allocating the cache needs no positions.
      raise ValueError(
        "decode=True needs explicit position_ids: the caller knows where "
        "each row's new tokens sit (left padding shifts them)."
      )
    position_ids = jnp.broadcast_to(jnp.arange(length), (batch, length))
  return position_ids
