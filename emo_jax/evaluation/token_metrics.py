"""Measures computed from a model's token probabilities: perplexity over packed blocks and the
distribution measures (forward / reverse cross-entropy, total variation, reverse KL) between a
model and a reference model at every position of its own continuations."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emo_jax import fused_losses, models, sharding
from emo_jax.data import input_pipeline


def eval_step(params, batch, *, model, cost_embeddings=None) -> dict[str, jax.Array]:
  """Summed token cross-entropy and token weight of one ``{inputs, targets, weights}`` batch
  (packed instruction rows add ``attention_mask`` and ``positions``);
  with ``cost_embeddings [V, d_c]`` also the summed DEMD of the model's predictions,
  ``Σ_i p_i (1 - ê_i·ê_t)`` per token (:func:`emo_jax.losses.demd`), under that cost."""
  hidden, head = models.hidden_states_and_head(
    model, params, batch["inputs"], batch.get("attention_mask"), batch.get("positions")
  )
  common = dict(weights=batch["weights"], reduction="sum")
  if cost_embeddings is None:
    _, aux = fused_losses.fused_cross_entropy(hidden, head, batch["targets"], **common)
  else:  # The loss value is unused: only its per-token CE and DEMD.
    _, aux = fused_losses.fused_emo(hidden, head, batch["targets"], cost_embeddings, **common)
  sums = {"ce_sum": jnp.sum(aux["ce"] * batch["weights"]), "count": jnp.sum(batch["weights"])}
  if cost_embeddings is not None:
    sums["demd_sum"] = jnp.sum(aux["demd"] * batch["weights"])
  return sums


def calibration_step(params, batch, *, model, temperatures) -> dict[str, jax.Array]:
  """Sums over one ``{inputs, targets, weights}`` batch that temperature scaling and
  over-confidence are read from, with ``p = softmax(z)`` the model's next-token distribution:

  * ``ce_sum`` ``[K]``: ``Σ w · CE(softmax(z / T_k), t)`` for each of ``temperatures`` ``[K]``
    (the NLL-optimal temperature is their argmin; ``T = 1`` gives :func:`eval_step`'s sum),
  * ``entropy_sum``: ``Σ w · H(p)`` in nats,
  * ``confidence_sum``: ``Σ w · max_v p_v``; ``correct_sum``: ``Σ w · [argmax_v p_v = t]``
    (mean confidence minus accuracy is the top-1 over-confidence),
  * ``count``: ``Σ w``.

  Float32 throughout (the logits are float32 whatever the activations' dtype).
  """
  logits = model.apply(
    {"params": params}, batch["inputs"], batch.get("attention_mask"), batch.get("positions")
  ).astype(jnp.float32)  # [B, L, V]
  weights = batch["weights"].astype(jnp.float32)  # [B, L]
  target_logit = jnp.take_along_axis(logits, batch["targets"][..., None], axis=-1)[..., 0]

  def ce_sum(temperature):  # One [B, L, V] at a time: lax.map runs the temperatures in turn.
    ce = jax.nn.logsumexp(logits / temperature, axis=-1) - target_logit / temperature  # [B, L]
    return jnp.sum(ce * weights)

  log_p = jax.nn.log_softmax(logits, axis=-1)  # [B, L, V]
  entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)  # [B, L]
  correct = jnp.argmax(logits, axis=-1) == batch["targets"]  # [B, L]
  return {
    "ce_sum": jax.lax.map(ce_sum, jnp.asarray(temperatures, jnp.float32)),
    "entropy_sum": jnp.sum(entropy * weights),
    "confidence_sum": jnp.sum(jnp.exp(jnp.max(log_p, axis=-1)) * weights),
    "correct_sum": jnp.sum(correct * weights),
    "count": jnp.sum(weights),
  }


def perplexity_from_sums(ce_sum: float, count: float) -> float:
  """``exp(Σ CE / Σ weight)``: token-weighted, padding (weight 0) excluded."""
  if count <= 0:
    raise ValueError("perplexity of an empty split (no token has weight > 0).")
  return float(np.exp(ce_sum / count))


def token_sums(eval_fn, params, blocks: input_pipeline.Rows, global_batch_size: int, mesh) -> dict:
  """:func:`eval_step`'s (or :func:`calibration_step`'s) sums over ``[n, L + 1]`` blocks (or
  instruction rows); ``eval_fn(params, batch)`` is (a jit of) it.

  Every block is seen once, the last batch padded with weight-0 rows; each process feeds its
  rows of every global batch (multi-process safe).
  """
  totals: dict[str, float] = {}
  for batch in input_pipeline.eval_batches(
    blocks, global_batch_size, jax.process_index(), jax.process_count()
  ):
    out = eval_fn(params, sharding.global_batch(mesh, batch))
    for name, value in out.items():
      value = np.asarray(value, np.float64)  # A scalar sum, or one per temperature.
      totals[name] = totals.get(name, 0.0) + (float(value) if value.ndim == 0 else value)
  return totals


def perplexity(eval_fn, params, blocks: input_pipeline.Rows, global_batch_size: int, mesh) -> float:
  """Perplexity of ``[n, L + 1]`` blocks (see :func:`token_sums`)."""
  totals = token_sums(eval_fn, params, blocks, global_batch_size, mesh)
  return perplexity_from_sums(totals.get("ce_sum", 0.0), totals.get("count", 0.0))


def distribution_measures(
  logits: jax.Array, reference_logits: jax.Array, weights: jax.Array | None = None
) -> dict[str, jax.Array]:
  """Token-weighted means of the per-position measures between ``p = softmax(logits)``
  (the model) and ``q = softmax(reference_logits)`` (the reference), over the vocabulary:

  * forward CE ``-Σ_v q_v log p_v`` (the reference's mass, scored by the model),
  * reverse CE ``-Σ_v p_v log q_v`` (the model's mass, scored by the reference),
  * TVD ``½ Σ_v |p_v - q_v|``,
  * reverse KL ``Σ_v p_v (log p_v - log q_v)``.

  Shapes: ``logits``/``reference_logits`` ``[..., V]``; ``weights`` ``[...]`` (1 = real).
  """
  if logits.shape != reference_logits.shape:
    raise ValueError(
      f"model logits {logits.shape} and reference logits {reference_logits.shape} differ in shape."
    )
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [..., V]
  log_q = jax.nn.log_softmax(reference_logits.astype(jnp.float32), axis=-1)
  p, q = jnp.exp(log_p), jnp.exp(log_q)
  per_position = {
    "forward_ce": -jnp.sum(q * log_p, axis=-1),
    "reverse_ce": -jnp.sum(p * log_q, axis=-1),
    "tvd": 0.5 * jnp.sum(jnp.abs(p - q), axis=-1),
    "reverse_kl": jnp.sum(p * (log_p - log_q), axis=-1),
  }
  if weights is None:
    weights = jnp.ones(logits.shape[:-1], jnp.float32)
  total = jnp.maximum(jnp.sum(weights), 1e-12)
  return {k: jnp.sum(v * weights) / total for k, v in per_position.items()}


def continuation_ce_sums(
  model,
  params,
  prompts: Sequence[Sequence[int]],
  continuations: Sequence[Sequence[int]],
  batch_size: int = 32,
  pad_id: int = 0,
) -> tuple[float, float]:
  """Summed CE (and count) of each continuation's tokens given its prompt, under ``model``:
  the oracle perplexity of generated text is ``exp(sum / count)`` with a reference model.
  """
  rows, weights = [], []
  for prompt, continuation in zip(prompts, continuations):
    tokens = list(prompt) + list(continuation)
    rows.append(tokens)
    # Target t+1 is scored when it belongs to the continuation.
    weights.append([0.0] * (len(prompt) - 1) + [1.0] * len(continuation))
  length = max(len(r) for r in rows)
  if length > model.max_length:
    raise ValueError(
      f"prompt + continuation of {length} tokens exceeds the reference "
      f"model's max_length={model.max_length}."
    )
  step = jax.jit(functools.partial(eval_step, model=model))
  ce_sum, count = 0.0, 0.0
  for start in range(0, len(rows), batch_size):
    ids = np.full((batch_size, length), pad_id, np.int32)
    w = np.zeros((batch_size, length - 1), np.float32)
    for i, (row, wt) in enumerate(
      zip(rows[start : start + batch_size], weights[start : start + batch_size])
    ):
      ids[i, : len(row)] = row
      w[i, : len(wt)] = wt
    out = step(params, {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": w})
    ce_sum += float(out["ce_sum"])
    count += float(out["count"])
  return ce_sum, count
