"""What the parity tests share: random token ids and an HF torch model's logits."""

import numpy as np
import torch


def torch_logits(model, ids, mask=None):
  """float32 logits of an HF causal LM on int ``ids`` (and an optional padding mask)."""
  with torch.no_grad():
    kwargs = {} if mask is None else {"attention_mask": torch.tensor(mask)}
    return model(torch.tensor(ids).long(), **kwargs).logits.numpy()


def random_ids(vocab, shape, seed=0):
  return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)
