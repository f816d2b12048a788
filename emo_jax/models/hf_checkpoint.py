"""HF checkpoint directories: read and write tensors through an explicit name/shape table.

A family describes its checkpoint layout as a list of :class:`Entry` (HF tensor name, Flax
path, Flax shape, whether PyTorch's ``[out, in]`` linear layout must be transposed); nothing
is matched by guessing. An unknown, missing or wrongly shaped tensor is an error that names it.

Readers: ``model.safetensors`` (also sharded ``model-0000x-of-0000y.safetensors`` with its
index), ``pytorch_model.bin`` (``weights_only=True``: a checkpoint is data, never code) and
HF's ``flax_model.msgpack``. The writer produces ``config.json`` + ``model.safetensors``,
each replaced atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from emo_jax import damaged_files


class Entry(NamedTuple):
  hf_name: str  # Without the family's prefix ("transformer.", "model."): checkpoints differ.
  flax_path: tuple[str, ...]
  shape: tuple[int, ...]  # In the Flax layout.
  transpose: bool = False  # PyTorch nn.Linear [out, in] <-> Flax Dense kernel [in, out].


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import safe_open

  tensors = {}
  with safe_open(path, framework="flax") as f:  # The flax reader handles bfloat16.
    for name in f.keys():  # noqa: SIM118 (safe_open objects are not iterable).
      tensors[name] = np.asarray(f.get_tensor(name), np.float32)
  return tensors


def _read_torch_bin(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise ImportError(
      f"reading {path} needs PyTorch; install torch or convert the checkpoint to model.safetensors."
    ) from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.float().numpy() for k, v in state.items()}


def _read_flax_msgpack(path: str) -> dict[str, np.ndarray]:
  """HF's Flax layout, renamed to PyTorch names (every Flax kernel transposes to PyTorch's
  weight layout: GPT-2's Conv1D kernels are stored ``[out, in]`` there, Dense ``[in, out]``)."""
  with open(path, "rb") as f:
    tree = flax.serialization.msgpack_restore(f.read())
  tensors = {}
  for keys, value in flax.traverse_util.flatten_dict(tree).items():
    *module, leaf = keys
    name = ".".join(module)
    value = np.asarray(value, np.float32)
    if leaf in ("embedding", "scale", "weight"):
      tensors[f"{name}.weight"] = value
    elif leaf == "kernel":
      tensors[f"{name}.weight"] = value.T
    else:
      tensors[f"{name}.{leaf}"] = value
  return tensors


def _read_sharded_safetensors(index_path: str) -> dict[str, np.ndarray]:
  shards = sorted(
    set(damaged_files.read_json(index_path, "safetensors index")["weight_map"].values())
  )
  tensors = {}
  for shard in shards:
    tensors.update(_read_safetensors(os.path.join(os.path.dirname(index_path), shard)))
  return tensors


READERS: dict[str, Callable[[str], dict[str, np.ndarray]]] = {
  "model.safetensors": _read_safetensors,
  "model.safetensors.index.json": _read_sharded_safetensors,
  "pytorch_model.bin": _read_torch_bin,
  "flax_model.msgpack": _read_flax_msgpack,
}


def resolve_directory(path_or_name: str) -> str:
  """A local directory as it is; a hub name downloaded when online (else a clear error)."""
  if os.path.isdir(path_or_name):
    return path_or_name
  # A hub name is "name" or "org/name"; anything else is a path that does not exist.
  if path_or_name.startswith((".", "/", "~")) or path_or_name.count("/") > 1:
    raise FileNotFoundError(f"no model directory at {path_or_name!r}.")
  try:
    from huggingface_hub import snapshot_download

    return snapshot_download(
      path_or_name,
      allow_patterns=[
        "config.json",
        "*.safetensors",
        *READERS,
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
      ],
    )
  except Exception as e:  # Offline, unknown name, or huggingface_hub missing.
    raise FileNotFoundError(
      f"{path_or_name!r} is not a local directory and could not be fetched from the "
      f"Hugging Face hub ({type(e).__name__}: {e}). Offline, pass a local HF directory "
      "holding config.json and model.safetensors (or pytorch_model.bin), a .gguf file, or "
      "a packaged name (emo_jax.models.PACKAGED_MODELS)."
    ) from e


