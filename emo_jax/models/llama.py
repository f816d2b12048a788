"""LLaMA (Touvron et al., 2023) in Flax Linen, numerically matching HF ``LlamaForCausalLM``.

Pre-norm decoder blocks: RMSNorm -> grouped-query self-attention with rotary position
embeddings (HF's rotate-half layout) -> residual, RMSNorm -> SwiGLU MLP -> residual; a final
RMSNorm and an LM head that is tied to the token embeddings or separate (never biased). The
same module covers SmolLM2, TinyLlama, Llama 2/3-style checkpoints without RoPE scaling, and
any from-scratch size.

Parameters carry the logical axis names of :mod:`emo_jax.models.layers` (the GPT-2 ones), so
:mod:`emo_jax.sharding` needs no family knowledge. Decoding keeps a KV cache of the ``K``
key/value heads only.

Shapes: ``B`` batch, ``T`` length, ``d`` width (``hidden_size``), ``H`` query heads, ``K``
key/value heads, ``D`` head width, ``V`` vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from emo_jax.models import causal_lm, layers
from emo_jax.models.hf_checkpoint import Entry

Array = jax.Array
Dtype = Any

_INIT_STDDEV = 0.02  # HF's initializer_range for LLaMA.


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Architecture of a LLaMA model (the fields of HF's ``LlamaConfig`` that matter here)."""

  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int | None = None  # None: as many as query heads (no GQA).
  head_dim: int | None = None  # None: hidden_size // num_attention_heads.
  max_position_embeddings: int = 2048
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  mlp_bias: bool = False
  attention_dropout: float = 0.0
  bos_token_id: int | None = 1
  eos_token_id: int | None = 2
  pad_token_id: int | None = None

  def __post_init__(self):
    # Canonical form: the defaults spelled out, so equal architectures compare equal.
    if self.num_key_value_heads is None:
      object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
    if self.head_dim is None:
      if self.hidden_size % self.num_attention_heads:
        raise ValueError(
          f"hidden_size ({self.hidden_size}) must be divisible by "
          f"num_attention_heads ({self.num_attention_heads}), or set head_dim."
        )
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
    if self.num_attention_heads % self.kv_heads:
      raise ValueError(
        f"num_attention_heads ({self.num_attention_heads}) must be a multiple "
        f"of num_key_value_heads ({self.kv_heads})."
      )

  @property
  def kv_heads(self) -> int:
    return self.num_key_value_heads

  @property
  def head_width(self) -> int:
    return self.head_dim

  @property
  def max_length(self) -> int:
    return self.max_position_embeddings

  def with_dropout(self, rate: float) -> LlamaConfig:
    """HF LLaMA has one dropout: on the attention weights."""
    return dataclasses.replace(self, attention_dropout=rate)

  def with_max_length(self, length: int) -> LlamaConfig:
    return dataclasses.replace(self, max_position_embeddings=length)

  @classmethod
  def preset(cls, name: str, **overrides) -> LlamaConfig:
    """``smollm2-135m`` (SmolLM2's architecture) or a tiny size for tests and CPU runs."""
    sizes = {
      "smollm2-135m": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
      ),
      "tiny": dict(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
      ),
    }
    if name not in sizes:
      raise ValueError(f"unknown LLaMA preset {name!r}; known: {sorted(sizes)}.")
    return cls(**{**sizes[name], **overrides})

  @classmethod
  def from_hf_dict(cls, hf: dict) -> LlamaConfig:
    """From an HF ``config.json`` dict; RoPE scaling and other variants are rejected."""
    if hf.get("model_type") != "llama":
      raise ValueError(f"config.json describes a {hf.get('model_type')!r} model, not LLaMA.")
    if hf.get("hidden_act", "silu") != "silu":
      raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r} (LLaMA uses silu).")
    # transformers >= 5 nests θ in rope_parameters; older files have rope_theta/rope_scaling.
    rope = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or rope
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type != "default":
      raise ValueError(f"RoPE scaling {rope_type!r} is not supported (only plain RoPE).")
    if hf.get("pretraining_tp", 1) != 1:
      raise ValueError("pretraining_tp != 1 is not supported.")
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in hf.items() if k in fields}
    if "rope_theta" in rope:
      values["rope_theta"] = rope["rope_theta"]
    for name in ("bos_token_id", "eos_token_id"):  # Some configs list several EOS ids.
      if isinstance(values.get(name), list):
        values[name] = values[name][0]
    return cls(**values)

  def to_hf_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out.update(
      model_type="llama",
      architectures=["LlamaForCausalLM"],
      hidden_act="silu",
      rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
      initializer_range=_INIT_STDDEV,
    )
    return out


