"""Instruction data for supervised fine-tuning: records -> prompt + response token rows.

Each record (``instruction``, ``input``, ``output``) becomes a prompt (the model's chat
template, or the Stanford Alpaca template) followed by the response and EOS. The loss weight
is 0 on prompt and padding tokens and 1 on every response token and the EOS, so the model is
trained on answers only.

Examples are packed into rows of ``block_size`` positions, in order, a new row whenever the
next example does not fit; attention never crosses an example boundary: each row carries
``attention_mask`` = the example's segment id (1, 2, ... within the row; 0 = padding), which
the models read as segments (:func:`emo_jax.models.layers.causal_attention`), and
``positions`` restarting at 0 for each example. Rows are batches in the layout of
:mod:`emo_jax.data.input_pipeline` (``inputs``, ``targets``, ``weights``) plus those two, so
the same resumable iterator shuffles and serves them.

The local Alpaca sample (``alpaca/alpaca_5000.json``) has no split: :func:`split_of` carves it
90/5/5 into train / validation / test by the SHA-256 of the instruction and input, which never
depends on record order. Records with an empty output are dropped and counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence

import jinja2
import jinja2.sandbox
import numpy as np

from emo_jax.data import paths
from emo_jax.data.corpora import SPLITS
from emo_jax.data.tokenizer import Tokenizer

CORPORA = ("alpaca",)  # Instruction corpora data.corpus may name.
TEMPLATES = ("chat", "alpaca")

# Stanford Alpaca's prompts (tatsu-lab/stanford_alpaca, train.py's PROMPT_DICT).
_ALPACA_WITH_INPUT = (
  "Below is an instruction that describes a task, paired with an input that provides further "
  "context. Write a response that appropriately completes the request.\n\n"
  "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_ALPACA_NO_INPUT = (
  "Below is an instruction that describes a task. Write a response that appropriately "
  "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclasses.dataclass(frozen=True)
class Record:
  instruction: str
  input: str
  output: str

  @property
  def user_message(self) -> str:
    """The chat template's user turn: the instruction, then the input after a blank line."""
    return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


def split_of(record: Record) -> str:
  """Deterministic 90/5/5 carve: the first byte of SHA-256(instruction, input) mod 20."""
  digest = hashlib.sha256(f"{record.instruction}\n{record.input}".encode()).digest()
  bucket = digest[0] % 20
  return "train" if bucket < 18 else ("validation" if bucket == 18 else "test")


