"""GGUF files (llama.cpp's format) through the ``gguf`` package: LLaMA weights and metadata.

:func:`read_llama` turns a ``general.architecture = llama`` file into a :class:`LlamaConfig`
and HF-named float32 tensors, which then go through the same name/shape table as an HF
directory (:func:`emo_jax.models.llama.hf_parameter_table`). Three things differ from HF:

* quantized tensors (Q8_0, Q4_1, K-quants, ...) are dequantized by the ``gguf`` package's own
  dequantizer; a type it cannot dequantize is an error naming the tensor and the type;
* llama.cpp's converter permutes the rows of ``attn_q`` / ``attn_k`` from HF's rotate-half
  rotary layout into interleaved pairs, per head; :func:`unpermute_rotary_rows` undoes it;
* a file without ``output.weight`` has a head tied to ``token_embd.weight``.

:func:`read_metadata` gives every key-value field (the tokenizer's vocabulary, merges and
special ids among them) without touching the tensors: the file is memory-mapped.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np

from emo_jax import damaged_files
from emo_jax.models.llama import LlamaConfig

# GGUF tensor names -> HF LLaMA names (without "model.").
_GLOBAL_NAMES = {
  "token_embd.weight": "embed_tokens.weight",
  "output_norm.weight": "norm.weight",
  "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
  "attn_norm.weight": "input_layernorm.weight",
  "ffn_norm.weight": "post_attention_layernorm.weight",
  "attn_q.weight": "self_attn.q_proj.weight",
  "attn_k.weight": "self_attn.k_proj.weight",
  "attn_v.weight": "self_attn.v_proj.weight",
  "attn_output.weight": "self_attn.o_proj.weight",
  "ffn_gate.weight": "mlp.gate_proj.weight",
  "ffn_up.weight": "mlp.up_proj.weight",
  "ffn_down.weight": "mlp.down_proj.weight",
}
_BLOCK_PATTERN = re.compile(r"blk\.(\d+)\.(.+)")


def _reader(path: str):
  import gguf

  if not os.path.exists(path):
    raise FileNotFoundError(f"no GGUF file at {path!r}.")
  with damaged_files.parsing(path, "GGUF file"):
    return gguf.GGUFReader(path)


def read_metadata(path: str) -> dict[str, Any]:
  """Every key-value field of a GGUF file (arrays as lists), without reading tensors."""
  return _metadata(_reader(path))


def _metadata(reader) -> dict[str, Any]:
  return {
    name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")
  }


def llama_config_from_metadata(
  metadata: dict[str, Any], path: str = "the GGUF file"
) -> LlamaConfig:
  """The :class:`LlamaConfig` a GGUF file's metadata describes."""
  architecture = metadata.get("general.architecture")
  if architecture != "llama":
    raise ValueError(f"{path}: GGUF architecture {architecture!r} is not supported (only 'llama').")

  def get(key, default=None, required=True):
    full = f"llama.{key}"
    if full not in metadata:
      if required and default is None:
        raise ValueError(f"{path}: GGUF metadata lacks {full!r}.")
      return default
    return metadata[full]

  scaling = get("rope.scaling.type", "none", required=False)
  if scaling not in ("none", "", None):
    raise ValueError(f"{path}: RoPE scaling {scaling!r} is not supported (only plain RoPE).")
  hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
  head_dim = int(get("attention.key_length", hidden // heads, required=False))
  rotary_dim = int(get("rope.dimension_count", head_dim, required=False))
  if rotary_dim != head_dim:
    raise ValueError(
      f"{path}: partial rotary embeddings (rope.dimension_count {rotary_dim} "
      f"< head width {head_dim}) are not supported."
    )
  vocab = get("vocab_size", None, required=False)
  if vocab is None:
    if "tokenizer.ggml.tokens" not in metadata:
      raise ValueError(
        f"{path}: GGUF metadata gives neither llama.vocab_size nor tokenizer.ggml.tokens."
      )
    vocab = len(metadata["tokenizer.ggml.tokens"])

  def token_id(name):
    value = metadata.get(f"tokenizer.ggml.{name}_token_id")
    return None if value is None else int(value)

  return LlamaConfig(
    vocab_size=int(vocab),
    hidden_size=hidden,
    intermediate_size=int(get("feed_forward_length")),
    num_hidden_layers=int(get("block_count")),
    num_attention_heads=heads,
    num_key_value_heads=int(get("attention.head_count_kv", heads, required=False)),
    head_dim=head_dim,
    max_position_embeddings=int(get("context_length")),
    rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
    rope_theta=float(get("rope.freq_base", 10000.0, required=False)),
    bos_token_id=token_id("bos"),
    eos_token_id=token_id("eos"),
    pad_token_id=token_id("padding"),
  )


def unpermute_rotary_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
  """HF's row order of a ``[heads * D, in]`` query/key weight from llama.cpp's.

  llama.cpp stores each head's rows as interleaved pairs ``(0, D/2), (1, D/2 + 1), ...``
  (``reshape(heads, 2, D/2, in).swapaxes(1, 2)``); this is the inverse reshuffle.
  """
  rows = weight.shape[0]
  if rows % (2 * num_heads):
    raise ValueError(f"{rows} rows do not split into {num_heads} heads of even width.")
  return (
    weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
    .swapaxes(1, 2)
    .reshape(weight.shape)
  )


def _hf_name(gguf_name: str) -> str | None:
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name]
  match = _BLOCK_PATTERN.fullmatch(gguf_name)
  if match and match.group(2) in _BLOCK_NAMES:
    return f"layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}"
  return None


def _llama_config(reader, path: str) -> LlamaConfig:
  config = llama_config_from_metadata(_metadata(reader), path)
  names = {t.name for t in reader.tensors}
  return dataclasses.replace(config, tie_word_embeddings="output.weight" not in names)


def read_llama_config(path: str) -> LlamaConfig:
  """The architecture of a LLaMA GGUF (metadata and tensor names; no tensor is read)."""
  return _llama_config(_reader(path), path)


def read_llama(path: str) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
  """``(config, tensors)``: HF LLaMA names (no prefix), PyTorch layouts, float32."""
  from gguf import quants

  reader = _reader(path)
  config = _llama_config(reader, path)
  tensors, unknown = {}, []
  for tensor in reader.tensors:
    hf_name = _hf_name(tensor.name)
    if hf_name is None:
      unknown.append(tensor.name)
      continue
    try:
      values = quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
      raise ValueError(
        f"{path}: tensor {tensor.name} has type {tensor.tensor_type.name}, "
        "which the gguf package cannot dequantize."
      ) from e
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dims innermost first.
    values = np.asarray(values, np.float32).reshape(shape)
    if hf_name.endswith("q_proj.weight"):
      values = unpermute_rotary_rows(values, config.num_attention_heads)
    elif hf_name.endswith("k_proj.weight"):
      values = unpermute_rotary_rows(values, config.kv_heads)
    tensors[hf_name] = values
  if unknown:
    raise ValueError(f"{path}: unknown tensors for a llama GGUF: {sorted(unknown)[:10]}")
  damaged_files.check_finite(path, tensors)
  return config, tensors
