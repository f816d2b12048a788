"""Truncated or garbled model and tokenizer files: an error naming the file, never a parser's
traceback or a silent partial load. The table reads as "what went wrong -> what you see"."""

import os
import shutil

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_llama import build_hf_model, write_gguf

from emo_jax import damaged_files, models
from emo_jax.data import tokenizer


def truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def garble_start(path):
  with open(path, "r+b") as f:
    f.seek(3)
    f.write(b"\xff\xfe\xfd\xfc")


def nan_at(offset_of):
  """Overwrites four bytes with 0xff (a float32 NaN) at ``offset_of(path)``."""

  def damage(path):
    with open(path, "r+b") as f:
      f.seek(offset_of(path))
      f.write(b"\xff\xff\xff\xff")

  return damage


def _first_safetensors_value(path):
  header_bytes = int.from_bytes(open(path, "rb").read(8), "little")
  return 8 + header_bytes  # Tensor data starts right after the JSON header.


def _first_gguf_tensor(path):
  reader = gguf.GGUFReader(path)
  return int(reader.tensors[0].data_offset)


# (file, damage, what loads it, the message): the README's "errors you may see", for files.
HF_CASES = {
  "weights truncated": (
    "model.safetensors",
    truncate,
    "model",
    (
      "model.safetensors is not a readable model.safetensors weights file "
      r"\(truncated or damaged\?\)"
    ),
  ),
  "weights header garbled": (
    "model.safetensors",
    garble_start,
    "model",
    "model.safetensors is not a readable",
  ),
  "weights NaN bytes": (
    "model.safetensors",
    nan_at(_first_safetensors_value),
    "model",
    "model.safetensors has non-finite values",
  ),
  "model config truncated": (
    "config.json",
    truncate,
    "model",
    "config.json is not a readable model config",
  ),
  "tokenizer.json truncated": (
    "tokenizer.json",
    truncate,
    "tokenizer",
    "tokenizer.json is not a readable tokenizer file",
  ),
  "tokenizer.json garbled": (
    "tokenizer.json",
    garble_start,
    "tokenizer",
    "tokenizer.json is not a readable tokenizer file",
  ),
  "tokenizer config truncated": (
    "tokenizer_config.json",
    truncate,
    "tokenizer",
    "tokenizer_config.json is not a readable tokenizer config",
  ),
}
LOADERS = {"model": models.from_pretrained, "tokenizer": tokenizer.load_tokenizer}


@pytest.fixture(scope="module")
def good_directory(tmp_path_factory):
  """A tiny GPT-2 HF directory with the packaged tokenizer saved beside it."""
  directory = str(tmp_path_factory.mktemp("good"))
  model = models.from_config("gpt2", "tiny", vocab_size=50257, max_length=16)
  params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  models.save_pretrained(model, params, directory)
  tokenizer.load_tokenizer(None).save(directory)
  for load in LOADERS.values():
    load(directory)  # Undamaged, both load.
  return directory


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_a_damaged_hf_directory_file_is_an_error_naming_it(case, good_directory, tmp_path):
  filename, damage, loader, message = HF_CASES[case]
  directory = str(tmp_path / "damaged")
  shutil.copytree(good_directory, directory)
  damage(os.path.join(directory, filename))
  with pytest.raises(damaged_files.DamagedFileError, match=message):
    LOADERS[loader](directory)


@pytest.mark.parametrize(
  "damage,message",
  [
    (garble_start, "damaged.gguf is not a readable GGUF file"),
    (truncate, "damaged.gguf is not a readable GGUF file"),
    (nan_at(_first_gguf_tensor), "in .*damaged.gguf has non-finite values"),
  ],
  ids=["header garbled", "truncated", "NaN bytes"],
)
def test_a_damaged_gguf_is_an_error_naming_it(tmp_path, damage, message):
  path = write_gguf(tmp_path / "damaged.gguf", build_hf_model("untied_mha"))
  models.from_pretrained(path)  # Undamaged, it loads.
  damage(path)
  with pytest.raises(damaged_files.DamagedFileError, match=message):
    models.from_pretrained(path)


def test_check_finite_names_the_tensor():
  damaged_files.check_finite("f", {"a": np.ones(3, np.float32), "ids": np.arange(3)})
  with pytest.raises(damaged_files.DamagedFileError, match="tensor 'b' in f"):
    damaged_files.check_finite("f", {"a": np.ones(2), "b": np.array([1.0, np.inf])})
