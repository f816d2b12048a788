"""Token-level training objectives for causal LMs: EMO and its baselines, optax style.

Every loss is a pure function of arrays. It takes logits ``[..., V]`` and integer labels
``[...]`` (already aligned: no label shifting happens here) and returns a **per-token**
array of shape ``labels.shape`` -- no reduction. Reduce with :func:`masked_mean`.

Conventions shared by every function:

* Arithmetic is done in float32 (float64 if the logits are float64), whatever the logits'
  dtype: bfloat16 activations give float32 losses.
* A position is *ignored* when its label is negative (e.g. ``-100``) or ``where`` is
  False there. Ignored positions contribute exactly 0 and receive zero gradient.
* Notation (Ren et al., "EMO: Earth Mover Distance Optimization for Auto-Regressive
  Language Modeling", ICLR 2024, arXiv:2310.04691): ``p = softmax(z)`` over the vocabulary,
  ``t`` the target token, ``ê_i`` the L2-normalised rows of the frozen cost embeddings
  ``E [V, d_c]``, transport cost ``c_i = 1 - ê_i·ê_t``, ``sg`` = stop-gradient.

Bad input fails loudly. Shape and dtype problems raise at trace time. Value problems
(label ``>= V``, an all-zero cost-embedding row) raise immediately when the arrays are
concrete (eager calls); inside ``jit`` they cannot raise, so they turn the affected loss
into NaN instead of a plausible wrong number (see :func:`checked` to raise under ``jit``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

Array = jax.Array
Weighting = Literal["mle", "demd"]

# Guard for the stop-gradient ratios CE/DEMD and DEMD/CE: the reference implementation
# (DRSY/EMO, language_modeling/gpt2.py) adds 1e-10 to the denominator.
RATIO_EPSILON = 1e-10

# The cost matmul contracts probabilities with unit vectors and the result is subtracted
# from 1; bfloat16/TF32 passes (the TPU/GPU defaults for float32) would blur costs of
# near-synonyms, whose cosines differ in the second or third decimal.
_COST_PRECISION = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------
# Input validation.
# ----------------------------------------------------------------------------------------


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _compute_dtype(dtype) -> jnp.dtype:
  """float32, or float64 when the input already is (so float64 gradient checks work)."""
  return jnp.promote_types(dtype, jnp.float32)


def _check_logits(logits: Array) -> None:
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise TypeError(f"logits must have a floating dtype, got {logits.dtype}.")
  if logits.ndim < 1:
    raise ValueError("logits must have a trailing vocabulary axis [..., V]; got a scalar.")


def _check_labels(labels: Array, logits: Array) -> None:
  if labels.shape != logits.shape[:-1]:
    raise ValueError(
      f"labels shape {labels.shape} must equal logits shape without the vocabulary axis "
      f"{logits.shape[:-1]} (logits {logits.shape})."
    )
  check_labels(labels, logits.shape[-1])


def check_labels(labels: Array, vocab_size: int) -> None:
  """Raises unless ``labels`` are integer ids; if concrete, also unless all are ``< V``."""
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(
      f"labels must be integer token ids, got dtype {labels.dtype} (soft targets go to "
      "soft_demd as label_probs)."
    )
  if _is_concrete(labels) and labels.size:
    labels_np = np.asarray(labels)
    too_large = labels_np >= vocab_size
    if too_large.any():
      index = tuple(int(i) for i in np.argwhere(too_large)[0])
      raise ValueError(
        f"label out of range: labels{list(index)} = {int(labels_np[index])} but the "
        f"vocabulary has {vocab_size} tokens (valid ids 0..{vocab_size - 1}; negative "
        "ids mean 'ignore')."
      )


def check_cost_embeddings(cost_embeddings: Array, vocab_size: int) -> None:
  """Raises unless ``cost_embeddings`` is a float ``[vocab_size, d_c]`` matrix with no zero row
  (the row check needs a concrete array; under ``jit`` a zero row yields NaN instead)."""
  if cost_embeddings.ndim != 2:
    raise ValueError(f"cost_embeddings must be [V, d_c], got shape {cost_embeddings.shape}.")
  if cost_embeddings.shape[0] != vocab_size:
    raise ValueError(
      f"cost-embedding vocab ({cost_embeddings.shape[0]} rows) != logits vocab "
      f"({vocab_size}); the cost embeddings must have one row per token."
    )
  if not jnp.issubdtype(cost_embeddings.dtype, jnp.floating):
    raise TypeError(f"cost_embeddings must have a floating dtype, got {cost_embeddings.dtype}.")
  if _is_concrete(cost_embeddings):
    rows = np.asarray(cost_embeddings, np.float32)
    norms = np.sqrt(np.einsum("vd,vd->v", rows, rows))  # No [V, d_c] temporary.
    zero_rows = np.flatnonzero(~(norms > 0))  # Also catches NaN norms.
    if zero_rows.size:
      raise ValueError(
        f"cost_embeddings row {int(zero_rows[0])} has zero (or non-finite) norm, so its "
        f"cosine cost is undefined ({zero_rows.size} such row(s): "
        f"{zero_rows[:8].tolist()}...)."
      )


def _where_mask(where: Array | None, shape: tuple[int, ...]) -> Array:
  """``where`` broadcast to ``shape`` (all True when absent)."""
  if where is None:
    return jnp.ones(shape, jnp.bool_)
  where = jnp.asarray(where)
  if where.dtype != jnp.bool_:
    raise TypeError(f"where must be a boolean mask, got dtype {where.dtype}.")
  try:
    return jnp.broadcast_to(where, shape)
  except ValueError:
    raise ValueError(
      f"where shape {where.shape} does not broadcast to the per-token shape {shape}."
    ) from None


def _valid_positions(labels: Array, where: Array | None) -> Array:
  """Boolean ``labels.shape`` mask of the positions that count."""
  return (labels >= 0) & _where_mask(where, labels.shape)


def _masked(values: Array, valid: Array) -> Array:
  # A select (not a multiply) so that the ignored positions' cotangent is exactly zero.
  return jnp.where(valid, values, jnp.zeros_like(values))


# ----------------------------------------------------------------------------------------
# Building blocks.
# ----------------------------------------------------------------------------------------


def normalize_cost_embeddings(cost_embeddings: Array) -> Array:
  """Row-L2-normalises ``cost_embeddings`` ``[V, d_c]`` into ``Ê`` (at least float32).

  Idempotent, so already-normalised embeddings may be passed to the losses as they are.
  A zero row raises when the array is concrete; under ``jit`` it becomes NaN (0/0), which
  makes every loss that uses it NaN rather than silently wrong.
  """
  check_cost_embeddings(cost_embeddings, cost_embeddings.shape[0])
  return _unit_rows(cost_embeddings)


def _unit_rows(cost_embeddings: Array) -> Array:
  embeddings = cost_embeddings.astype(_compute_dtype(cost_embeddings.dtype))  # [V, d_c]
  norms = jnp.linalg.norm(embeddings, axis=-1, keepdims=True)  # [V, 1]
  return embeddings / norms  # A zero row gives NaN (0/0): loud, never silently wrong.


def _log_probs_and_targets(logits: Array, labels: Array, valid: Array):
  """Returns ``log p [..., V]``, ``log p_t [...]`` and the gather-safe labels."""
  log_probs = jax.nn.log_softmax(logits.astype(_compute_dtype(logits.dtype)))  # [..., V]
  # Ignored positions read token 0 (any finite value works; it is masked out later).
  safe_labels = jnp.where(valid, labels, 0)  # [...]
  # Labels >= V inside jit gather NaN (fill mode), so the loss is NaN, not a wrong number.
  target_log_prob = jnp.take_along_axis(
    log_probs, safe_labels[..., None], axis=-1, mode="fill", fill_value=jnp.nan
  )[..., 0]  # [...]
  return log_probs, target_log_prob, safe_labels


def _demd_from_probs(probs: Array, safe_labels: Array, unit_embeddings: Array) -> Array:
  """``1 - (Êᵀp)·ê_t`` without any ``[..., V]`` one-hot."""
  expected_embedding = jnp.einsum(
    "...v,vd->...d",
    probs,
    unit_embeddings.astype(probs.dtype),
    precision=_COST_PRECISION,
  )  # [..., d_c]
  target_embedding = jnp.take(
    unit_embeddings.astype(probs.dtype),
    safe_labels,
    axis=0,
    mode="fill",
    fill_value=jnp.nan,
  )  # [..., d_c]
  return 1.0 - jnp.sum(expected_embedding * target_embedding, axis=-1)  # [...]


# ----------------------------------------------------------------------------------------
# Combinations of per-token terms. One definition serves the losses below and the fused
# path (emo_jax.fused_losses), which differentiates these same functions w.r.t. CE/DEMD.
# ----------------------------------------------------------------------------------------


def check_emo_options(weighting: str, max_weight: float | None) -> None:
  if weighting not in ("mle", "demd"):
    raise ValueError(f"weighting must be 'mle' or 'demd', got {weighting!r}.")
  if max_weight is not None and not max_weight > 0:
    raise ValueError(f"max_weight must be positive (or None), got {max_weight}.")


def check_unit_interval(name: str, value: float) -> None:
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{name} must be in [0, 1], got {value}.")


def combine_emo(
  ce: Array,
  demd: Array,
  target_prob: Array,
  *,
  weighting: Weighting = "mle",
  max_weight: float | None = None,
  detach_target_prob: bool = False,
) -> Array:
  """EMO's per-token combination of CE and DEMD (see :func:`emo`); elementwise.

  ``ce`` and ``demd`` carry gradients; ``target_prob`` (``p_t``) is only ever used under
  stop-gradient.
  """
  if detach_target_prob:
    # DEMD' of the paper's continual-tuning code: the target's own mass is removed from p
    # under stop-gradient, which adds sg(p_t)·ê_t·ê_t = sg(p_t) to the value only.
    demd = demd + jax.lax.stop_gradient(target_prob)
  # Both terms are >= 0 in exact arithmetic; rounding can push DEMD (1 - a dot product
  # of unit vectors) a hair below 0 for a confident correct prediction, which would flip
  # the weight's sign, so denominators are clamped at 0 before adding the epsilon.
  if weighting == "mle":
    # sg(CE/DEMD): the paper's stop-gradient weight that rescales DEMD to CE's magnitude.
    weight = jax.lax.stop_gradient(ce / (jnp.maximum(demd, 0.0) + RATIO_EPSILON))
  else:
    # sg(DEMD/CE): the "emo2" weight that rescales CE to DEMD's magnitude.
    weight = jax.lax.stop_gradient(demd / (jnp.maximum(ce, 0.0) + RATIO_EPSILON))
  if max_weight is not None:
    weight = jnp.minimum(weight, max_weight)
  if weighting == "mle":
    return 0.5 * (ce + weight * demd)
  return weight * ce + demd


def combine_mixce(ce: Array, target_prob: Array, mixing_ratio: float) -> Array:
  """MixCE's per-token ``r·CE + (1-r)·sg(p_t)·CE`` (see :func:`mixce`)."""
  # sg(p_t): MixCE's detached model probability of the target.
  target_prob = jax.lax.stop_gradient(target_prob)
  return mixing_ratio * ce + (1.0 - mixing_ratio) * target_prob * ce


