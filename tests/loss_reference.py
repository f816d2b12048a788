"""Float64 NumPy transcription of the paper's formulas, independent of emo_jax.losses.

It uses the full ``[V, V]`` cost matrix ``C = 1 - Ê Êᵀ`` and closed-form gradients (the
implementation under test never builds either), so agreement is evidence, not tautology.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-10  # The reference code's guard on the stop-gradient ratio.


def softmax(logits):
  shifted = logits - logits.max(-1, keepdims=True)
  e = np.exp(shifted)
  return e / e.sum(-1, keepdims=True)


def cost_matrix(cost_embeddings):
  unit = cost_embeddings / np.linalg.norm(cost_embeddings, axis=-1, keepdims=True)
  return 1.0 - unit @ unit.T  # [V, V]


def terms(logits, labels, cost_embeddings=None):
  """Per-token CE, DEMD, p_t and their gradients w.r.t. logits, all float64, [N] / [N, V]."""
  logits = np.asarray(logits, np.float64)
  n, _vocab = logits.shape
  probs = softmax(logits)
  rows = np.arange(n)
  onehot = np.zeros_like(probs)
  onehot[rows, labels] = 1.0
  out = {
    "p": probs,
    "p_t": probs[rows, labels],
    "ce": -np.log(probs[rows, labels]),
    "d_ce": probs - onehot,  # d CE / d z
  }
  if cost_embeddings is not None:
    costs = cost_matrix(np.asarray(cost_embeddings, np.float64))[labels]  # [N, V]: c_i
    demd = (probs * costs).sum(-1)
    out["costs"] = costs
    out["demd"] = demd
    out["d_demd"] = probs * (costs - demd[:, None])  # d DEMD / d z = p_j (c_j - DEMD)
  return out


def emo(
  logits, labels, cost_embeddings, weighting="mle", max_weight=None, detach_target_prob=False
):
  """Returns (per-token value, gradient of the summed loss w.r.t. logits)."""
  t = terms(logits, labels, cost_embeddings)
  demd = t["demd"] + (t["p_t"] if detach_target_prob else 0.0)  # DEMD' = DEMD + sg(p_t)
  if weighting == "mle":
    weight = t["ce"] / (np.maximum(demd, 0.0) + EPS)
  else:
    weight = demd / (np.maximum(t["ce"], 0.0) + EPS)
  if max_weight is not None:
    weight = np.minimum(weight, max_weight)
  if weighting == "mle":
    value = 0.5 * (t["ce"] + weight * demd)
    grad = 0.5 * (t["d_ce"] + weight[:, None] * t["d_demd"])
  else:
    value = weight * t["ce"] + demd
    grad = weight[:, None] * t["d_ce"] + t["d_demd"]
  return value, grad


def mixce(logits, labels, mixing_ratio):
  t = terms(logits, labels)
  factor = mixing_ratio + (1 - mixing_ratio) * t["p_t"]
  return factor * t["ce"], factor[:, None] * t["d_ce"]


def tailr(logits, labels, gamma):
  t = terms(logits, labels)
  weight = np.clip(t["p_t"] / ((1 - gamma) + gamma * t["p_t"]), 0.2, 1.0)
  factor = gamma + (1 - gamma) * weight
  return factor * t["ce"], factor[:, None] * t["d_ce"]
