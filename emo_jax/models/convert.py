"""HF checkpoint import/export for the Flax GPT-2: an explicit name/shape table, no guessing.

``from_pretrained`` reads a local HF directory (``config.json`` with ``model.safetensors``,
``pytorch_model.bin`` or ``flax_model.msgpack``) or, when online, a hub name. Every tensor
goes through :func:`parameter_table`, which names the HF tensor, the Flax path and the
expected shape; an unknown, missing or wrongly shaped tensor is an error that names it.
``save_pretrained`` writes ``config.json`` + ``model.safetensors`` that
``transformers.GPT2LMHeadModel.from_pretrained`` loads.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from emo_jax import cost_embeddings as cost_lib
from emo_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel

# Non-parameter buffers that older GPT-2 checkpoints carry (the causal-mask constants).
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


class Entry(NamedTuple):
  hf_name: str  # Without the "transformer." prefix (checkpoints differ on it).
  flax_path: tuple[str, ...]
  shape: tuple[int, ...]  # In the Flax layout.


def parameter_table(config: GPT2Config) -> list[Entry]:
  """Every parameter: HF name, Flax path, Flax shape.

  HF's GPT-2 uses ``Conv1D`` layers whose weights are stored ``[in, out]`` -- the same
  layout as a Flax ``Dense`` kernel -- so no PyTorch tensor needs a transpose.
  """
  d, mlp, vocab = config.n_embd, config.mlp_width, config.vocab_size
  table = [
      Entry("wte.weight", ("wte", "embedding"), (vocab, d)),
      Entry("wpe.weight", ("wpe", "embedding"), (config.n_positions, d)),
      Entry("ln_f.weight", ("ln_f", "scale"), (d,)),
      Entry("ln_f.bias", ("ln_f", "bias"), (d,)),
  ]
  for i in range(config.n_layer):
    layer = [
        ("ln_1.weight", ("ln_1", "scale"), (d,)),
        ("ln_1.bias", ("ln_1", "bias"), (d,)),
        ("attn.c_attn.weight", ("attn", "c_attn", "kernel"), (d, 3 * d)),
        ("attn.c_attn.bias", ("attn", "c_attn", "bias"), (3 * d,)),
        ("attn.c_proj.weight", ("attn", "c_proj", "kernel"), (d, d)),
        ("attn.c_proj.bias", ("attn", "c_proj", "bias"), (d,)),
        ("ln_2.weight", ("ln_2", "scale"), (d,)),
        ("ln_2.bias", ("ln_2", "bias"), (d,)),
        ("mlp.c_fc.weight", ("mlp", "c_fc", "kernel"), (d, mlp)),
        ("mlp.c_fc.bias", ("mlp", "c_fc", "bias"), (mlp,)),
        ("mlp.c_proj.weight", ("mlp", "c_proj", "kernel"), (mlp, d)),
        ("mlp.c_proj.bias", ("mlp", "c_proj", "bias"), (d,)),
    ]
    table += [Entry(f"h.{i}.{name}", (f"h_{i}", *path), shape) for name, path, shape in layer]
  if not config.tie_word_embeddings:
    table.append(Entry("lm_head.weight", ("lm_head",), (vocab, d)))
  return table


# ----------------------------------------------------------------------------------------
# Reading checkpoints.
# ----------------------------------------------------------------------------------------


def _strip_prefix(name: str) -> str:
  return name[len("transformer."):] if name.startswith("transformer.") else name


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top

  tensors = {}
  with safe_open(path, framework="flax") as f:  # The flax reader handles bfloat16.
    for name in f.keys():
      tensors[name] = np.asarray(f.get_tensor(name), np.float32)
  return tensors


def _read_torch_bin(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"reading {path} needs PyTorch; install torch or convert the "
                      "checkpoint to model.safetensors.") from e
  # weights_only: a checkpoint is data, never code to execute.
  state = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.float().numpy() for k, v in state.items()}


def _read_flax_msgpack(path: str) -> dict[str, np.ndarray]:
  """HF's Flax GPT-2 layout, renamed to PyTorch names (its Conv1D kernels are [out, in])."""
  with open(path, "rb") as f:
    tree = flax.serialization.msgpack_restore(f.read())
  tensors = {}
  for keys, value in flax.traverse_util.flatten_dict(tree).items():
    *module, leaf = keys
    name = ".".join(module)
    value = np.asarray(value, np.float32)
    if leaf == "embedding":
      tensors[f"{name}.weight"] = value
    elif leaf == "scale":
      tensors[f"{name}.weight"] = value
    elif leaf == "kernel":  # Flax Conv1D kernels are [out, in], Dense kernels [in, out]:
      tensors[f"{name}.weight"] = value.T  # both transpose to PyTorch's layouts.
    else:
      tensors[f"{name}.{leaf}"] = value
  return tensors


_READERS: dict[str, Callable[[str], dict[str, np.ndarray]]] = {
    "model.safetensors": _read_safetensors,
    "pytorch_model.bin": _read_torch_bin,
    "flax_model.msgpack": _read_flax_msgpack,
}


def _resolve_directory(path_or_name: str) -> str:
  if os.path.isdir(path_or_name):
    return path_or_name
  if os.path.sep in path_or_name or path_or_name.startswith("."):
    raise FileNotFoundError(f"no model directory at {path_or_name!r}.")
  try:
    from huggingface_hub import snapshot_download  # pylint: disable=g-import-not-at-top

    return snapshot_download(path_or_name, allow_patterns=["config.json", *_READERS])
  except Exception as e:  # Offline, unknown name, or huggingface_hub missing.
    raise FileNotFoundError(
        f"{path_or_name!r} is not a local directory and could not be fetched from the "
        f"Hugging Face hub ({type(e).__name__}: {e}). Offline, pass a local HF directory "
        "holding config.json and model.safetensors (or pytorch_model.bin), e.g. one "
        "written by transformers' save_pretrained."
    ) from e


