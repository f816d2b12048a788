"""Every config value checked once, before data, a model or a mesh are built.

:data:`RULES` gives each field of ``configs/default.py`` the values it accepts; a field
without a rule is an error too (in a variant config file it is most likely a typo that would
otherwise be ignored). :func:`check_config` raises one ``ValueError`` naming the field, its
value and what it must be::

    config value train.batch_size=0 is invalid: it must be an integer >= 1.

Checks that need more than the config (the device count, the number of training blocks, the
model's maximum length) live next to the code that knows those numbers and use the same
wording through :func:`invalid`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import ml_collections

from emo_jax import cost_embeddings, models


@dataclasses.dataclass(frozen=True)
class Rule:
  accepts: Callable[[Any], bool]
  requirement: str  # Completes "it must be ...".


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int) -> Rule:
  return Rule(lambda v: _is_int(v) and v >= minimum, f"an integer >= {minimum}")


def number(
  low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False
) -> Rule:
  """A finite number in the interval; ``*_open`` excludes that end."""

  def accepts(v):
    return (
      _is_number(v)
      and (v > low if low_open else v >= low)
      and (v < high if high_open else v <= high)
    )

  left, right = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
  high_text = "inf" if high == math.inf else f"{high:g}"
  return Rule(accepts, f"a number in {left}{low:g}, {high_text}{right}")


def one_of(*choices: str) -> Rule:
  return Rule(lambda v: v in choices, "one of " + ", ".join(repr(c) for c in choices))


def optional(rule: Rule) -> Rule:
  return Rule(lambda v: v is None or rule.accepts(v), f"None or {rule.requirement}")


BOOLEAN = Rule(lambda v: isinstance(v, bool), "True or False")
TEXT = Rule(lambda v: isinstance(v, str), "a string")
NAME = Rule(lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string")

# The values the trainer's switches accept (train.make_objective / make_schedule and the
# model loader raise on others too; these let a run fail before any work).
LOSS_NAMES = ("mle", "emo", "mixce", "tailr")
SCHEDULES = ("constant", "linear", "cosine")
DTYPES = ("float32", "bfloat16", "float16")

RULES: dict[str, Rule] = {
  "seed": integer(0),
  # Model.
  "model.pretrained": TEXT,
  "model.family": one_of(*sorted(models.FAMILIES)),
  "model.preset": NAME,
  "model.max_length": integer(2),
  "model.dropout": number(0, 1, high_open=True),
  "model.dtype": one_of(*DTYPES),
  "model.param_dtype": one_of(*DTYPES),
  "model.remat": BOOLEAN,
  # Data.
  "data.corpus": NAME,
  "data.source": one_of("files", "tfds"),
  "data.tfds_dir": TEXT,
  "data.text_field": NAME,
  "data.train_split": NAME,
  "data.eval_split": NAME,
  "data.manual_dir": TEXT,
  "data.tokenizer": TEXT,
  "data.block_size": integer(2),  # An input and a target at least.
  "data.max_eval_blocks": integer(0),
  "data.max_train_tokens": integer(0),
  "data.train_subset_seed": integer(0),
  "data.prompt_template": one_of("chat", "alpaca"),
  # Objective.
  "loss.name": one_of(*LOSS_NAMES),
  "loss.weighting": one_of("mle", "demd"),
  "loss.max_weight": optional(number(0, low_open=True)),
  "loss.detach_target_prob": BOOLEAN,
  "loss.mixing_ratio": number(0, 1),
  "loss.gamma": number(0, 1),
  "loss.cost_source": one_of(cost_embeddings.FROZEN_HEAD, cost_embeddings.ADAPTIVE),
  "loss.mle_warmup_steps": integer(0),
  "loss.fused": BOOLEAN,
  "loss.chunk_size": optional(integer(1)),
  # LoRA.
  "lora.rank": integer(0),
  "lora.alpha": number(0, low_open=True),
  "lora.dropout": number(0, 1, high_open=True),
  "lora.targets": Rule(
    lambda v: isinstance(v, str) and (not v or all(t.strip() for t in v.split(","))),
    "a comma-separated list of dense-layer names ('q_proj,v_proj')",
  ),
  # Optimizer.
  "optim.learning_rate": number(0, low_open=True),
  "optim.schedule": one_of(*SCHEDULES),
  "optim.warmup_steps": integer(0),
  "optim.weight_decay": number(0),
  "optim.b1": number(0, 1, high_open=True),
  "optim.b2": number(0, 1, high_open=True),
  "optim.eps": number(0, low_open=True),
  "optim.grad_clip_norm": number(0),  # 0 disables clipping.
  # Training loop.
  "train.batch_size": integer(1),
  "train.grad_accum_steps": integer(1),
  "train.num_steps": integer(0),
  "train.num_epochs": integer(0),
  "train.log_every": integer(1),
  "train.eval_every": integer(1),
  "train.save_every": integer(1),
  "train.keep_checkpoints": integer(1),
  "train.nan_policy": one_of("stop", "skip"),
  "train.export_hf": BOOLEAN,
  "train.num_samples": integer(0),
  "train.sample_tokens": integer(1),
  "train.compare_with_base": BOOLEAN,
  "train.tensorboard": BOOLEAN,
  # Evaluation.
  "eval.model": TEXT,
  "eval.split": NAME,
  "eval.max_blocks": integer(0),
  "eval.cost_model": TEXT,
  "eval.num_prompts": integer(0),
  "eval.prefix_words": optional(integer(1)),
  "eval.continuation_words": optional(integer(1)),
  "eval.max_new_tokens": integer(1),
  "eval.batch_size": integer(1),
  "eval.temperature": number(0, low_open=True),
  "eval.top_k": integer(0),
  "eval.top_p": number(0, 1, low_open=True),
  "eval.typical_p": number(0, 1, low_open=True),
  "eval.greedy": BOOLEAN,
  "eval.featurizer": NAME,
  "eval.mauve_runs": integer(1),
  "eval.mauve_scaling": number(0, low_open=True),
  "eval.text_metrics": BOOLEAN,
  "eval.reference_model": TEXT,
  "eval.num_examples": integer(0),
  # Devices.
  "mesh.data": Rule(
    lambda v: _is_int(v) and (v == -1 or v >= 1), "-1 (the devices fsdp leaves) or an integer >= 1"
  ),
  "mesh.fsdp": integer(1),
  "distributed.enabled": BOOLEAN,
  "distributed.coordinator_address": optional(NAME),
  "distributed.num_processes": optional(integer(1)),
  "distributed.process_id": optional(integer(0)),
}


def invalid(field: str, value: Any, requirement: str) -> ValueError:
  """The error for ``field=value``; ``requirement`` completes "it must be ..."."""
  return ValueError(f"config value {field}={value!r} is invalid: it must be {requirement}.")


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  """``{"section.field": value}`` for every leaf of ``config``."""
  out = {}
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      out.update(leaves(value, prefix=path + "."))
    else:
      out[path] = value
  return out


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ``ValueError`` for the first field whose value is out of range, for a field
  emo_jax does not know, and for combinations of fields that cannot work."""
  values = leaves(config)
  for field, value in values.items():
    if field not in RULES:
      raise ValueError(
        f"config field {field} is not one emo_jax reads (a typo in the config "
        f"file?); known fields: {', '.join(sorted(RULES))}."
      )
    if not RULES[field].accepts(value):
      raise invalid(field, value, RULES[field].requirement)
  for field in RULES:
    if field not in values:
      raise ValueError(
        f"config field {field} is missing; start config files from "
        "configs/default.py (import it and change fields)."
      )
  _check_combinations(config)


