"""Measures of generated text against human text: MAUVE (``mauve-text``, on features from
:mod:`emo_jax.evaluation.featurizers`), ROUGE (``rouge-score``) and n-gram repetition.
This module only prepares inputs and averages; the scores are the field's packages'."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def repetition(sequences: Sequence[Sequence], n: int) -> float:
  """Mean over sequences of ``1 - unique n-grams / total n-grams`` (0 = no repeats).

  Sequences are token ids or words; ones shorter than ``n`` are skipped.
  """
  rates = []
  for seq in sequences:
    grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
    if grams:
      rates.append(1.0 - len(set(grams)) / len(grams))
  if not rates:
    raise ValueError(f"no sequence has {n} or more items.")
  return float(np.mean(rates))


def rouge_per_example(
  predictions: Sequence[str], references: Sequence[str]
) -> dict[str, np.ndarray]:
  """ROUGE-1/2/L F1 of each prediction against its reference (``rouge-score``), ``[n]`` each."""
  from rouge_score import rouge_scorer

  if len(predictions) != len(references) or not predictions:
    raise ValueError(
      f"ROUGE needs pairs: {len(predictions)} predictions, {len(references)} references."
    )
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
  scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
  return {
    name: np.array([s[name].fmeasure for s in scores]) for name in ("rouge1", "rouge2", "rougeL")
  }


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """Mean ROUGE-1/2/L F1 of each prediction against its reference (``rouge-score``)."""
  return {k: float(np.mean(v)) for k, v in rouge_per_example(predictions, references).items()}


def mauve(
  human_features: np.ndarray,
  model_features: np.ndarray,
  *,
  runs: int = 5,
  seed: int = 0,
  scaling_factor: float = 5.0,
  num_buckets: int | str = "auto",
) -> dict[str, float | list[float]]:
  """MAUVE (``mauve-text``) between two feature sets, ``runs`` k-means seeds: mean ± std.

  The paper reports the mean of 5 runs. With few samples MAUVE is noisy (and ``'auto'``
  buckets = n / 10), so always report ``n`` alongside.
  """
  import mauve as mauve_text

  human_features, model_features = np.asarray(human_features), np.asarray(model_features)
  if len(human_features) < 2 or len(model_features) < 2:
    raise ValueError("MAUVE needs at least 2 texts on each side.")
  scores = []
  for run in range(runs):
    out = mauve_text.compute_mauve(
      p_features=human_features,
      q_features=model_features,
      num_buckets=num_buckets,
      mauve_scaling_factor=scaling_factor,
      seed=seed + run,
      verbose=False,
    )
    scores.append(float(out.mauve))
  return {
    "mean": float(np.mean(scores)),
    "std": float(np.std(scores)),
    "runs": scores,
    "n_human": len(human_features),
    "n_model": len(model_features),
  }