def load_hf_config(directory: str) -> GPT2Config:
  """The architecture in an HF directory's ``config.json`` (no weights are read)."""
  config_path = os.path.join(directory, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"missing {config_path}: not an HF model directory.")
  with open(config_path) as f:
    return GPT2Config.from_hf_dict(json.load(f))


def load_hf_tensors(directory: str) -> tuple[GPT2Config, dict[str, np.ndarray]]:
  """Reads ``config.json`` and the first weights file found, names without prefix."""
  config = load_hf_config(directory)
  for filename, reader in _READERS.items():
    path = os.path.join(directory, filename)
    if os.path.exists(path):
      tensors = {_strip_prefix(k): v for k, v in reader(path).items()}
      return config, tensors
  raise FileNotFoundError(
      f"no weights in {directory}: expected one of {', '.join(_READERS)}.")


def params_from_hf_tensors(config: GPT2Config, tensors: dict[str, np.ndarray],
                           param_dtype=jnp.float32) -> dict[str, Any]:
  """Maps HF tensors onto the Flax parameter tree, checking names and shapes."""
  table = parameter_table(config)
  expected = {entry.hf_name for entry in table}
  unknown = sorted(
      name for name in tensors
      if name not in expected and not name.endswith(_IGNORED_SUFFIXES)
      and not (name == "lm_head.weight" and config.tie_word_embeddings))
  if unknown:
    raise ValueError(f"unknown tensors in the checkpoint: {unknown[:10]}"
                     f"{' ...' if len(unknown) > 10 else ''}")
  missing = sorted(expected - set(tensors))
  if missing:
    raise ValueError(f"tensors missing from the checkpoint: {missing[:10]}"
                     f"{' ...' if len(missing) > 10 else ''}")
  flat = {}
  for entry in table:
    value = tensors[entry.hf_name]
    if value.shape != entry.shape:
      raise ValueError(f"tensor {entry.hf_name} has shape {value.shape}, expected "
                       f"{entry.shape} for this config.")
    flat[entry.flax_path] = jnp.asarray(value, param_dtype)
  return flax.traverse_util.unflatten_dict(flat)


def pretrained_config(path_or_name: str) -> GPT2Config:
  """The architecture of a local HF directory or hub name, without loading its weights."""
  return load_hf_config(_resolve_directory(path_or_name))


def from_pretrained(
    path_or_name: str,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    cost_embeddings: str | np.ndarray | jax.Array = "frozen_head",
    remat: bool = False,
    **config_overrides,
) -> tuple[GPT2LMHeadModel, dict[str, Any]]:
  """Loads an HF GPT-2 into ``(model, variables)``.

  Args:
    path_or_name: a local HF directory, or a hub name such as ``"gpt2"`` (online only).
    dtype: activation dtype; ``param_dtype``: parameter dtype.
    cost_embeddings: ``"frozen_head"`` -- a copy of the pretrained LM head taken now (the
      paper's default); ``"adaptive"`` -- no copy: the loss uses the current head under
      stop-gradient; or a ``[V, d_c]`` array (``d_c`` may differ from ``n_embd``).
    remat: rematerialise blocks in the backward pass.
    **config_overrides: e.g. dropout rates (``resid_pdrop=0.0``).

  Returns:
    The model and ``{"params": ..., "cost": ...}`` (no ``cost`` for ``"adaptive"``); the
    ``cost`` collection holds row-normalised float32 embeddings (see
    :mod:`emo_jax.cost_embeddings`).
  """
  config, tensors = load_hf_tensors(_resolve_directory(path_or_name))
  if config_overrides:
    config = GPT2Config(**{**config.__dict__, **config_overrides})
  params = params_from_hf_tensors(config, tensors, param_dtype)
  model = GPT2LMHeadModel(config, dtype=dtype, param_dtype=param_dtype, remat=remat)
  variables = {"params": params}
  variables.update(cost_lib.make_cost_collection(model, params, cost_embeddings))
  return model, variables


# ----------------------------------------------------------------------------------------
# Writing checkpoints.
# ----------------------------------------------------------------------------------------


def save_pretrained(variables: dict[str, Any], config: GPT2Config, out_dir: str) -> None:
  """Writes ``config.json`` + ``model.safetensors`` in HF's GPT-2 format (atomically)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  params = nn.meta.unbox(variables.get("params", variables))
  flat = flax.traverse_util.flatten_dict(params)
  tensors = {}
  for entry in parameter_table(config):
    value = np.asarray(jax.device_get(flat[entry.flax_path]), np.float32)
    if value.shape != entry.shape:
      raise ValueError(f"parameter {'/'.join(entry.flax_path)} has shape {value.shape}, "
                       f"expected {entry.shape}.")
    name = entry.hf_name if entry.hf_name == "lm_head.weight" else f"transformer.{entry.hf_name}"
    tensors[name] = np.ascontiguousarray(value)
  os.makedirs(out_dir, exist_ok=True)
  tmp_weights = os.path.join(out_dir, "model.safetensors.tmp")
  save_file(tensors, tmp_weights, metadata={"format": "pt"})
  os.replace(tmp_weights, os.path.join(out_dir, "model.safetensors"))
  tmp_config = os.path.join(out_dir, "config.json.tmp")
  with open(tmp_config, "w") as f:
    json.dump(config.to_hf_dict(), f, indent=2, sort_keys=True)
  os.replace(tmp_config, os.path.join(out_dir, "config.json"))