def combine_tailr(ce: Array, target_prob: Array, gamma: float) -> Array:
  """TaiLr's per-token combination (see :func:`tailr`)."""
  # sg(p_t): TaiLr's detached target probability inside its importance weight.
  target_prob = jax.lax.stop_gradient(target_prob)
  weight = jnp.clip(target_prob / ((1.0 - gamma) + gamma * target_prob), 0.2, 1.0)
  return gamma * ce + (1.0 - gamma) * weight * ce


# ----------------------------------------------------------------------------------------
# Losses.
# ----------------------------------------------------------------------------------------


def cross_entropy(logits: Array, labels: Array, where: Array | None = None) -> Array:
  r"""Per-token cross-entropy (MLE), ``CE = -log p_t``.

  Args:
    logits: ``[..., V]`` unnormalised scores, any float dtype.
    labels: ``[...]`` integer target ids; negative ids are ignored.
    where: optional boolean mask broadcastable to ``labels.shape``; False is ignored.

  Returns:
    ``[...]`` float32 losses, 0 at ignored positions.

  Example:
    >>> import jax.numpy as jnp
    >>> from emo_jax import losses
    >>> logits = jnp.log(jnp.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    >>> [round(v, 4) for v in losses.cross_entropy(logits, jnp.array([0, -100])).tolist()]
    [0.6931, 0.0]
  """
  _check_logits(logits)
  _check_labels(labels, logits)
  valid = _valid_positions(labels, where)
  _, target_log_prob, _ = _log_probs_and_targets(logits, labels, valid)
  return _masked(-target_log_prob, valid)


