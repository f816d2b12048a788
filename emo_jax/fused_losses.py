"""Memory-efficient objectives computed from hidden states: never an ``[N, V]`` buffer.

``fused_emo(hidden, head, labels, cost_embeddings)`` equals reducing
``losses.emo(hidden @ head.T, labels, cost_embeddings)``, but walks the tokens in chunks and
forms the gradient *during the forward pass* (the fused linear-cross-entropy approach), so
only a ``[chunk, V]`` slab of logits ever exists. Per chunk of ``C`` tokens:

1. ``z = h Wᵀ + b`` ``[C, V]``, ``p = softmax(z)``, ``CE = logsumexp(z) - z_t``;
2. ``c = 1 - ê_t Êᵀ`` ``[C, V]`` (transport costs to each target), ``DEMD = Σ_j p_j c_j``;
3. the objective's per-token loss and its partial derivatives ``a = ∂loss/∂CE`` and
   ``b = ∂loss/∂DEMD`` -- obtained by differentiating the very combination functions the
   reference losses use (``losses.combine_*``), so both paths share one definition;
4. ``∂loss/∂z = a (p - onehot_t) + b p (c - DEMD)``, then ``∂h = g W`` and ``∂W += gᵀ h``.

That is four ``C·V·d`` matmuls per chunk against cross-entropy's three. The backward pass
only scales the stored gradients by the incoming scalar cotangent, which is why these
functions return a *scalar*: the reduction must be known during the forward pass.

Chunks are strided (chunk ``k`` holds tokens ``k, k + n_chunks, ...``), so when the token axis
is sharded over devices every chunk is spread evenly over them and no device idles or
gathers another's tokens.

The cost embeddings are frozen: no gradient flows to them here. They are used as given
(raw or already normalised): cosines come from raw rows scaled by precomputed inverse
norms, so no normalised ``[V, d_c]`` copy is ever made.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp

from emo_jax import losses

Array = jax.Array
Reduction = Literal["mean", "sum"]

# Longest chunk by default: 512 tokens keeps a chunk's [C, V] float32 slabs near 100 MB at
# GPT-2's V = 50257 while the matmuls stay large enough to run near peak. An EMO chunk holds
# three such slabs (logits, costs, gradient) against cross-entropy's two, so its chunks are
# at most 2/3 as long: both then use the same scratch memory (BENCHMARKS.md).
DEFAULT_CHUNK_SIZE = 512
DEFAULT_EMO_CHUNK_SIZE = DEFAULT_CHUNK_SIZE * 2 // 3


def balanced_chunk_size(num_tokens: int, max_chunk_size: int) -> int:
  """The shortest chunk that covers ``num_tokens`` in as few chunks as ``max_chunk_size``
  allows, so padding is under one token per chunk (2048 tokens at most 341 a chunk: 7
  chunks of 293, not 7 of 341 with 339 padding tokens)."""
  num_chunks = -(-num_tokens // max_chunk_size)
  return -(-num_tokens // num_chunks)


@dataclasses.dataclass(frozen=True)
class _Objective:
  """Static description of a per-token objective (hashable: it is a custom_vjp static)."""

  name: Literal["cross_entropy", "emo", "mixce", "tailr"]
  weighting: str = "mle"
  max_weight: float | None = None
  detach_target_prob: bool = False
  mixing_ratio: float = 0.5
  gamma: float = 0.5

  @property
  def needs_demd(self) -> bool:
    return self.name == "emo"

  def combine(self, ce: Array, demd: Array | None, target_prob: Array) -> Array:
    if self.name == "cross_entropy":
      return ce
    if self.name == "emo":
      return losses.combine_emo(
        ce,
        demd,
        target_prob,
        weighting=self.weighting,
        max_weight=self.max_weight,
        detach_target_prob=self.detach_target_prob,
      )
    if self.name == "mixce":
      return losses.combine_mixce(ce, target_prob, self.mixing_ratio)
    return losses.combine_tailr(ce, target_prob, self.gamma)


# ----------------------------------------------------------------------------------------
# The chunked pass.
# ----------------------------------------------------------------------------------------


def _chunk_terms(objective, hidden, head, bias, labels, cost_terms):
  """Logits-side quantities of one chunk: probabilities, CE, p_t and (for EMO) costs/DEMD."""
  logits = jnp.einsum("cd,vd->cv", hidden, head, preferred_element_type=jnp.float32) + bias.astype(
    jnp.float32
  )  # [C, V]
  log_normalizer = jax.nn.logsumexp(logits, axis=-1)  # [C]
  probs = jnp.exp(logits - log_normalizer[:, None])  # [C, V]
  # Labels >= V gather NaN (fill mode): the loss becomes NaN rather than a wrong number.
  target_logit = jnp.take_along_axis(
    logits, labels[:, None], axis=-1, mode="fill", fill_value=jnp.nan
  )[:, 0]  # [C]
  ce = log_normalizer - target_logit  # [C]
  costs = demd = None
  if objective.needs_demd:
    # Ê is never materialised: raw rows times their inverse norms give the same cosines
    # and cost O(V) extra memory instead of a normalised [V, d_c] copy.
    cost, inverse_norms = cost_terms  # [V, d_c], [V]
    target_unit = (
      jnp.take(cost, labels, axis=0, mode="fill", fill_value=jnp.nan).astype(jnp.float32)
      * inverse_norms[labels][:, None]
    )  # [C, d_c]: ê_t
    cosines = (
      jnp.einsum(
        "ck,vk->cv",
        target_unit.astype(cost.dtype),
        cost,
        preferred_element_type=jnp.float32,
      )
      * inverse_norms
    )  # [C, V]: ê_t·ê_j
    costs = 1.0 - cosines  # [C, V]: c_j
    demd = jnp.sum(probs * costs, axis=-1)  # [C]
  return probs, ce, jnp.exp(-ce), costs, demd


def _chunked_pass(
  objective, with_grads, hidden, head, bias, labels, token_scale, cost_terms, chunk_size
):
  """Scans the chunks; returns (loss, ce, demd) and, if asked, (d_hidden, d_head, d_bias).

  ``token_scale`` ``[N]`` already folds in the token weights and the mean's normaliser, so
  ``loss = Σ_i token_scale_i · loss_i``.
  """
  num_tokens, _width = hidden.shape
  # The head's matmuls take the activations' dtype (bf16 training keeps float32 parameters,
  # and a bf16 x f32 product would silently run in float32); they accumulate in float32, and
  # the head's gradient is accumulated and returned in its own dtype.
  head_low = head.astype(hidden.dtype)  # [V, d]
  num_chunks = -(-num_tokens // chunk_size)
  padding = num_chunks * chunk_size - num_tokens

  def to_chunks(x):  # [N, ...] -> [num_chunks, C, ...], chunk k = tokens k, k + num_chunks, ...
    x = jnp.pad(x, [(0, padding)] + [(0, 0)] * (x.ndim - 1))
    return jnp.swapaxes(x.reshape(chunk_size, num_chunks, *x.shape[1:]), 0, 1)

  def from_chunks(x):  # inverse of to_chunks
    x = jnp.swapaxes(x, 0, 1).reshape(num_chunks * chunk_size, *x.shape[2:])
    return x[:num_tokens]

  def step(carry, chunk):
    hidden_c, labels_c, scale_c = chunk  # [C, d], [C], [C]
    probs, ce, target_prob, costs, demd = _chunk_terms(
      objective, hidden_c, head_low, bias, labels_c, cost_terms
    )
    token_loss, combine_vjp = jax.vjp(
      lambda ce, demd: objective.combine(ce, demd, target_prob), ce, demd
    )
    loss_sum = jnp.sum(jnp.where(scale_c != 0, scale_c * token_loss, 0.0))
    if not with_grads:
      return (carry[0] + loss_sum,), (ce, demd)
    loss_acc, d_head_acc, d_bias_acc = carry
    # a = ∂loss/∂CE and b = ∂loss/∂DEMD per token, already scaled by the token weight.
    d_ce, d_demd = combine_vjp(scale_c)  # [C], [C] (d_demd is None without EMO)
    # ∂loss/∂z = a (p - onehot_t) + b p (c - DEMD): the onehot part is a scatter, not [C, V].
    if d_demd is None:
      d_logits = probs * d_ce[:, None]  # [C, V]
    else:
      d_logits = probs * (d_ce[:, None] + d_demd[:, None] * (costs - demd[:, None]))
    d_logits = d_logits.at[jnp.arange(chunk_size), labels_c].add(-d_ce, mode="drop")
    d_logits_low = d_logits.astype(hidden_c.dtype)  # Matmul inputs in the model's dtype.
    d_hidden_c = jnp.einsum(
      "cv,vd->cd", d_logits_low, head_low, preferred_element_type=jnp.float32
    )  # [C, d]
    d_head_acc = d_head_acc + jnp.einsum(
      "cv,cd->vd", d_logits_low, hidden_c, preferred_element_type=jnp.float32
    )  # [V, d]
    d_bias_acc = d_bias_acc + jnp.sum(d_logits, axis=0)  # [V]
    return (loss_acc + loss_sum, d_head_acc, d_bias_acc), (ce, demd, d_hidden_c)

  # Padding rows get label 0 and scale 0: finite, and excluded from every sum.
  chunks = (to_chunks(hidden), to_chunks(labels), to_chunks(token_scale))
  zero = jnp.zeros((), jnp.float32)
  if not with_grads:
    (loss,), (ce, demd) = jax.lax.scan(step, (zero,), chunks)
    grads = None
  else:
    init = (zero, jnp.zeros(head.shape, jnp.float32), jnp.zeros(bias.shape, jnp.float32))
    (loss, d_head, d_bias), (ce, demd, d_hidden) = jax.lax.scan(step, init, chunks)
    grads = (from_chunks(d_hidden), d_head, d_bias)
  ce = from_chunks(ce)
  demd = from_chunks(demd) if demd is not None else None
  return (loss, ce, demd), grads


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused(objective, chunk_size, hidden, head, bias, labels, token_scale, cost_terms):
  outputs, _ = _chunked_pass(
    objective, False, hidden, head, bias, labels, token_scale, cost_terms, chunk_size
  )
  return outputs


def _fused_fwd(objective, chunk_size, hidden, head, bias, labels, token_scale, cost_terms):
  outputs, (d_hidden, d_head, d_bias) = _chunked_pass(
    objective, True, hidden, head, bias, labels, token_scale, cost_terms, chunk_size
  )
  # Stored in the inputs' dtypes (cotangents must match them); accumulation was float32.
  grads = (d_hidden.astype(hidden.dtype), d_head.astype(head.dtype), d_bias.astype(bias.dtype))
  return outputs, grads


def _fused_bwd(objective, chunk_size, grads, cotangents):
  d_loss = cotangents[0]  # The per-token CE/DEMD outputs are stop-gradient diagnostics.
  d_hidden, d_head, d_bias = ((d_loss * g.astype(jnp.float32)).astype(g.dtype) for g in grads)
  return (
    d_hidden,
    d_head,
    d_bias,
    None,  # labels: integers.
    None,  # token weights: not differentiated.
    None,  # cost embeddings: frozen.
  )


_fused.defvjp(_fused_fwd, _fused_bwd)


# ----------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------


def _fused_objective(
  objective, hidden, head, labels, cost_embeddings, bias, weights, chunk_size, reduction
):
  if hidden.ndim < 1 or head.ndim != 2 or hidden.shape[-1] != head.shape[1]:
    raise ValueError(
      f"hidden [..., d] and head [V, d] must share d; got hidden {hidden.shape}, "
      f"head {head.shape} (pass the LM head as [vocab, width])."
    )
  for name, x in (("hidden", hidden), ("head", head)):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"{name} must have a floating dtype, got {x.dtype}.")
  vocab_size = head.shape[0]
  losses.check_labels(labels, vocab_size)
  if labels.shape != hidden.shape[:-1]:
    raise ValueError(
      f"labels shape {labels.shape} != hidden shape without the width {hidden.shape[:-1]}."
    )
  if bias is None:
    bias = jnp.zeros((vocab_size,), jnp.float32)
  elif bias.shape != (vocab_size,):
    raise ValueError(f"bias must be [V] = ({vocab_size},), got {bias.shape}.")
  if reduction not in ("mean", "sum"):
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")
  if chunk_size is None:
    chunk_size = DEFAULT_EMO_CHUNK_SIZE if objective.needs_demd else DEFAULT_CHUNK_SIZE
  if not chunk_size >= 1:
    raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}.")

  token_weights = jnp.where(labels >= 0, 1.0, 0.0)  # [...]
  if weights is not None:
    if weights.shape != labels.shape:
      raise ValueError(f"weights shape {weights.shape} != labels shape {labels.shape}.")
    token_weights = token_weights * weights.astype(jnp.float32)
  token_scale = token_weights
  if reduction == "mean":
    total = jnp.sum(token_weights)
    token_scale = token_weights / jnp.maximum(total, jnp.finfo(jnp.float32).tiny)

  cost_terms = None  # CE-type objectives need no costs.
  if cost_embeddings is not None:
    losses.check_cost_embeddings(cost_embeddings, vocab_size)
    cost_embeddings = jax.lax.stop_gradient(cost_embeddings)
    # A zero row gives an infinite inverse norm and so NaN costs: loud, never silently wrong.
    inverse_norms = 1.0 / jnp.linalg.norm(cost_embeddings.astype(jnp.float32), axis=-1)
    cost_terms = (cost_embeddings, inverse_norms)

  flat_labels = labels.reshape(-1)
  num_tokens = flat_labels.shape[0]
  chunk_size = balanced_chunk_size(num_tokens, max(1, int(chunk_size)))
  loss, ce, demd = _fused(
    objective,
    chunk_size,
    hidden.reshape(num_tokens, hidden.shape[-1]),
    head,
    bias,
    jnp.where(flat_labels >= 0, flat_labels, 0),
    token_scale.reshape(-1),
    cost_terms,
  )
  valid = token_weights != 0
  aux = {"ce": jnp.where(valid, ce.reshape(labels.shape), 0.0)}
  if demd is not None:
    aux["demd"] = jnp.where(valid, demd.reshape(labels.shape), 0.0)
  return loss, jax.lax.stop_gradient(aux)


_SHARED_ARGS_DOC = """
  Args:
    hidden: ``[..., d]`` final hidden states (after the last layer norm), any float dtype;
      matmuls run in this dtype and accumulate in float32.
    head: ``[V, d]`` LM-head / tied embedding matrix, e.g. float32 parameters under bf16
      activations: it enters the matmuls cast to ``hidden``'s dtype; its gradient comes back
      in its own dtype.
    labels: ``[...]`` integer targets, already shifted; negative ids are ignored.
    bias: optional ``[V]`` head bias.
    weights: optional ``[...]`` float token weights (0 = ignore), e.g. the pipeline's
      ``weights``.
    chunk_size: the longest chunk, in tokens (chunks are balanced to avoid padding); peak
      extra memory is a few ``[chunk_size, V]`` float32 slabs, independent of the number of
      tokens. None: :data:`DEFAULT_CHUNK_SIZE` (512), or :data:`DEFAULT_EMO_CHUNK_SIZE`
      (341) for EMO, whose chunks hold three slabs instead of two.
    reduction: ``"mean"`` -- ``Σ w_i loss_i / Σ w_i`` (0 when every weight is 0), as
      ``losses.masked_mean`` -- or ``"sum"`` -- ``Σ w_i loss_i``.

  Returns:
    ``(loss, aux)``: the scalar float32 loss, differentiable w.r.t. ``hidden``, ``head`` and
    ``bias``; and ``aux`` with per-token ``"ce"`` (and ``"demd"`` for EMO) of shape
    ``labels.shape``, stop-gradient, 0 at ignored positions -- for logging.