def _check_combinations(config: ml_collections.ConfigDict) -> None:
  train, optim, loss = config.train, config.optim, config.loss
  if not train.num_epochs:
    if train.num_steps < 1:
      raise invalid(
        "train.num_steps", train.num_steps, "an integer >= 1 when train.num_epochs is 0"
      )
    check_warmup(optim.warmup_steps, train.num_steps)
    if loss.name != "mle" and loss.mle_warmup_steps >= train.num_steps:
      raise invalid(
        "loss.mle_warmup_steps",
        loss.mle_warmup_steps,
        f"below train.num_steps ({train.num_steps}), or the run never uses loss.name={loss.name!r}",
      )
  if config.lora.rank and not config.lora.targets.strip():
    raise invalid(
      "lora.targets", config.lora.targets, "at least one dense-layer name when lora.rank > 0"
    )
  if train.batch_size % train.grad_accum_steps:
    raise invalid(
      "train.batch_size",
      train.batch_size,
      f"a multiple of train.grad_accum_steps ({train.grad_accum_steps})",
    )
  if not config.model.pretrained and config.data.block_size > config.model.max_length:
    raise invalid(
      "data.block_size",
      config.data.block_size,
      f"at most model.max_length ({config.model.max_length})",
    )
  if (
    loss.name == "emo"
    and loss.cost_source == cost_embeddings.FROZEN_HEAD
    and not config.model.pretrained
    and loss.mle_warmup_steps < 1
  ):
    raise invalid(
      "loss.mle_warmup_steps",
      loss.mle_warmup_steps,
      ">= 1 for EMO from scratch with cost_source='frozen_head' (the cost "
      "embeddings are the head as MLE warm-up leaves it; or use 'adaptive', or a "
      "pretrained model)",
    )
  if (
    config.distributed.enabled
    and config.distributed.process_id is not None
    and (
      config.distributed.num_processes is not None
      and config.distributed.process_id >= config.distributed.num_processes
    )
  ):
    raise invalid(
      "distributed.process_id",
      config.distributed.process_id,
      f"below distributed.num_processes ({config.distributed.num_processes})",
    )


def check_warmup(warmup_steps: int, total_steps: int) -> None:
  if warmup_steps > total_steps:
    raise invalid(
      "optim.warmup_steps", warmup_steps, f"at most the run's total steps ({total_steps})"
    )


def check_batch_layout(
  train_config: ml_collections.ConfigDict, device_count: int, process_count: int
) -> None:
  """The global batch splits into ``grad_accum_steps`` micro-batches, each spread evenly
  over the devices of all processes."""
  batch, accum = train_config.batch_size, train_config.grad_accum_steps
  if batch % (process_count * accum) or (batch // accum) % device_count:
    raise invalid(
      "train.batch_size",
      batch,
      f"a multiple of grad_accum_steps ({accum}) x the device count "
      f"({device_count}) across {process_count} process(es), so that every "
      "micro-batch splits evenly over the devices",
    )
