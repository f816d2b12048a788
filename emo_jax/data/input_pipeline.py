"""Tokenize, pack into fixed blocks, and batch deterministically with a resumable state.

Documents are tokenized, joined with EOS after each document, and cut into blocks of
``block_size + 1`` tokens that overlap by one, so every token is a target exactly once:
``inputs = block[:-1]``, ``targets = block[1:]``. Batches are dicts of ``[batch, block_size]``
arrays ``inputs`` / ``targets`` (int32) and ``weights`` (float32; 0 marks padding).

Training order is a fresh permutation of the blocks each epoch, a pure function of
``(seed, epoch)``; the iterator's whole state is ``{epoch, position}``, which the trainer
checkpoints, so a resumed run sees exactly the batches it would have seen. Every process
computes the same global order and takes its own rows of each global batch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence

import numpy as np

from emo_jax.data.tokenizer import Tokenizer

Batch = dict[str, np.ndarray]


def pack_documents(
  token_documents: Sequence[Sequence[int]], eos_id: int, block_size: int
) -> np.ndarray:
  """``[num_blocks, block_size + 1]`` int32 blocks from EOS-joined documents.

  Block ``k`` covers stream positions ``[k·block_size, (k+1)·block_size]``; the trailing
  tokens that do not fill a block are padded with ``-1`` (weight 0 downstream).
  """
  if block_size < 1:
    raise ValueError(f"block_size must be positive, got {block_size}.")
  lengths = [len(d) + 1 for d in token_documents]
  stream = np.empty(sum(lengths), np.int32)
  offset = 0
  for document, length in zip(token_documents, lengths):
    stream[offset : offset + length - 1] = document
    stream[offset + length - 1] = eos_id
    offset += length
  if stream.size < 2:
    raise ValueError("nothing to pack: the split has no tokens.")
  num_blocks = -(-(stream.size - 1) // block_size)
  padded = np.full(num_blocks * block_size + 1, -1, np.int32)
  padded[: stream.size] = stream
  starts = np.arange(num_blocks) * block_size
  return padded[starts[:, None] + np.arange(block_size + 1)[None, :]]


def tokenize_and_pack(
  documents: Sequence[str], tokenizer: Tokenizer, block_size: int, name: str = "split"
) -> np.ndarray:
  token_documents = tokenizer.encode_batch(documents)
  blocks = pack_documents(token_documents, tokenizer.eos_id, block_size)
  num_tokens = sum(len(d) for d in token_documents)
  logging.info(
    "%s: %d documents, %d tokens, %d blocks of %d",
    name,
    len(documents),
    num_tokens,
    len(blocks),
    block_size,
  )
  return blocks


Rows = np.ndarray | Batch  # [n, L + 1] packed blocks, or a batch of n rows (instruction data)


def num_rows(rows: Rows) -> int:
  return len(rows["inputs"]) if isinstance(rows, dict) else len(rows)


def select_rows(rows: Rows, indices: np.ndarray | slice) -> Rows:
  """Rows ``indices`` in the form they came in (blocks stay blocks, unlike :func:`take_rows`)."""
  if isinstance(rows, dict):
    return {k: v[indices] for k, v in rows.items()}
  return rows[indices]


def take_rows(rows: Rows, indices: np.ndarray) -> Batch:
  """The batch of rows ``indices``: blocks are split into inputs/targets/weights, a batch of
  rows (:mod:`emo_jax.data.instructions`) is indexed as it is."""
  selected = select_rows(rows, indices)
  return selected if isinstance(selected, dict) else blocks_to_batch(selected)


def first_rows(rows: Rows, count: int) -> Rows:
  """The first ``count`` rows (all of them when there are fewer), in the form they came in."""
  return select_rows(rows, slice(count))


def pad_rows(rows: Rows, count: int) -> Rows:
  """``rows`` followed by weight-0 padding rows, ``count`` in all."""
  if isinstance(rows, dict):
    fill = {"targets": -1}
    padded = {}
    for k, v in rows.items():
      padded[k] = np.full((count, *v.shape[1:]), fill.get(k, 0), v.dtype)
      padded[k][: len(v)] = v
    return padded
  padded = np.full((count, rows.shape[1]), -1, np.int32)
  padded[: len(rows)] = rows
  return padded


def target_tokens(rows: Rows) -> np.ndarray:
  """``[n]`` int: the tokens each row trains on (its weight-1 targets)."""
  if isinstance(rows, dict):
    return (rows["weights"] > 0).sum(axis=-1)
  return (rows[:, 1:] >= 0).sum(axis=-1)


def nested_subset(rows: Rows, max_tokens: int, seed: int, name: str = "split") -> Rows:
  """Whole rows of a fixed random order until they hold at least ``max_tokens`` targets.

  The order depends on ``seed`` only, so a smaller budget's rows are a prefix of a larger
  one's (data-scale curves compare nested training sets); a budget beyond the split raises.
  """
  if max_tokens < 1:
    raise ValueError(f"max_tokens must be positive, got {max_tokens}.")
  order = np.random.default_rng(seed).permutation(num_rows(rows))
  cumulative = np.cumsum(target_tokens(rows)[order])  # [n]
  if cumulative[-1] < max_tokens:
    raise ValueError(
      f"{name} has {int(cumulative[-1])} target tokens, fewer than the {max_tokens} asked for."
    )
  count = int(np.searchsorted(cumulative, max_tokens)) + 1  # First prefix reaching the budget.
  logging.info(
    "%s: kept %d of %d rows (%d target tokens) for a budget of %d tokens",
    name,
    count,
    num_rows(rows),
    int(cumulative[count - 1]),
    max_tokens,
  )
  return select_rows(rows, np.sort(order[:count]))


def blocks_to_batch(blocks: np.ndarray) -> Batch:
  """Splits ``[n, L + 1]`` blocks (``-1`` = padding) into inputs/targets/weights."""
  inputs, targets = blocks[:, :-1], blocks[:, 1:]
  weights = (targets >= 0).astype(np.float32)
  return {
    "inputs": np.maximum(inputs, 0),
    "targets": np.where(targets >= 0, targets, -1),
    "weights": weights,
  }


@dataclasses.dataclass
class TrainIterator:
  """Endless shuffled batches over the blocks (or instruction rows: :data:`Rows`); state
  ``{epoch, position}`` is resumable.

  Each global batch has ``global_batch_size`` blocks; this process yields rows
  ``[process_index · local, (process_index + 1) · local)`` of it. The last incomplete
  global batch of an epoch is dropped (the next epoch reshuffles everything).
  """

  blocks: Rows
  global_batch_size: int
  seed: int
  process_index: int = 0
  process_count: int = 1
  epoch: int = 0
  position: int = 0  # Global batches already yielded in this epoch.

  def __post_init__(self):
    if self.global_batch_size % self.process_count:
      raise ValueError(
        f"global batch {self.global_batch_size} is not divisible by {self.process_count} processes."
      )
    if num_rows(self.blocks) < self.global_batch_size:
      raise ValueError(
        f"the training split has {num_rows(self.blocks)} blocks, fewer than one "
        f"global batch ({self.global_batch_size})."
      )

  @property
  def batches_per_epoch(self) -> int:
    return num_rows(self.blocks) // self.global_batch_size

  def _order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(num_rows(self.blocks))

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __next__(self) -> Batch:
    local = self.global_batch_size // self.process_count
    start = self.position * self.global_batch_size + self.process_index * local
    rows = self._order(self.epoch)[start : start + local]
    self.position += 1
    if self.position == self.batches_per_epoch:  # Keep the state canonical at epoch ends.
      self.epoch, self.position = self.epoch + 1, 0
    return take_rows(self.blocks, rows)

  def get_state(self) -> dict[str, int]:
    return {"epoch": int(self.epoch), "position": int(self.position)}

  def set_state(self, state: dict[str, int]) -> None:
    self.epoch, self.position = int(state["epoch"]), int(state["position"])


def eval_batches(
  blocks: Rows, global_batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[Batch]:
  """Every block (or row) once, in order; the last batch is padded with weight-0 rows."""
  local = global_batch_size // process_count
  num_batches = -(-num_rows(blocks) // global_batch_size)
  padded = pad_rows(blocks, num_batches * global_batch_size)
  for b in range(num_batches):
    start = b * global_batch_size + process_index * local
    yield take_rows(padded, np.arange(start, start + local))