def read_config(directory: str) -> dict[str, Any]:
  """``config.json`` of an HF directory as a dict."""
  config_path = os.path.join(directory, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"missing {config_path}: not an HF model directory.")
  return damaged_files.read_json(config_path, "model config")


def read_tensors(directory: str, prefix: str) -> dict[str, np.ndarray]:
  """The tensors of the first weights file found, float32, ``prefix`` stripped."""
  for filename, reader in READERS.items():
    path = os.path.join(directory, filename)
    if os.path.exists(path):
      with damaged_files.parsing(path, f"{filename} weights file"):
        tensors = reader(path)
      damaged_files.check_finite(path, tensors)
      return {k.removeprefix(prefix): v for k, v in tensors.items()}
  raise FileNotFoundError(f"no weights in {directory}: expected one of {', '.join(READERS)}.")


def _listing(names: Sequence[str]) -> str:
  return f"{list(names[:10])}{' ...' if len(names) > 10 else ''}"


def params_from_tensors(
  table: Sequence[Entry],
  tensors: dict[str, np.ndarray],
  param_dtype=jnp.float32,
  ignored: Callable[[str], bool] = lambda n: False,
) -> dict[str, Any]:
  """Maps checkpoint tensors onto the Flax parameter tree, checking names and shapes.

  ``ignored(name)`` marks tensors that may be present but are not parameters (causal-mask
  buffers, a tied head's duplicate, rotary caches).
  """
  expected = {entry.hf_name for entry in table}
  unknown = sorted(name for name in tensors if name not in expected and not ignored(name))
  if unknown:
    raise ValueError(f"unknown tensors in the checkpoint: {_listing(unknown)}")
  missing = sorted(expected - set(tensors))
  if missing:
    raise ValueError(f"tensors missing from the checkpoint: {_listing(missing)}")
  flat = {}
  for entry in table:
    value = tensors[entry.hf_name]
    if entry.transpose:
      value = value.T
    if value.shape != entry.shape:
      raise ValueError(
        f"tensor {entry.hf_name} has shape "
        f"{value.T.shape if entry.transpose else value.shape}, expected "
        f"{entry.shape[::-1] if entry.transpose else entry.shape} for this "
        "config."
      )
    flat[entry.flax_path] = jnp.asarray(value, param_dtype)
  return flax.traverse_util.unflatten_dict(flat)


def tensors_from_params(
  table: Sequence[Entry], params: Any, prefix: str, unprefixed: Sequence[str] = ()
) -> dict[str, np.ndarray]:
  """The inverse of :func:`params_from_tensors`: float32 tensors under their HF names."""
  flat = flax.traverse_util.flatten_dict(nn.meta.unbox(params))
  tensors = {}
  for entry in table:
    value = np.asarray(jax.device_get(flat[entry.flax_path]), np.float32)
    if value.shape != entry.shape:
      raise ValueError(
        f"parameter {'/'.join(entry.flax_path)} has shape {value.shape}, expected {entry.shape}."
      )
    name = entry.hf_name if entry.hf_name in unprefixed else prefix + entry.hf_name
    tensors[name] = np.ascontiguousarray(value.T if entry.transpose else value)
  return tensors


def write_directory(
  out_dir: str, hf_config: dict[str, Any], tensors: dict[str, np.ndarray]
) -> None:
  """``config.json`` + ``model.safetensors`` in ``out_dir``, each replaced atomically."""
  from safetensors.numpy import save_file

  os.makedirs(out_dir, exist_ok=True)
  tmp_weights = os.path.join(out_dir, "model.safetensors.tmp")
  save_file(tensors, tmp_weights, metadata={"format": "pt"})
  os.replace(tmp_weights, os.path.join(out_dir, "model.safetensors"))
  tmp_config = os.path.join(out_dir, "config.json.tmp")
  with open(tmp_config, "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  os.replace(tmp_config, os.path.join(out_dir, "config.json"))