def demd(
  logits: Array,
  labels: Array,
  cost_embeddings: Array,
  where: Array | None = None,
) -> Array:
  r"""Per-token differentiable EMD to a one-hot target (EMO, Ren et al. 2024, Eq. 9).

  .. math::
      \mathrm{DEMD} = \sum_i p_i (1 - \hat e_i \cdot \hat e_t)
                    = 1 - (\hat E^\top p) \cdot \hat e_t

  For a one-hot target every unit of mass must travel to ``t``, so this *is* the exact
  Earth Mover Distance under the cost ``1 - cos``. Computed through the expected embedding
  ``Êᵀp`` ``[..., d_c]``; no ``[..., V]`` one-hot is built. Its gradient is
  ``∂DEMD/∂z_j = p_j (c_j - DEMD)``.

  Args:
    logits: ``[..., V]``, any float dtype.
    labels: ``[...]`` integer target ids; negative ids are ignored.
    cost_embeddings: ``[V, d_c]`` frozen token embeddings (``d_c`` need not equal the model
      width); rows are L2-normalised here (idempotent). Treated as a constant only if the
      caller stops its gradient -- the losses never differentiate it on purpose.
    where: optional boolean mask broadcastable to ``labels.shape``.

  Returns:
    ``[...]`` float32 values in ``[0, 2]``, 0 at ignored positions.

  Example:
    >>> import jax.numpy as jnp
    >>> from emo_jax import losses
    >>> embeddings = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # cos: 1, 0, -1
    >>> logits = jnp.log(jnp.array([[0.5, 0.3, 0.2]]))
    >>> values = losses.demd(logits, jnp.array([0]), embeddings)  # .3·1 + .2·2
    >>> [round(v, 4) for v in values.tolist()]
    [0.7]
  """
  _check_logits(logits)
  _check_labels(labels, logits)
  check_cost_embeddings(cost_embeddings, logits.shape[-1])
  valid = _valid_positions(labels, where)
  log_probs, _, safe_labels = _log_probs_and_targets(logits, labels, valid)
  unit_embeddings = _unit_rows(cost_embeddings)  # [V, d_c]
  return _masked(_demd_from_probs(jnp.exp(log_probs), safe_labels, unit_embeddings), valid)