class Attention(nn.Module):
  config: LlamaConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cos, sin, attention_mask, deterministic: bool, decode: bool):
    cfg = self.config
    batch, length, _ = x.shape
    heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.kv_heads, cfg.head_width

    def projection(features, name):
      return layers.dense(
        features, ("embed", "qkv"), name, self.dtype, self.param_dtype, use_bias=cfg.attention_bias
      )

    query = projection(heads * head_dim, "q_proj")(x).reshape(batch, length, heads, head_dim)
    key = projection(kv_heads * head_dim, "k_proj")(x).reshape(
      batch, length, kv_heads, head_dim
    )  # [B, T, K, D]
    value = projection(kv_heads * head_dim, "v_proj")(x).reshape(batch, length, kv_heads, head_dim)
    query = layers.apply_rotary(query, cos, sin)  # [B, T, H, D]
    key = layers.apply_rotary(key, cos, sin)
    dropout = None
    if cfg.attention_dropout > 0:
      dropout = lambda w: nn.Dropout(cfg.attention_dropout)(w, deterministic=deterministic)
    out = layers.causal_attention(
      self, query, key, value, attention_mask, decode, self.dtype, dropout
    )  # [B, T, H, D]
    out = out.reshape(batch, length, heads * head_dim)
    return layers.dense(
      cfg.hidden_size,
      ("qkv", "embed"),
      "o_proj",
      self.dtype,
      self.param_dtype,
      use_bias=cfg.attention_bias,
    )(out)  # [B, T, d]


class SwiGLU(nn.Module):
  """``down(silu(gate(x)) * up(x))`` (Shazeer, 2020)."""

  config: LlamaConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=cfg.mlp_bias)
    gate = layers.dense(cfg.intermediate_size, ("embed", "mlp"), "gate_proj", **kw)(x)
    up = layers.dense(cfg.intermediate_size, ("embed", "mlp"), "up_proj", **kw)(x)
    return layers.dense(cfg.hidden_size, ("mlp", "embed"), "down_proj", **kw)(
      jax.nn.silu(gate) * up
    )  # [B, T, d]


class DecoderLayer(nn.Module):
  config: LlamaConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cos, sin, attention_mask, deterministic: bool, decode: bool):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.RMSNorm(cfg.rms_norm_eps, **kw, name="input_layernorm")(x)
    x = x + Attention(cfg, **kw, name="self_attn")(
      h, cos, sin, attention_mask, deterministic, decode
    )
    h = layers.RMSNorm(cfg.rms_norm_eps, **kw, name="post_attention_layernorm")(x)
    return x + SwiGLU(cfg, **kw, name="mlp")(h)


