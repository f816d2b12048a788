"""Low-rank adapters (LoRA; Hu et al., 2021) for every model family, through ``qwix``.

A dense layer ``y = x W (+ b)`` with an adapter computes

    y = x W (+ b) + (α / r) · dropout(x) A B,      A [in, r], B [r, out],

``W`` frozen, ``A`` random and ``B`` zero at the start (so training starts from the base model
exactly). Google's ``qwix`` (its ``LoraProvider``, which intercepts the matmuls of the Linen
modules whose path a regex matches) does the forward pass and creates the adapters, named
``kernel_lora_a`` / ``kernel_lora_b`` beside the kernel they adapt, with the kernel's logical
axis names (``(in_axis, None)`` and ``(None, out_axis)``), so checkpoints, shardings and
resumption need nothing new. This module adds what the trainer needs around it:

* :func:`adapt` -- the model with adapters on the dense layers ``targets`` names (a module
  name such as ``q_proj``, or a path suffix such as ``attn/c_proj``); it still implements the
  causal-LM protocol (``__call__`` and ``hidden_states`` are intercepted);
* :func:`check_targets` -- an error naming a target that adapted nothing;
* :func:`split` / :func:`combine` -- the trainable adapters apart from the frozen base, so
  the gradient and the optimizer state cover the adapters only;
* :func:`merged` -- plain parameters ``W + (α / r) A B`` for the unmodified model (evaluation,
  sampling, the best checkpoint and the HF export use them). The plain model silently
  ignores adapter leaves, so unmerged parameters must never reach it.

``jax-lorax`` 0.3.1, the other JAX LoRA library on the index, pins jax < 0.5.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import qwix
from flax import traverse_util

# qwix's names for the adapters of a parameter named "kernel".
ADAPTER_NAMES = ("kernel_lora_a", "kernel_lora_b")
# The protocol methods through which training runs the model (qwix wraps only these).
INTERCEPTED_METHODS = ("__call__", "hidden_states")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """``rank`` r (0 = no adapters: full fine-tuning), ``alpha`` α (the update is scaled by
  α / r), ``dropout`` on the adapter's input (training only: the evaluated model is the
  merged one), ``targets``: the dense layers to adapt, by module name (``q_proj``) or path
  suffix (``attn/c_proj``)."""

  rank: int = 0
  alpha: float = 16.0
  dropout: float = 0.0
  targets: tuple[str, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "targets", tuple(self.targets))
    if self.rank < 0:
      raise ValueError(f"LoRA rank must be >= 0, got {self.rank}.")
    if self.rank and not self.targets:
      raise ValueError("LoRA with rank > 0 needs at least one target module (lora.targets).")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}.")

  @property
  def enabled(self) -> bool:
    return self.rank > 0

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  @property
  def module_path_regex(self) -> str:
    """A module path (``layers_0/self_attn/q_proj``) that ends with one of the targets."""
    return "(?:.*/)?(?:" + "|".join(re.escape(t) for t in self.targets) + ")"


def adapt(model, config: LoraConfig):
  """``model`` whose targeted dense layers carry adapters (``model`` itself when rank 0).

  The result is the same family's module (a subclass qwix makes), so every protocol call
  works; its ``init`` creates base weights and adapters, and its ``apply`` needs both.
  """
  if not config.enabled:
    return model
  provider = qwix.LoraProvider(
    module_path=config.module_path_regex,
    rank=config.rank,
    alpha=config.alpha,
    dropout=config.dropout,
  )
  return qwix.apply_lora_to_model(model, provider, methods=INTERCEPTED_METHODS)


def _adapted_modules(params) -> list[str]:
  flat = traverse_util.flatten_dict(params, sep="/")
  return sorted(k.rsplit("/", 1)[0] for k in flat if k.endswith("/" + ADAPTER_NAMES[0]))


def check_targets(params, config: LoraConfig) -> list[str]:
  """The adapted modules' paths; an error if a target adapted none, naming the dense layers
  the model has."""
  adapted = _adapted_modules(params)
  for target in config.targets if config.enabled else ():
    if not any(re.fullmatch(f"(?:.*/)?{re.escape(target)}", path) for path in adapted):
      flat = traverse_util.flatten_dict(params, sep="/")
      dense = sorted({k.split("/")[-2] for k, v in flat.items() if k.endswith("/kernel")})
      raise ValueError(
        f"lora.targets names {target!r}, which matches no dense layer of this model; its "
        f"dense layers are named {dense} (a path suffix such as 'attn/c_proj' also works)."
      )
  return adapted


def split(params) -> tuple[dict, dict]:
  """``(adapters, base)``: disjoint trees whose :func:`combine` is ``params``. Without
  adapters everything is trainable: ``(params, {})``."""
  flat = traverse_util.flatten_dict(params)
  adapters = {k: v for k, v in flat.items() if k[-1] in ADAPTER_NAMES}
  if not adapters:
    return params, {}
  base = {k: v for k, v in flat.items() if k[-1] not in ADAPTER_NAMES}
  return traverse_util.unflatten_dict(adapters), traverse_util.unflatten_dict(base)


def combine(trainable, frozen):
  """The inverse of :func:`split`."""
  if not frozen:
    return trainable
  flat = traverse_util.flatten_dict(frozen)
  flat.update(traverse_util.flatten_dict(trainable))
  return traverse_util.unflatten_dict(flat)


def merged(params, config: LoraConfig):
  """Plain model parameters: each adapted kernel becomes ``W + (α/r) A B`` (computed in
  float32, stored in the kernel's dtype), the adapters dropped. Identity without adapters."""
  flat = traverse_util.flatten_dict(params)
  modules = [k[:-1] for k in flat if k[-1] == ADAPTER_NAMES[0]]
  for module in modules:
    kernel = flat[(*module, "kernel")]
    a = flat.pop((*module, ADAPTER_NAMES[0]))  # [in, r]
    b = flat.pop((*module, ADAPTER_NAMES[1]))  # [r, out]
    delta = jnp.matmul(
      a.astype(jnp.float32), b.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
    )  # [in, out]
    flat[(*module, "kernel")] = (kernel.astype(jnp.float32) + config.scale * delta).astype(
      kernel.dtype
    )
  return traverse_util.unflatten_dict(flat) if modules else params


def count_parameters(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))


def describe(trainable: int, total: int) -> str:
  return f"trainable parameters: {trainable:,} of {total:,} ({100.0 * trainable / total:.2f}%)"


def target_names(targets: Sequence[str] | str) -> tuple[str, ...]:
  """``lora.targets`` from a config: a sequence, or one comma-separated string (the command
  line's ``--config.lora.targets=q_proj,v_proj``)."""
  if isinstance(targets, str):
    return tuple(t.strip() for t in targets.split(",") if t.strip())
  return tuple(targets)