def soft_demd(
  logits: Array,
  label_probs: Array,
  cost_embeddings: Array,
  where: Array | None = None,
) -> Array:
  r"""Per-token upper bound on the EMD to a soft target ``τ`` (EMO, Ren et al. 2024, Eq. 8).

  .. math::
      \mathrm{DEMD}(p, \tau) = 1 - (\hat E^\top p) \cdot (\hat E^\top \tau)
                             = \sum_{i,j} p_i \tau_j (1 - \hat e_i \cdot \hat e_j)
                             \ge \mathrm{EMD}(p, \tau)

  The independent coupling ``π = p τᵀ`` is one feasible transport plan, hence the bound;
  it is exact when ``τ`` is one-hot (then it equals :func:`demd`).

  Args:
    logits: ``[..., V]``, any float dtype.
    label_probs: ``[..., V]`` target distributions τ (rows summing to 1; not checked).
    cost_embeddings: ``[V, d_c]``; rows are L2-normalised here.
    where: optional boolean mask broadcastable to ``logits.shape[:-1]``.

  Returns:
    ``[...]`` float32 values, 0 where ``where`` is False.

  Example:
    >>> import jax.numpy as jnp
    >>> from emo_jax import losses
    >>> embeddings = jnp.eye(3)  # orthogonal tokens: cost 1 between any two
    >>> logits = jnp.zeros((1, 3))
    >>> values = losses.soft_demd(logits, jnp.array([[0.5, 0.5, 0.0]]), embeddings)
    >>> [round(v, 4) for v in values.tolist()]
    [0.6667]
  """
  _check_logits(logits)
  if label_probs.shape != logits.shape:
    raise ValueError(
      f"label_probs shape {label_probs.shape} must equal logits shape {logits.shape}."
    )
  if not jnp.issubdtype(label_probs.dtype, jnp.floating):
    raise TypeError(f"label_probs must be a float distribution, got {label_probs.dtype}.")
  check_cost_embeddings(cost_embeddings, logits.shape[-1])
  valid = _where_mask(where, logits.shape[:-1])
  dtype = _compute_dtype(logits.dtype)
  unit_embeddings = _unit_rows(cost_embeddings).astype(dtype)  # [V, d_c]
  probs = jax.nn.softmax(logits.astype(dtype))  # [..., V]
  expected_embedding = jnp.einsum(
    "...v,vd->...d", probs, unit_embeddings, precision=_COST_PRECISION
  )  # [..., d_c]
  target_embedding = jnp.einsum(
    "...v,vd->...d",
    label_probs.astype(dtype),
    unit_embeddings,
    precision=_COST_PRECISION,
  )  # [..., d_c]
  bound = 1.0 - jnp.sum(expected_embedding * target_embedding, axis=-1)  # [...]
  return _masked(bound, valid)


