"""GPT-2 (Radford et al., 2019) in Flax Linen, numerically matching HF ``GPT2LMHeadModel``.

The model knows nothing about meshes or training: every parameter carries *logical* axis
names (``vocab``, ``embed``, ``mlp``, ``qkv``, ``positions``, ``norm``) that
``emo_jax.sharding`` maps onto a device mesh, and the loss is computed elsewhere. It exposes
the pieces a fused loss needs -- the final hidden states and the ``[V, d]`` output matrix --
besides plain logits.

Shapes: ``B`` batch, ``T`` length, ``d`` width (``n_embd``), ``H`` heads, ``V`` vocabulary.

Decoding: with ``decode=True`` the keys and values of every call are appended to a KV cache
held in the ``cache`` collection (allocated by ``init`` with a ``[B, max_length]`` input), so
a prompt can be pre-filled in one call and then extended a token at a time; the logits equal
those of the full forward pass position by position.
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

# HF's GPT-2 initialiser: N(0, 0.02) everywhere (residual projections are scaled below).
_INIT_STDDEV = 0.02


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  """Architecture of a GPT-2 model (the fields of HF's ``GPT2Config`` that matter here)."""

  vocab_size: int = 50257
  n_positions: int = 1024
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  n_inner: int | None = None  # MLP width; None means 4 * n_embd.
  layer_norm_epsilon: float = 1e-5
  tie_word_embeddings: bool = True
  embd_pdrop: float = 0.1
  attn_pdrop: float = 0.1
  resid_pdrop: float = 0.1
  bos_token_id: int = 50256
  eos_token_id: int = 50256

  def __post_init__(self):
    if self.n_embd % self.n_head:
      raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}).")

  @property
  def mlp_width(self) -> int:
    return self.n_inner or 4 * self.n_embd

  @property
  def max_length(self) -> int:
    return self.n_positions

  @property
  def hidden_size(self) -> int:
    return self.n_embd

  def with_dropout(self, rate: float) -> GPT2Config:
    """The same rate for embedding, attention and residual dropout."""
    return dataclasses.replace(self, embd_pdrop=rate, attn_pdrop=rate, resid_pdrop=rate)

  def with_max_length(self, length: int) -> GPT2Config:
    return dataclasses.replace(self, n_positions=length)

  @classmethod
  def preset(cls, name: str, **overrides) -> GPT2Config:
    """``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl`` or a tiny test size."""
    sizes = {
      "gpt2": dict(n_embd=768, n_layer=12, n_head=12),
      "gpt2-medium": dict(n_embd=1024, n_layer=24, n_head=16),
      "gpt2-large": dict(n_embd=1280, n_layer=36, n_head=20),
      "gpt2-xl": dict(n_embd=1600, n_layer=48, n_head=25),
      # Tiny sizes for tests and CPU runs; they keep GPT-2's vocabulary unless overridden.
      "tiny": dict(n_embd=64, n_layer=2, n_head=4, n_positions=256),
      "small-cpu": dict(n_embd=256, n_layer=4, n_head=4, n_positions=512),
    }
    if name not in sizes:
      raise ValueError(f"unknown GPT-2 preset {name!r}; known: {sorted(sizes)}.")
    return cls(**{**sizes[name], **overrides})

  @classmethod
  def from_hf_dict(cls, hf: dict) -> GPT2Config:
    """From an HF ``config.json`` dict; unknown architectures are rejected by name."""
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
      raise ValueError(f"config.json describes a {model_type!r} model, not GPT-2.")
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
      raise ValueError(f"unsupported activation_function {hf['activation_function']!r}.")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
      raise ValueError(
        "scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported."
      )
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in hf.items() if k in fields})

  def to_hf_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out.update(
      model_type="gpt2",
      architectures=["GPT2LMHeadModel"],
      activation_function="gelu_new",
      n_ctx=self.n_positions,
    )
    return out


def _dense(
  features: int, axes: tuple[str, str], name: str, dtype, param_dtype, stddev: float = _INIT_STDDEV
) -> nn.Dense:
  return layers.dense(features, axes, name, dtype, param_dtype, stddev=stddev)


def _layer_norm(config: GPT2Config, name: str, dtype, param_dtype) -> nn.LayerNorm:
  return nn.LayerNorm(
    epsilon=config.layer_norm_epsilon,
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
  )


class CausalSelfAttention(nn.Module):
  config: GPT2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, attention_mask, deterministic: bool, decode: bool):
    cfg = self.config
    batch, length, width = x.shape
    head_dim = width // cfg.n_head
    qkv = _dense(3 * width, ("embed", "qkv"), "c_attn", self.dtype, self.param_dtype)(x)
    query, key, value = jnp.split(qkv, 3, axis=-1)  # 3 x [B, T, d]
    split_heads = lambda t: t.reshape(batch, length, cfg.n_head, head_dim)
    query, key, value = map(split_heads, (query, key, value))  # [B, T, H, dh]

    dropout = lambda w: nn.Dropout(cfg.attn_pdrop)(w, deterministic=deterministic)
    out = layers.causal_attention(
      self, query, key, value, attention_mask, decode, self.dtype, dropout
    ).reshape(batch, length, width)  # [B, T, d]
    out = _dense(
      width,
      ("qkv", "embed"),
      "c_proj",
      self.dtype,
      self.param_dtype,
      stddev=_INIT_STDDEV / jnp.sqrt(2 * cfg.n_layer),
    )(out)  # [B, T, d]
    return nn.Dropout(cfg.resid_pdrop)(out, deterministic=deterministic)