"""


def fused_emo(
  hidden: Array,
  head: Array,
  labels: Array,
  cost_embeddings: Array,
  *,
  bias: Array | None = None,
  weights: Array | None = None,
  weighting: losses.Weighting = "mle",
  max_weight: float | None = None,
  detach_target_prob: bool = False,
  chunk_size: int | None = None,
  reduction: Reduction = "mean",
):
  """Reduced :func:`emo_jax.losses.emo` of ``hidden @ head.T + bias``, without ``[N, V]``.

  ``cost_embeddings`` ``[V, d_c]`` (``d_c`` may differ from ``d``; raw or normalised) receive
  no gradient; ``weighting``, ``max_weight`` and ``detach_target_prob`` are as in
  :func:`emo_jax.losses.emo`.
  """
  losses.check_emo_options(weighting, max_weight)
  objective = _Objective(
    "emo", weighting=weighting, max_weight=max_weight, detach_target_prob=detach_target_prob
  )
  return _fused_objective(
    objective, hidden, head, labels, cost_embeddings, bias, weights, chunk_size, reduction
  )


def fused_cross_entropy(
  hidden,
  head,
  labels,
  *,
  bias=None,
  weights=None,
  chunk_size: int | None = None,
  reduction: Reduction = "mean",
):
  """Reduced :func:`emo_jax.losses.cross_entropy` of ``hidden @ head.T + bias``."""
  return _fused_objective(
    _Objective("cross_entropy"), hidden, head, labels, None, bias, weights, chunk_size, reduction
  )


def fused_mixce(
  hidden,
  head,
  labels,
  *,
  mixing_ratio: float = 0.5,
  bias=None,
  weights=None,
  chunk_size: int | None = None,
  reduction: Reduction = "mean",
):
  """Reduced :func:`emo_jax.losses.mixce` of ``hidden @ head.T + bias``."""
  losses.check_unit_interval("mixing_ratio", mixing_ratio)
  return _fused_objective(
    _Objective("mixce", mixing_ratio=mixing_ratio),
    hidden,
    head,
    labels,
    None,
    bias,
    weights,
    chunk_size,
    reduction,
  )


def fused_tailr(
  hidden,
  head,
  labels,
  *,
  gamma: float = 0.5,
  bias=None,
  weights=None,
  chunk_size: int | None = None,
  reduction: Reduction = "mean",
):
  """Reduced :func:`emo_jax.losses.tailr` of ``hidden @ head.T + bias``."""
  losses.check_unit_interval("gamma", gamma)
  return _fused_objective(
    _Objective("tailr", gamma=gamma),
    hidden,
    head,
    labels,
    None,
    bias,
    weights,
    chunk_size,
    reduction,
  )


for _fn in (fused_emo, fused_cross_entropy, fused_mixce, fused_tailr):
  _fn.__doc__ += _SHARED_ARGS_DOC