def read_alpaca(split: str, manual_dir: str | None = None) -> list[Record]:
  """The records of one carved split of ``alpaca/alpaca_5000.json``, in file order; records
  with an empty output are dropped (and logged with their count)."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}.")
  path = paths.corpus_file("alpaca", "alpaca_5000.json", manual_dir)
  with open(path, encoding="utf-8") as f:
    raw = json.load(f)
  records, empty = [], 0
  for i, item in enumerate(raw):
    missing = {"instruction", "input", "output"} - set(item)
    if missing:
      raise ValueError(f"{path}: record {i} lacks the field(s) {sorted(missing)}.")
    record = Record(item["instruction"].strip(), item["input"].strip(), item["output"].strip())
    if split_of(record) != split:
      continue
    if not record.output:
      empty += 1
      continue
    records.append(record)
  logging.info(
    "alpaca/%s: %d records (%d with an empty output dropped)", split, len(records), empty
  )
  return records


def read_split(data_config, split: str) -> list[Record]:
  if data_config.corpus not in CORPORA:
    raise ValueError(
      f"data.corpus={data_config.corpus!r} is not an instruction corpus ({', '.join(CORPORA)})."
    )
  return read_alpaca(split, data_config.manual_dir or None)


def render_chat(template: str, messages: Sequence[dict], add_generation_prompt: bool, **extra):
  """A chat template (Jinja, HF's convention) rendered as transformers renders it: sandboxed,
  ``trim_blocks`` / ``lstrip_blocks``, loop controls, and ``raise_exception``."""

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
    trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
  )
  environment.globals["raise_exception"] = raise_exception
  return environment.from_string(template).render(
    messages=list(messages), add_generation_prompt=add_generation_prompt, **extra
  )


def prompt_text(record: Record, template: str, tokenizer: Tokenizer) -> str:
  """The text before the response: the chat template's user turn and the assistant header
  (``template='chat'``), or Stanford Alpaca's prompt (``'alpaca'``)."""
  if template == "chat":
    if not tokenizer.chat_template:
      raise ValueError(
        "data.prompt_template='chat' needs a tokenizer with a chat template (this one has "
        "none); use data.prompt_template='alpaca'."
      )
    messages = [{"role": "user", "content": record.user_message}]
    return render_chat(tokenizer.chat_template, messages, add_generation_prompt=True)
  if template == "alpaca":
    form = _ALPACA_WITH_INPUT if record.input else _ALPACA_NO_INPUT
    return form.format(instruction=record.instruction, input=record.input)
  raise ValueError(f"data.prompt_template must be one of {TEMPLATES}, got {template!r}.")


@dataclasses.dataclass(frozen=True)
class Example:
  """One record's tokens: ``prompt`` then ``response`` (which ends with EOS)."""

  prompt: list[int]
  response: list[int]

  @property
  def tokens(self) -> list[int]:
    return self.prompt + self.response


def tokenize(records: Sequence[Record], tokenizer: Tokenizer, template: str) -> list[Example]:
  """Prompt and response tokenized apart (the response's first token never merges with the
  prompt's last); the response ends with the tokenizer's EOS."""
  prompts = tokenizer.encode_batch([prompt_text(r, template, tokenizer) for r in records])
  responses = tokenizer.encode_batch([r.output for r in records])
  return [Example(p, r + [tokenizer.eos_id]) for p, r in zip(prompts, responses)]


@dataclasses.dataclass
class PackingStats:
  examples: int = 0
  truncated: int = 0  # Responses cut at the row length.
  dropped: int = 0  # Prompts that leave no room for a response token.
  rows: int = 0
  response_tokens: int = 0
  positions: int = 0  # rows x block_size
  padding: int = 0  # Positions no example fills.

  @property
  def fill(self) -> float:
    return 1.0 - self.padding / max(self.positions, 1)


def pack(
  examples: Sequence[Example], block_size: int
) -> tuple[dict[str, np.ndarray], PackingStats]:
  """Rows ``[n, block_size]`` of ``inputs``, ``targets`` (int32), ``weights`` (float32: 1 on
  targets that are response tokens or EOS), ``attention_mask`` (int32 segment ids, 0 =
  padding) and ``positions`` (int32, restarting per example).

  An example of ``n`` tokens fills ``n - 1`` positions (input ``t``, target ``t + 1``).
  Longer than ``block_size + 1`` tokens: its response is cut (counted in ``truncated``); a
  prompt of ``block_size`` tokens or more leaves no response target and the example is
  dropped (``dropped``). Examples keep their order; a row is closed when the next one does
  not fit.
  """
  if block_size < 2:
    raise ValueError(f"block_size must be at least 2 for instruction rows, got {block_size}.")
  stats = PackingStats()
  rows: list[list[tuple[list[int], int]]] = [[]]  # Per row: (tokens, prompt length).
  used = 0
  for example in examples:
    tokens = example.tokens
    if len(example.prompt) >= block_size:
      stats.dropped += 1
      continue
    if len(tokens) > block_size + 1:
      tokens = tokens[: block_size + 1]
      stats.truncated += 1
    width = len(tokens) - 1
    if used + width > block_size:
      rows.append([])
      used = 0
    rows[-1].append((tokens, len(example.prompt)))
    used += width
    stats.examples += 1
  rows = [row for row in rows if row]
  if not rows:
    raise ValueError("no instruction example fits: every prompt is longer than the block.")
  shape = (len(rows), block_size)
  out = {
    "inputs": np.zeros(shape, np.int32),
    "targets": np.full(shape, -1, np.int32),
    "weights": np.zeros(shape, np.float32),
    "attention_mask": np.zeros(shape, np.int32),
    "positions": np.zeros(shape, np.int32),
  }
  for r, row in enumerate(rows):
    start = 0
    for segment, (tokens, prompt_length) in enumerate(row, start=1):
      width = len(tokens) - 1
      span = slice(start, start + width)
      out["inputs"][r, span] = tokens[:-1]
      out["targets"][r, span] = tokens[1:]
      # Target j is tokens[j + 1]: a response token exactly when j + 1 >= prompt length.
      out["weights"][r, span] = np.arange(1, width + 1) >= prompt_length
      out["attention_mask"][r, span] = segment
      out["positions"][r, span] = np.arange(width)
      start += width
  stats.rows = len(rows)
  stats.positions = out["inputs"].size
  stats.padding = int(np.sum(out["attention_mask"] == 0))
  stats.response_tokens = int(out["weights"].sum())
  return out, stats


def tokenize_and_pack(
  records: Sequence[Record],
  tokenizer: Tokenizer,
  template: str,
  block_size: int,
  name: str = "split",
) -> dict[str, np.ndarray]:
  rows, stats = pack(tokenize(records, tokenizer, template), block_size)
  logging.info(
    "%s: %d examples in %d rows of %d (%.0f%% filled), %d response tokens; %d responses "
    "truncated, %d examples dropped (prompt >= block)",
    name,
    stats.examples,
    stats.rows,
    block_size,
    100 * stats.fill,
    stats.response_tokens,
    stats.truncated,
    stats.dropped,
  )
  return rows