def emo(
  logits: Array,
  labels: Array,
  cost_embeddings: Array,
  *,
  weighting: Weighting = "mle",
  max_weight: float | None = None,
  detach_target_prob: bool = False,
  where: Array | None = None,
) -> Array:
  r"""Per-token EMO objective: CE and DEMD combined as in the paper's released code.

  ``weighting="mle"`` (the published default for LM fine-tuning):

  .. math:: \tfrac12\,[\mathrm{CE} + \mathrm{sg}(w)\,\mathrm{DEMD}],
            \quad w = \mathrm{CE} / (\mathrm{DEMD} + \epsilon)

  Its value equals CE (up to ``ε``); its gradient is the average of the CE gradient and a
  DEMD gradient rescaled to CE's magnitude.

  ``weighting="demd"`` (the "emo2" recipe):

  .. math:: \mathrm{sg}(w)\,\mathrm{CE} + \mathrm{DEMD},
            \quad w = \mathrm{DEMD} / (\mathrm{CE} + \epsilon)

  ``ε = 1e-10`` (:data:`RATIO_EPSILON`, as in the reference code) guards the ratio against a
  zero denominator (e.g. ``p_t = 1``); the denominator is also clamped at 0 first, because
  rounding can leave DEMD of a confident correct prediction at about ``-1e-7``.

  Args:
    logits: ``[..., V]``, any float dtype.
    labels: ``[...]`` integer target ids; negative ids are ignored.
    cost_embeddings: ``[V, d_c]`` frozen cost embeddings; rows are L2-normalised here.
    weighting: ``"mle"`` or ``"demd"``, see above.
    max_weight: if set, the stop-gradient weight is ``min(w, max_weight)`` (the PyPI
      ``EMOLoss`` recipe uses 3.0).
    detach_target_prob: use ``DEMD' = DEMD + sg(p_t)`` -- DEMD evaluated with
      ``p - sg(p_t·onehot_t)`` as in the continual/instruction-tuning recipe. Same
      gradient as DEMD; its larger value changes the weight ``w``.
    where: optional boolean mask broadcastable to ``labels.shape``.

  Returns:
    ``[...]`` float32 losses, 0 at ignored positions.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from emo_jax import losses
    >>> logits = jax.random.normal(jax.random.key(0), (2, 5, 11))  # [batch, length, vocab]
    >>> labels = jnp.zeros((2, 5), jnp.int32)
    >>> embeddings = jax.random.normal(jax.random.key(1), (11, 4))   # d_c = 4
    >>> per_token = losses.emo(logits, labels, embeddings)
    >>> per_token.shape, bool(jnp.allclose(per_token, losses.cross_entropy(logits, labels)))
    ((2, 5), True)
  """
  check_emo_options(weighting, max_weight)
  _check_logits(logits)
  _check_labels(labels, logits)
  check_cost_embeddings(cost_embeddings, logits.shape[-1])
  valid = _valid_positions(labels, where)
  log_probs, target_log_prob, safe_labels = _log_probs_and_targets(logits, labels, valid)
  unit_embeddings = _unit_rows(cost_embeddings)  # [V, d_c]

  ce = -target_log_prob  # [...]
  demd_value = _demd_from_probs(jnp.exp(log_probs), safe_labels, unit_embeddings)  # [...]
  loss = combine_emo(
    ce,
    demd_value,
    jnp.exp(target_log_prob),
    weighting=weighting,
    max_weight=max_weight,
    detach_target_prob=detach_target_prob,
  )
  return _masked(loss, valid)