class MLP(nn.Module):
  config: GPT2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool):
    cfg = self.config
    h = _dense(cfg.mlp_width, ("embed", "mlp"), "c_fc", self.dtype, self.param_dtype)(x)
    h = jax.nn.gelu(h, approximate=True)  # HF's "gelu_new".
    h = _dense(
      cfg.n_embd,
      ("mlp", "embed"),
      "c_proj",
      self.dtype,
      self.param_dtype,
      stddev=_INIT_STDDEV / jnp.sqrt(2 * cfg.n_layer),
    )(h)
    return nn.Dropout(cfg.resid_pdrop)(h, deterministic=deterministic)


class Block(nn.Module):
  config: GPT2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, attention_mask, deterministic: bool, decode: bool):
    kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
    h = _layer_norm(self.config, "ln_1", self.dtype, self.param_dtype)(x)
    x = x + CausalSelfAttention(**kw, name="attn")(h, attention_mask, deterministic, decode)
    h = _layer_norm(self.config, "ln_2", self.dtype, self.param_dtype)(x)
    return x + MLP(**kw, name="mlp")(h, deterministic)


class GPT2LMHeadModel(causal_lm.CausalLMBase):
  """GPT-2 language model (implements :class:`emo_jax.models.causal_lm.CausalLM`).

  Attributes:
    config: the architecture.
    dtype: activation dtype (e.g. ``jnp.bfloat16``); logits are returned in float32.
    param_dtype: parameter dtype (float32 for training).
    remat: rematerialise each block in the backward pass (trades compute for memory).
  """

  config: GPT2Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False

  family = "gpt2"

  def setup(self):
    cfg = self.config
    embed_init = nn.initializers.normal(_INIT_STDDEV)
    self.wte = nn.Embed(
      cfg.vocab_size,
      cfg.n_embd,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      embedding_init=nn.with_logical_partitioning(embed_init, ("vocab", "embed")),
    )
    self.wpe = nn.Embed(
      cfg.n_positions,
      cfg.n_embd,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      embedding_init=nn.with_logical_partitioning(
        nn.initializers.normal(0.01), ("positions", "embed")
      ),
    )
    self.drop = nn.Dropout(cfg.embd_pdrop)
    block = nn.remat(Block, static_argnums=(3, 4)) if self.remat else Block
    self.h = [block(cfg, self.dtype, self.param_dtype, name=f"h_{i}") for i in range(cfg.n_layer)]
    self.ln_f = _layer_norm(cfg, "ln_f", self.dtype, self.param_dtype)
    if not cfg.tie_word_embeddings:
      self.lm_head = self.param(
        "lm_head",
        nn.with_logical_partitioning(embed_init, ("vocab", "embed")),
        (cfg.vocab_size, cfg.n_embd),
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
    """Final-layer-norm outputs ``[B, T, d]`` (in ``dtype``): the input of the LM head.

    Args:
      input_ids: ``[B, T]`` token ids.
      attention_mask: optional ``[B, S]`` 1 for real tokens, 0 for padding, over the keys
        (``S = T``; in decode mode ``S`` is the cache length).
      position_ids: ``[B, T]``; default ``0..T-1``, required when decoding. Left-padded
        prompts should pass ``cumsum(mask) - 1`` (clipped at 0).
      deterministic: False enables dropout (needs a ``dropout`` rng).
      decode: use and extend the KV cache (``cache`` collection, mutable).
    """
    position_ids = layers.check_positions(
      self, input_ids, position_ids, decode, self.config.n_positions
    )
    x = self.wte(input_ids) + self.wpe(position_ids)  # [B, T, d]
    x = self.drop(x, deterministic=deterministic)
    for block in self.h:
      x = block(x, attention_mask, deterministic, decode)
    return self.ln_f(x)  # [B, T, d]

  def output_embeddings(self) -> Array:
    """The LM head as a ``[V, d]`` matrix (the tied token embeddings for GPT-2)."""
    if self.config.tie_word_embeddings:
      return self.wte.embedding
    return self.lm_head


# ----------------------------------------------------------------------------------------
# HF checkpoint layout.
# ----------------------------------------------------------------------------------------

HF_PREFIX = "transformer."
# Non-parameter buffers that older GPT-2 checkpoints carry (the causal-mask constants).
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def hf_ignored(config: GPT2Config, name: str) -> bool:
  """Checkpoint tensors that are not parameters (a tied head may be saved twice)."""
  return name.endswith(_IGNORED_SUFFIXES) or (
    name == "lm_head.weight" and config.tie_word_embeddings
  )


def hf_parameter_table(config: GPT2Config) -> list[Entry]:
  """Every parameter: HF name (without ``transformer.``), Flax path, Flax shape.

  HF's GPT-2 uses ``Conv1D`` layers whose weights are stored ``[in, out]`` -- the same
  layout as a Flax ``Dense`` kernel -- so no tensor needs a transpose.
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