class LlamaForCausalLM(causal_lm.CausalLMBase):
  """LLaMA language model (implements :class:`emo_jax.models.causal_lm.CausalLM`).

  Attributes:
    config: the architecture.
    dtype: activation dtype (e.g. ``jnp.bfloat16``); logits are returned in float32.
    param_dtype: parameter dtype (float32 for training).
    remat: rematerialise each decoder layer in the backward pass.
  """

  config: LlamaConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False

  family = "llama"

  def setup(self):
    cfg = self.config
    embed_init = nn.initializers.normal(_INIT_STDDEV)
    self.embed_tokens = nn.Embed(
      cfg.vocab_size,
      cfg.hidden_size,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      embedding_init=nn.with_logical_partitioning(embed_init, ("vocab", "embed")),
    )
    layer = nn.remat(DecoderLayer, static_argnums=(5, 6)) if self.remat else DecoderLayer
    self.layers = [
      layer(cfg, self.dtype, self.param_dtype, name=f"layers_{i}")
      for i in range(cfg.num_hidden_layers)
    ]
    self.norm = layers.RMSNorm(cfg.rms_norm_eps, self.dtype, self.param_dtype, name="norm")
    if not cfg.tie_word_embeddings:
      self.lm_head = self.param(
        "lm_head",
        nn.with_logical_partitioning(embed_init, ("vocab", "embed")),
        (cfg.vocab_size, cfg.hidden_size),
        self.param_dtype,
      )

  def hidden_states(
    self,
    input_ids,
    attention_mask=None,
    position_ids=None,
    deterministic: bool = True,
    decode: bool = False,
  ) -> Array:
    """Final-norm outputs ``[B, T, d]`` (in ``dtype``): the input of the LM head.

    Args:
      input_ids: ``[B, T]`` token ids.
      attention_mask: optional ``[B, S]`` 1 for real tokens, 0 for padding, over the keys
        (``S = T``; in decode mode ``S`` is the cache length).
      position_ids: ``[B, T]`` rotary positions; default ``0..T-1``, required when decoding.
        Left-padded prompts should pass ``cumsum(mask) - 1`` (clipped at 0).
      deterministic: False enables attention dropout (needs a ``dropout`` rng).
      decode: use and extend the KV cache (``cache`` collection, mutable).
    """
    cfg = self.config
    position_ids = layers.check_positions(
      self, input_ids, position_ids, decode, cfg.max_position_embeddings
    )
    cos, sin = layers.rotary_tables(position_ids, cfg.head_width, cfg.rope_theta)  # [B,T,D]
    x = self.embed_tokens(input_ids)  # [B, T, d]
    for layer in self.layers:
      x = layer(x, cos, sin, attention_mask, deterministic, decode)
    return self.norm(x)  # [B, T, d]

  def output_embeddings(self) -> Array:
    """The LM head as a ``[V, d]`` matrix (the token embeddings when tied)."""
    if self.config.tie_word_embeddings:
      return self.embed_tokens.embedding
    return self.lm_head


# ----------------------------------------------------------------------------------------
# HF checkpoint layout.
# ----------------------------------------------------------------------------------------

HF_PREFIX = "model."


def hf_ignored(config: LlamaConfig, name: str) -> bool:
  """Checkpoint tensors that are not parameters: rotary caches of old checkpoints, and the
  duplicate of a tied head."""
  return name.endswith(".rotary_emb.inv_freq") or (
    name == "lm_head.weight" and config.tie_word_embeddings
  )


def hf_parameter_table(config: LlamaConfig) -> list[Entry]:
  """Every parameter: HF name (without ``model.``), Flax path, Flax shape; PyTorch's
  ``nn.Linear`` weights are ``[out, in]``, so every projection is transposed."""
  d, mlp, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
  q_width = config.num_attention_heads * config.head_width
  kv_width = config.kv_heads * config.head_width
  table = [
    Entry("embed_tokens.weight", ("embed_tokens", "embedding"), (vocab, d)),
    Entry("norm.weight", ("norm", "scale"), (d,)),
  ]
  projections = [
    ("self_attn.q_proj", ("self_attn", "q_proj"), (d, q_width), config.attention_bias),
    ("self_attn.k_proj", ("self_attn", "k_proj"), (d, kv_width), config.attention_bias),
    ("self_attn.v_proj", ("self_attn", "v_proj"), (d, kv_width), config.attention_bias),
    ("self_attn.o_proj", ("self_attn", "o_proj"), (q_width, d), config.attention_bias),
    ("mlp.gate_proj", ("mlp", "gate_proj"), (d, mlp), config.mlp_bias),
    ("mlp.up_proj", ("mlp", "up_proj"), (d, mlp), config.mlp_bias),
    ("mlp.down_proj", ("mlp", "down_proj"), (mlp, d), config.mlp_bias),
  ]
  for i in range(config.num_hidden_layers):
    block, path = f"layers.{i}", f"layers_{i}"
    table += [
      Entry(f"{block}.input_layernorm.weight", (path, "input_layernorm", "scale"), (d,)),
      Entry(
        f"{block}.post_attention_layernorm.weight",
        (path, "post_attention_layernorm", "scale"),
        (d,),
      ),
    ]
    for name, module, shape, bias in projections:
      table.append(
        Entry(f"{block}.{name}.weight", (path, *module, "kernel"), shape, transpose=True)
      )
      if bias:
        table.append(Entry(f"{block}.{name}.bias", (path, *module, "bias"), shape[1:]))
  if not config.tie_word_embeddings:
    table.append(Entry("lm_head.weight", ("lm_head",), (vocab, d)))
  return table