def mixce(
  logits: Array,
  labels: Array,
  mixing_ratio: float = 0.5,
  where: Array | None = None,
) -> Array:
  r"""Per-token MixCE (Zhang et al., ACL 2023), as implemented in the EMO paper's code.

  .. math:: r\,\mathrm{CE} + (1 - r)\,\mathrm{sg}(p_t)\,\mathrm{CE}

  ``mixing_ratio = 1`` is plain MLE. ``sg(p_t)`` is the approximation of the reverse
  cross-entropy term that weights each token's CE by its (detached) model probability.

  Args:
    logits: ``[..., V]``, any float dtype.
    labels: ``[...]`` integer target ids; negative ids are ignored.
    mixing_ratio: ``r`` in ``[0, 1]``.
    where: optional boolean mask broadcastable to ``labels.shape``.

  Returns:
    ``[...]`` float32 losses, 0 at ignored positions.

  Example:
    >>> import jax.numpy as jnp
    >>> from emo_jax import losses
    >>> logits = jnp.log(jnp.array([[0.5, 0.5]]))
    >>> values = losses.mixce(logits, jnp.array([0]), mixing_ratio=0.5)  # .75·ln 2
    >>> [round(v, 4) for v in values.tolist()]
    [0.5199]
  """
  check_unit_interval("mixing_ratio", mixing_ratio)
  _check_logits(logits)
  _check_labels(labels, logits)
  valid = _valid_positions(labels, where)
  _, target_log_prob, _ = _log_probs_and_targets(logits, labels, valid)
  loss = combine_mixce(-target_log_prob, jnp.exp(target_log_prob), mixing_ratio)
  return _masked(loss, valid)


def tailr(
  logits: Array,
  labels: Array,
  gamma: float = 0.5,
  where: Array | None = None,
) -> Array:
  r"""Per-token TaiLr (Ji et al., ICLR 2023), as implemented in the EMO paper's code.

  .. math::
      \gamma\,\mathrm{CE} + (1 - \gamma)\,
      \mathrm{clip}\!\Big(\frac{\mathrm{sg}(p_t)}{(1 - \gamma) + \gamma\,\mathrm{sg}(p_t)},
      0.2, 1\Big)\,\mathrm{CE}

  The reference code reuses its mixing ratio as both the CE share and TaiLr's ``γ``; so
  does this function.

  Args:
    logits: ``[..., V]``, any float dtype.
    labels: ``[...]`` integer target ids; negative ids are ignored.
    gamma: ``γ`` in ``[0, 1]``; ``γ = 1`` is plain MLE.
    where: optional boolean mask broadcastable to ``labels.shape``.

  Returns:
    ``[...]`` float32 losses, 0 at ignored positions.

  Example:
    >>> import jax.numpy as jnp
    >>> from emo_jax import losses
    >>> logits = jnp.log(jnp.array([[0.5, 0.5]]))  # p_t = .5: weight .5/.75 = 2/3
    >>> values = losses.tailr(logits, jnp.array([0]), gamma=0.5)  # (.5 + .5·2/3)·ln 2
    >>> [round(v, 4) for v in values.tolist()]
    [0.5776]
  """
  check_unit_interval("gamma", gamma)
  _check_logits(logits)
  _check_labels(labels, logits)
  valid = _valid_positions(labels, where)
  _, target_log_prob, _ = _log_probs_and_targets(logits, labels, valid)
  loss = combine_tailr(-target_log_prob, jnp.exp(target_log_prob), gamma)
  return _masked(loss, valid)


