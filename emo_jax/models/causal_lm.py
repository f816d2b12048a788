"""The causal-LM protocol every model family implements, and the few calls built on it.

The trainer, sampling, metrics and evaluation see a model only through this protocol (as
levanter's ``LmHeadModel``): they never branch on the family, and family-specific names
(HF's ``n_positions``, ``n_embd``, ``max_position_embeddings`` ...) stay in the family's own
files.

A model is a Flax Linen module with

* ``__call__(input_ids, attention_mask=None, position_ids=None, deterministic=True,
  decode=False)`` -> float32 logits ``[B, T, V]``;
* ``hidden_states(...)`` (same arguments) -> the LM head's input ``[B, T, d]``;
* ``attention_mask [B, S]``: 0 marks padding; outside decoding its values are segment ids
  (several examples packed in one row attend only within themselves; a 0/1 mask is one
  segment), with ``position_ids`` restarting per segment;
* ``output_embeddings()`` -> the LM head as a ``[V, d]`` matrix (tied or not; no bias), which
  the fused losses multiply chunk by chunk;
* decoding with ``decode=True``: keys/values are appended to a ``cache`` collection
  allocated by ``init`` with a ``[B, max_length]`` input (:func:`empty_cache`), and
  ``position_ids`` are required; every cache leaf is a scalar or has the batch on axis 0
  (so :func:`repeat_cache_rows` can share one prompt's cache among several continuations);
* the properties ``family``, ``vocab_size``, ``max_length`` (longest input) and
  ``hidden_size`` (``d``), and fields ``config``, ``dtype``, ``param_dtype``, ``remat``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


@runtime_checkable
class CausalLM(Protocol):
  """What trainer, sampling and evaluation may use of a model (see the module docstring)."""

  config: Any
  dtype: Any
  param_dtype: Any
  remat: bool

  @property
  def family(self) -> str: ...

  @property
  def vocab_size(self) -> int: ...

  @property
  def max_length(self) -> int: ...

  @property
  def hidden_size(self) -> int: ...

  def __call__(
    self,
    input_ids: Array,
    attention_mask: Array | None = None,
    position_ids: Array | None = None,
    deterministic: bool = True,
    decode: bool = False,
  ) -> Array: ...

  def hidden_states(
    self,
    input_ids: Array,
    attention_mask: Array | None = None,
    position_ids: Array | None = None,
    deterministic: bool = True,
    decode: bool = False,
  ) -> Array: ...

  def output_embeddings(self) -> Array: ...


class CausalLMBase(nn.Module):
  """What the families share: float32 logits from the hidden states and the head, and the
  family-neutral sizes read off ``config`` (whose ``vocab_size``, ``max_length`` and
  ``hidden_size`` each family's config provides). A family defines ``config``, ``dtype``,
  ``param_dtype``, ``remat``, ``family``, ``hidden_states`` and ``output_embeddings``."""

  @property
  def vocab_size(self) -> int:
    return self.config.vocab_size

  @property
  def max_length(self) -> int:
    return self.config.max_length

  @property
  def hidden_size(self) -> int:
    return self.config.hidden_size

  def __call__(
    self,
    input_ids,
    attention_mask=None,
    position_ids=None,
    deterministic: bool = True,
    decode: bool = False,
  ) -> Array:
    """Logits ``[B, T, V]`` in float32; arguments as ``hidden_states``."""
    hidden = self.hidden_states(input_ids, attention_mask, position_ids, deterministic, decode)
    return head_logits(hidden, self.output_embeddings())


def head_logits(hidden: Array, head: Array) -> Array:
  """float32 logits ``[B, T, V]`` of hidden states ``[B, T, d]`` under the head ``[V, d]``."""
  return jnp.einsum(
    "btd,vd->btv", hidden, head.astype(hidden.dtype), preferred_element_type=jnp.float32
  )


def empty_cache(model: CausalLM, batch: int, length: int):
  """A zero ``cache`` collection for ``batch`` rows of up to ``length`` tokens (only the
  shapes come from ``init``: ``eval_shape`` runs no initialiser)."""
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((batch, length), jnp.int32), decode=True)[
      "cache"
    ]
  )
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def repeat_cache_rows(cache, repeats: int):
  """Each row of a ``cache`` collection ``repeats`` times in a row (row ``b * repeats + r``
  is a copy of row ``b``); the scalar write index is shared."""
  return jax.tree.map(lambda x: jnp.repeat(x, repeats, axis=0) if x.ndim else x, cache)


def hidden_states_and_head(
  model: CausalLM,
  params,
  input_ids: Array,
  attention_mask: Array | None = None,
  position_ids: Array | None = None,
  *,
  dropout_rng: jax.Array | None = None,
) -> tuple[Array, Array]:
  """Final hidden states ``[B, T, d]`` and the head ``[V, d]`` in one ``apply``.

  ``attention_mask`` / ``position_ids`` as in ``hidden_states`` (packed rows pass segment
  ids and positions that restart per segment). Dropout is on exactly when ``dropout_rng`` is
  given.
  """
  deterministic = dropout_rng is None
  rngs = {} if deterministic else {"dropout": dropout_rng}

  def both(module, ids, mask, positions):
    hidden = module.hidden_states(ids, mask, positions, deterministic=deterministic)
    return hidden, module.output_embeddings()

  return model.apply(
    {"params": params}, input_ids, attention_mask, position_ids, rngs=rngs, method=both
  )


def output_embeddings(model: CausalLM, params) -> Array:
  """The model's ``[V, d]`` output matrix, read through the model (never by path)."""
  return model.apply({"params": params}, method=lambda module: module.output_embeddings())