# ----------------------------------------------------------------------------------------
# Reduction and checked execution.
# ----------------------------------------------------------------------------------------


def masked_mean(values: Array, where: Array | None = None) -> Array:
  """Mean of ``values`` over the positions where ``where`` is True (or over its weights).

  ``sum(values · where) / sum(where)``, with an empty mask giving 0 (and finite gradients)
  rather than NaN. ``where`` may be boolean or float weights broadcastable to ``values``.

  Example:
    >>> import jax.numpy as jnp
    >>> from emo_jax import losses
    >>> float(losses.masked_mean(jnp.array([1.0, 3.0, 100.0]), jnp.array([1, 1, 0])))
    2.0
  """
  values = values.astype(_compute_dtype(values.dtype))
  if where is None:
    return jnp.mean(values)
  weights = jnp.broadcast_to(jnp.asarray(where), values.shape).astype(values.dtype)
  # A select keeps NaN/Inf at excluded positions from leaking into the sum (0 * NaN = NaN).
  total = jnp.sum(jnp.where(weights != 0, weights * values, 0.0))
  count = jnp.sum(weights)
  return total / jnp.maximum(count, jnp.finfo(values.dtype).tiny)


def check_finite_values(logits: Array, labels: Array, cost_embeddings: Array | None = None):
  """Value checks that ``jit`` cannot raise eagerly, as ``checkify`` checks.

  Call inside a function wrapped with ``jax.experimental.checkify.checkify`` (as
  :func:`checked` does, or around a whole train step); each failure names the problem.
  """
  vocab_size = logits.shape[-1]
  checkify.check(
    jnp.all(labels < vocab_size),
    f"label out of range: max label {{label}} but the vocabulary has {vocab_size} tokens",
    label=jnp.max(labels),
  )
  checkify.check(jnp.all(jnp.isfinite(logits)), "logits contain NaN or Inf")
  if cost_embeddings is not None:
    norms = jnp.linalg.norm(cost_embeddings.astype(jnp.float32), axis=-1)  # [V]
    checkify.check(
      jnp.all(norms > 0),
      "cost_embeddings row {row} has zero (or non-finite) norm",
      row=jnp.argmin(jnp.where(norms > 0, 1, 0)),
    )


def checked(loss_fn: Callable[..., Array]) -> Callable[..., Array]:
  """Wraps a loss of this module so that bad *values* raise, even inside ``jit``.

  ``checked(losses.emo)(logits, labels, cost_embeddings, weighting="demd")`` compiles the
  loss together with :func:`check_finite_values` (labels ``< V``, finite logits, nonzero
  cost rows) via ``checkify`` and raises ``JaxRuntimeError`` naming the first failure.
  Costs one host sync per call: meant for debugging and notebooks, not the hot loop.
  """

  @functools.wraps(loss_fn)
  def wrapped(logits, labels, *args, **kwargs):
    cost_embeddings = args[0] if args else kwargs.get("cost_embeddings")
    if cost_embeddings is not None and jnp.ndim(cost_embeddings) != 2:
      cost_embeddings = None  # A scalar hyper-parameter (mixce/tailr), not embeddings.

    # Hyper-parameters and embeddings are closed over, so they stay Python/concrete values.
    def body(logits, labels):
      check_finite_values(logits, labels, cost_embeddings)
      return loss_fn(logits, labels, *args, **kwargs)

    error, out = checkify.checkify(jax.jit(body))(logits, labels)
    error.throw()
    return out

  return wrapped
