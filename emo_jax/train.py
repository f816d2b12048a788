"""Training: the only module that reads the config, binds the objective and runs the loop.

``train_and_evaluate(config, workdir)``: resume from the workdir if it holds a checkpoint,
else load the pretrained model named by ``model.pretrained`` (any
:func:`emo_jax.models.from_pretrained` source), else initialise ``model.family`` from scratch; then
train with the configured objective (after ``loss.mle_warmup_steps`` of MLE), evaluate
perplexity, keep periodic and best checkpoints, and finally export the best model to an HF
directory and print a few samples.

The state lives on a ``('data', 'fsdp')`` mesh (:mod:`emo_jax.sharding`); the step is one
``jit`` with explicit shardings and a donated state.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from emo_jax import (
  checkpointing,
  config_checks,
  fused_losses,
  losses,
  models,
  run_logging,
  sampling,
  sharding,
)
from emo_jax import cost_embeddings as cost_lib
from emo_jax import data as data_lib
from emo_jax.data import input_pipeline, instructions
from emo_jax.data import tokenizer as tokenizer_lib
from emo_jax.evaluation import token_metrics
from emo_jax.models import lora

# An objective maps (hidden [..., d], head [V, d], targets [...], weights [...], cost
# [V, d_c] | None) to (summed loss, per-token aux dict). Sums, not means: gradient
# accumulation divides by the token count of the whole batch, as one big batch would.
Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  # Every parameter; with LoRA the adapters too (``kernel_lora_a`` / ``_b``), and only they
  # are trained: the optimizer state covers :func:`lora.split`'s trainable part.
  params: Any
  opt_state: Any
  rng: jax.Array  # Raw key data; dropout keys are folded from it per step.
  # The `cost` collection, {"embeddings": [V, d_c]} or None ('adaptive'); it rides along
  # for checkpointing but the optimizer never sees it.
  cost: Any


# ----------------------------------------------------------------------------------------
# Objectives, bound once from the config.
# ----------------------------------------------------------------------------------------


def _naive_objective(per_token_loss, needs_cost, hidden, head, targets, weights, cost):
  """Reference path: materialise ``[..., V]`` logits and reduce a per-token loss."""
  logits = jnp.einsum(
    "...d,vd->...v", hidden, head.astype(hidden.dtype), preferred_element_type=jnp.float32
  )  # [B, T, V]
  per_token = (
    per_token_loss(logits, targets, cost) if needs_cost else per_token_loss(logits, targets)
  )
  aux = {"ce": losses.cross_entropy(logits, targets)}
  if needs_cost:
    aux["demd"] = losses.demd(logits, targets, cost)
  return jnp.sum(per_token * weights), jax.lax.stop_gradient(aux)


def _fused_objective(fused_loss, needs_cost, hidden, head, targets, weights, cost):
  if needs_cost:
    return fused_loss(hidden, head, targets, cost, weights=weights)
  return fused_loss(hidden, head, targets, weights=weights)


def make_objective(loss_config: ml_collections.ConfigDict, name: str | None = None) -> Objective:
  """The objective for ``loss_config`` (``name`` overrides ``loss.name``)."""
  name = name or loss_config.name
  if loss_config.fused:
    common = dict(chunk_size=loss_config.chunk_size, reduction="sum")
    bound = {
      "mle": functools.partial(fused_losses.fused_cross_entropy, **common),
      "emo": functools.partial(
        fused_losses.fused_emo,
        weighting=loss_config.weighting,
        max_weight=loss_config.max_weight,
        detach_target_prob=loss_config.detach_target_prob,
        **common,
      ),
      "mixce": functools.partial(
        fused_losses.fused_mixce, mixing_ratio=loss_config.mixing_ratio, **common
      ),
      "tailr": functools.partial(fused_losses.fused_tailr, gamma=loss_config.gamma, **common),
    }
    wrap = _fused_objective
  else:
    bound = {
      "mle": losses.cross_entropy,
      "emo": functools.partial(
        losses.emo,
        weighting=loss_config.weighting,
        max_weight=loss_config.max_weight,
        detach_target_prob=loss_config.detach_target_prob,
      ),
      "mixce": functools.partial(losses.mixce, mixing_ratio=loss_config.mixing_ratio),
      "tailr": functools.partial(losses.tailr, gamma=loss_config.gamma),
    }
    wrap = _naive_objective
  if name not in bound:
    raise ValueError(f"loss.name must be one of {sorted(bound)}, got {name!r}.")
  return functools.partial(wrap, bound[name], name == "emo")


# ----------------------------------------------------------------------------------------
# Optimizer.
# ----------------------------------------------------------------------------------------


def make_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  warmup = optax.linear_schedule(0.0, optim.learning_rate, max(optim.warmup_steps, 1))
  decay_steps = max(total_steps - optim.warmup_steps, 1)
  decays = {
    "constant": optax.constant_schedule(optim.learning_rate),
    "linear": optax.linear_schedule(optim.learning_rate, 0.0, decay_steps),
    "cosine": optax.cosine_decay_schedule(optim.learning_rate, decay_steps),
  }
  if optim.schedule not in decays:
    raise ValueError(f"optim.schedule must be one of {sorted(decays)}, got {optim.schedule!r}.")
  return optax.join_schedules([warmup, decays[optim.schedule]], [optim.warmup_steps])


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int):
  schedule = make_schedule(optim, total_steps)
  # Decay matrices only: biases and LayerNorm parameters are vectors.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  chain = []
  if optim.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(optim.grad_clip_norm))
  chain.append(
    optax.adamw(
      schedule,
      b1=optim.b1,
      b2=optim.b2,
      eps=optim.eps,
      weight_decay=optim.weight_decay,
      mask=decay_mask,
    )
  )
  return optax.chain(*chain), schedule


# ----------------------------------------------------------------------------------------
# Steps.
# ----------------------------------------------------------------------------------------


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  model,
  optimizer,
  objective: Objective,
  skip_nonfinite: bool,
  use_dropout: bool,
):
  """One optimizer step over ``batch`` arrays ``[accum, micro_batch, length]``.

  The micro-batches' summed losses and gradients are added up and divided by the total
  token weight, which makes accumulation exactly one big batch. Only the trainable part of
  the parameters (:func:`lora.split`: the adapters under LoRA, else everything) gets a
  gradient and an update; the frozen part is carried over untouched.
  """
  step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  cost = None if state.cost is None else state.cost["embeddings"]
  trainable, frozen = lora.split(state.params)

  def micro_loss(trainable, micro, rng):
    hidden, head = models.hidden_states_and_head(
      model,
      lora.combine(trainable, frozen),
      micro["inputs"],
      micro.get("attention_mask"),
      micro.get("positions"),
      dropout_rng=rng if use_dropout else None,
    )
    return objective(
      hidden, head, micro["targets"], micro["weights"], cost_lib.cost_or_head(cost, head)
    )

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def accumulate(carry, micro_and_index):
    micro, index = micro_and_index
    grads_sum, loss_sum, ce_sum, demd_sum = carry
    (loss, aux), grads = grad_fn(trainable, micro, jax.random.fold_in(step_rng, index))
    weights = micro["weights"]
    return (
      jax.tree.map(jnp.add, grads_sum, grads),
      loss_sum + loss,
      ce_sum + jnp.sum(aux["ce"] * weights),
      demd_sum + jnp.sum(aux.get("demd", jnp.zeros_like(weights)) * weights),
    ), None

  zeros = jax.tree.map(jnp.zeros_like, trainable)
  num_micro = batch["inputs"].shape[0]
  (grads, loss_sum, ce_sum, demd_sum), _ = jax.lax.scan(
    accumulate, (zeros, 0.0, 0.0, 0.0), (batch, jnp.arange(num_micro))
  )
  token_count = jnp.maximum(jnp.sum(batch["weights"]), 1.0)
  grads = jax.tree.map(lambda g: g / token_count, grads)
  loss = loss_sum / token_count

  updates, new_opt_state = optimizer.update(grads, state.opt_state, trainable)
  new_trainable = optax.apply_updates(trainable, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
  if skip_nonfinite:  # Keep the old parameters and moments when the step is not finite.
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_trainable = keep(new_trainable, trainable)
    new_opt_state = keep(new_opt_state, state.opt_state)
  new_state = state.replace(
    step=state.step + 1,
    params=lora.combine(new_trainable, frozen),
    opt_state=new_opt_state,
  )
  metrics = {
    "loss": loss,
    "ce": ce_sum / token_count,
    "demd": demd_sum / token_count,
    "grad_norm": optax.tree.norm(grads),
    "finite": finite,
    "tokens": token_count,
  }
  return new_state, metrics


# ----------------------------------------------------------------------------------------
# Setup.
# ----------------------------------------------------------------------------------------


def create_train_state(model, optimizer, mesh, rng, seq_len, use_cost_placeholder, cost_dim):
  """The initial state, created already sharded (``eval_shape`` -> specs -> ``jit``).

  ``model`` is the one that trains (:func:`lora.adapt`'s, whose ``init`` adds adapters).
  """

  def init_fn(rng):
    params_rng, state_rng = jax.random.split(rng)
    params = model.init(params_rng, jnp.zeros((1, seq_len), jnp.int32))["params"]
    cost = None
    if use_cost_placeholder:
      # Filled when MLE warm-up ends (from-scratch 'frozen_head') or by the loaded model.
      cost = {
        "embeddings": nn.Partitioned(
          jnp.zeros((model.vocab_size, cost_dim), jnp.float32), ("vocab", "embed")
        )
      }
    return TrainState(
      step=jnp.array(0, jnp.int32),
      params=params,
      opt_state=optimizer.init(lora.split(params)[0]),
      rng=jax.random.key_data(state_rng),
      cost=cost,
    )

  state, state_shardings = sharding.create_sharded(init_fn, mesh, rng)
  return nn.meta.unbox(state), nn.meta.unbox(state_shardings)


@dataclasses.dataclass
class _Data:
  train: input_pipeline.TrainIterator
  eval_blocks: input_pipeline.Rows
  tokenizer: Any

  @property
  def batch_keys(self) -> tuple[str, ...]:
    """Arrays of a batch: inputs, targets, weights (+ segment ids and positions for packed
    instruction rows)."""
    return tuple(input_pipeline.take_rows(self.eval_blocks, np.arange(1)))


def load_data(config, model, tokenizer) -> _Data:
  """Packed LM blocks, or, for an instruction corpus (:mod:`emo_jax.data.instructions`),
  prompt-masked rows of prompt + response + EOS."""
  tokenizer.check_model_vocab(model.vocab_size)
  if config.data.block_size > model.max_length:
    raise config_checks.invalid(
      "data.block_size",
      config.data.block_size,
      f"at most the model's max_length ({model.max_length})",
    )
  blocks = {}
  for split in (config.data.train_split, config.data.eval_split):
    name = f"{config.data.corpus}/{split}"
    if config.data.corpus in instructions.CORPORA:
      records = instructions.read_split(config.data, split)
      blocks[split] = instructions.tokenize_and_pack(
        records, tokenizer, config.data.prompt_template, config.data.block_size, name=name
      )
      continue
    documents = data_lib.read_split(config.data, split)
    blocks[split] = input_pipeline.tokenize_and_pack(
      documents, tokenizer, config.data.block_size, name=name
    )
  eval_blocks = blocks[config.data.eval_split]
  if config.data.max_eval_blocks:
    eval_blocks = input_pipeline.first_rows(eval_blocks, config.data.max_eval_blocks)
  train_rows = blocks[config.data.train_split]
  if config.data.max_train_tokens:
    train_rows = input_pipeline.nested_subset(
      train_rows,
      config.data.max_train_tokens,
      config.data.train_subset_seed,
      name=f"{config.data.corpus}/{config.data.train_split}",
    )
  train = input_pipeline.TrainIterator(
    train_rows,
    config.train.batch_size,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  return _Data(train=train, eval_blocks=eval_blocks, tokenizer=tokenizer)


def _to_micro_batches(batch: dict[str, np.ndarray], accum: int) -> dict[str, np.ndarray]:
  return {k: v.reshape(accum, v.shape[0] // accum, *v.shape[1:]) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------


# What ``main.py`` exits with after SIGTERM saved a checkpoint: the shell's "terminated by
# SIGTERM" status, so a scheduler or a driver script (experiments/study.py) sees an unfinished
# run, not a finished one, and a rerun resumes it.
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM
# In the workdir: ``{"step", "eval/perplexity"}`` of the best checkpoint (a copy of what
# best/<step>/metrics holds).
BEST_METRIC_FILE = "best_metric.json"
# In the workdir with train.compare_with_base: the untouched model's validation perplexity
# and samples, recorded before the first step.
BASE_FILE = "base.json"


class _Preemption:
  """SIGTERM: save the current step and exit -- at the same step on every process.

  One process: a handler sets a flag that :meth:`reached` returns after each step. Several
  processes: SIGTERM may reach them at different steps, or only some of them, and saving a
  checkpoint is collective, so a process that stopped alone would wait in the save forever.
  ``jax.distributed.initialize`` installs JAX's preemption sync manager, which takes SIGTERM,
  tells every process, and names the first step all of them can still reach; no Python
  handler is installed then (it would take the signal from the manager).
  """

  def __init__(self):
    self._requested = False
    self._multi_process = jax.process_count() > 1
    if not self._multi_process:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._requested = True

  def reached(self, step: int) -> bool:
    """Whether to save ``step`` and stop; call once after every step (the sync manager
    counts on it)."""
    if self._multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested

  def restore(self):
    if not self._multi_process:
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) training in ``workdir``; returns the final metrics."""
  config_checks.check_config(config)  # Before anything is read, built or compiled.
  if config.distributed.enabled:
    sharding.initialize_distributed(
      config.distributed.coordinator_address,
      config.distributed.num_processes,
      config.distributed.process_id,
    )
  config_checks.check_batch_layout(config.train, jax.device_count(), jax.process_count())
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  tokenizer = tokenizer_lib.resolve_tokenizer(config.data.tokenizer, config.model.pretrained)
  checkpointer = checkpointing.Checkpointer(workdir, keep=config.train.keep_checkpoints)
  resuming = checkpointer.latest_step() is not None
  # A resumed run reads its weights from the checkpoint: only the architecture is loaded.
  model, pretrained_params = models.from_model_config(
    config.model, vocab_size=tokenizer.vocab_size, load_weights=not resuming
  )
  data = load_data(config, model, tokenizer)
  total_steps = (
    config.train.num_epochs * data.train.batches_per_epoch
    if config.train.num_epochs
    else config.train.num_steps
  )
  config_checks.check_warmup(config.optim.warmup_steps, total_steps)
  optimizer, schedule = make_optimizer(config.optim, total_steps)

  lora_config = lora_config_of(config)
  # The model that trains: with adapters under LoRA. Evaluation, sampling, the best checkpoint
  # and the export use the plain `model` with merged parameters (`plain_params`).
  train_model = lora.adapt(model, lora_config)
  plain_params = functools.partial(lora.merged, config=lora_config)
  frozen = config.loss.cost_source == cost_lib.FROZEN_HEAD
  state, state_shardings = create_train_state(
    train_model,
    optimizer,
    mesh,
    jax.random.key(config.seed),
    config.data.block_size,
    use_cost_placeholder=frozen,
    cost_dim=model.hidden_size,
  )

  # The frozen cost: the pretrained head at step 0 (the paper's recipe) or, from scratch, the
  # head as MLE warm-up leaves it.
  snapshot_cost = jax.jit(
    lambda params: cost_lib.make_cost_collection(model, plain_params(params), cost_lib.FROZEN_HEAD)[
      cost_lib.COLLECTION
    ],
    out_shardings=state_shardings.cost,
  )
  warmup_steps = config.loss.mle_warmup_steps
  # (The collection exists for every objective, so a workdir can resume under another one,
  # but only EMO reads it: MLE/MixCE/TaiLr runs skip the snapshot.)
  from_scratch = not config.model.pretrained
  snapshot_step = warmup_steps if frozen and from_scratch and config.loss.name == "emo" else None
  if resuming:
    state, data_state = checkpointer.restore(checkpointing.abstract_like(state))
    data.train.set_state(data_state["train"])
    logging.info("resumed from %s (step %d)", checkpointer.describe_latest(), int(state.step))
  elif pretrained_params is not None:
    # The pretrained weights, and the freshly initialised adapters if any.
    adapters = lora.split(state.params)[0] if lora_config.enabled else {}
    params = lora.combine(adapters, pretrained_params)
    params = jax.device_put(params, state_shardings.params)
    state = state.replace(params=params, cost=snapshot_cost(params) if frozen else state.cost)
    del pretrained_params
    logging.info("loaded pretrained weights from %s", config.model.pretrained)

  lora.check_targets(state.params, lora_config)
  trainable_parameters = lora.count_parameters(lora.split(state.params)[0])
  total_parameters = lora.count_parameters(jax.eval_shape(plain_params, state.params))
  logging.info("%s", lora.describe(trainable_parameters, total_parameters))
  if is_main:
    print(lora.describe(trainable_parameters, total_parameters), flush=True)

  main_objective = make_objective(config.loss)
  warmup_objective = make_objective(config.loss, name="mle")
  micro_batch_sharding = sharding.batch_sharding(mesh, ndim=3, batch_axis=1)
  batch_shardings = {k: micro_batch_sharding for k in data.batch_keys}

  def compile_step(objective):
    step = functools.partial(
      train_step,
      model=train_model,
      optimizer=optimizer,
      objective=objective,
      skip_nonfinite=config.train.nan_policy == "skip",
      use_dropout=config.model.dropout > 0 or lora_config.dropout > 0,
    )
    return jax.jit(
      step,
      in_shardings=(state_shardings, batch_shardings),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=(0,),
    )

  steps = {"warmup": compile_step(warmup_objective), "main": compile_step(main_objective)}
  # Adapters are merged once per evaluation (and that copy is what a best save writes),
  # not inside every evaluation batch. Without adapters the parameters are used as they are
  # (a jitted identity would copy all of them at every evaluation).
  plain_shardings = lora.split(state_shardings.params)[1] or state_shardings.params
  merge = (
    jax.jit(plain_params, out_shardings=plain_shardings) if lora_config.enabled else plain_params
  )
  eval_fn = jax.jit(
    functools.partial(token_metrics.eval_step, model=model),
    in_shardings=(plain_shardings, sharding.batch_sharding(mesh, 2)),
  )

  logger = run_logging.RunLogger(
    workdir, total_steps, enabled=is_main, tensorboard=config.train.tensorboard
  )
  preemption = _Preemption()
  # Every process tracks the best score, so all of them join the best saves. It is read back
  # from the best checkpoint itself (best_metric.json only mirrors it, for people and tools).
  best_metrics = checkpointer.best_metrics()
  best = best_metrics["eval/perplexity"] if best_metrics else float("inf")
  step = int(state.step)
  if config.train.compare_with_base and not resuming:
    # The untouched model's numbers, so the end of the run can show what training changed.
    base_params = merge(state.params)
    base = {
      "eval/perplexity": token_metrics.perplexity(
        eval_fn, base_params, data.eval_blocks, config.train.batch_size, mesh
      )
    }
    logger.write(0, {"eval/perplexity": base["eval/perplexity"]})
    if config.train.num_samples and is_main:
      base["samples"] = _samples(model, base_params, data, config)
    del base_params
    if is_main:
      checkpointing.write_json_atomically(os.path.join(workdir, BASE_FILE), base)
  last_time, last_step, last_logged = time.time(), step, {}
  try:
    while step < total_steps:
      if step == snapshot_step:
        # End of MLE warm-up: the head becomes the frozen cost embeddings.
        state = state.replace(cost=snapshot_cost(state.params))
        logging.info("step %d: cost embeddings snapshotted from the LM head", step)
      phase = "warmup" if step < warmup_steps else "main"
      batch = _to_micro_batches(next(data.train), config.train.grad_accum_steps)
      state, metrics = steps[phase](state, sharding.global_batch(mesh, batch, batch_axis=1))
      step += 1
      metrics = jax.device_get(metrics)
      preempted = preemption.reached(step)
      if not metrics["finite"]:
        if config.train.nan_policy == "stop":
          raise FloatingPointError(
            f"non-finite loss ({metrics['loss']}) at step {step}; the last good checkpoint "
            f"is {checkpointer.describe_latest()}. Set train.nan_policy='skip' to drop such "
            "steps instead."
          )
        last_logged["skipped"] = last_logged.get("skipped", 0) + 1
      if step % config.train.log_every == 0 or step == total_steps:
        elapsed = time.time() - last_time
        tokens_per_second = float(metrics["tokens"]) * (step - last_step) / max(elapsed, 1e-9)
        scalars = {
          "train/loss": metrics["loss"],
          "train/ce": metrics["ce"],
          "train/grad_norm": metrics["grad_norm"],
          "train/learning_rate": schedule(step - 1),
          "train/tokens_per_second": tokens_per_second,
          "train/step_seconds": elapsed / max(step - last_step, 1),
          "train/skipped_steps": last_logged.get("skipped", 0),
        }
        if phase == "main" and config.loss.name == "emo":
          scalars["train/demd"] = metrics["demd"]
        logger.write(step, scalars)
        logger.progress(step, float(metrics["loss"]), tokens_per_second)
        last_time, last_step = time.time(), step
      paused_at = time.time()  # Evaluation and saving do not count as step time.
      if step % config.train.eval_every == 0 or step == total_steps:
        params = merge(state.params)
        perplexity = token_metrics.perplexity(
          eval_fn, params, data.eval_blocks, config.train.batch_size, mesh
        )
        logger.write(step, {"eval/perplexity": perplexity})
        if perplexity < best:
          best = perplexity
          best_metrics = {"step": step, "eval/perplexity": perplexity}
          checkpointer.save_best(step, params, best_metrics)
          if is_main:
            checkpointing.write_json_atomically(
              os.path.join(workdir, BEST_METRIC_FILE), best_metrics
            )
      if step % config.train.save_every == 0 or step == total_steps or preempted:
        checkpointer.save(step, state, {"train": data.train.get_state()})
      last_time += time.time() - paused_at
      if preempted:
        logging.warning(
          "SIGTERM: saved step %d to %s; exiting.", step, checkpointer.describe_latest()
        )
        checkpointer.close()
        return {"step": step, "preempted": True}
  finally:
    preemption.restore()
    logger.close()

  results = {
    "step": step,
    "best_eval_perplexity": best,
    "trainable_parameters": trainable_parameters,
    "total_parameters": total_parameters,
  }
  # The best checkpoint holds plain (merged) parameters: what evaluation and export read.
  plain_abstract = jax.tree.map(
    lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
    jax.eval_shape(plain_params, state.params),
    plain_shardings,
  )
  best_params = checkpointer.restore_best_params(plain_abstract)
  if config.train.export_hf and is_main:
    export_dir = os.path.join(workdir, "hf_export")
    models.save_pretrained(model, best_params, export_dir)
    data.tokenizer.save(export_dir)
    results["hf_export"] = export_dir
  base_path = os.path.join(workdir, BASE_FILE)
  if is_main and os.path.exists(base_path):
    with open(base_path) as f:
      results["base"] = json.load(f)
  if config.train.num_samples and is_main:
    results["samples"] = _samples(model, best_params, data, config)
    _print_samples(results["samples"], results.get("base", {}).get("samples"))
  if is_main and "base" in results:
    print(
      f"\nvalidation perplexity: base {results['base']['eval/perplexity']:.2f} -> "
      f"fine-tuned {best:.2f} (best checkpoint)"
    )
  if is_main:
    results["curves"] = run_logging.plot_curves(workdir)
    checkpointing.write_json_atomically(os.path.join(workdir, "results.json"), results)
  checkpointer.close()
  return results


def lora_config_of(config: ml_collections.ConfigDict) -> lora.LoraConfig:
  return lora.LoraConfig(
    rank=config.lora.rank,
    alpha=config.lora.alpha,
    dropout=config.lora.dropout,
    targets=lora.target_names(config.lora.targets),
  )


def _sample_prompts(data: _Data, count: int, prefix: int = 16):
  """``count`` (prompt, human continuation) token lists from the validation data: the first
  ``prefix`` tokens of LM blocks and what follows; for instruction rows, the first example's
  prompt and its reference response."""
  if not isinstance(data.eval_blocks, dict):
    rows = data.eval_blocks[:count]
    return [
      ([int(t) for t in row[:prefix] if t >= 0], [int(t) for t in row[prefix:] if t >= 0])
      for row in rows
    ]
  rows = input_pipeline.first_rows(data.eval_blocks, count)
  pairs = []
  for inputs, targets, weights, segments in zip(
    rows["inputs"], rows["targets"], rows["weights"], rows["attention_mask"]
  ):
    first = segments == 1
    response_start = int(np.argmax(weights[first] > 0))  # Target index of the 1st response token.
    prompt = inputs[first][: response_start + 1]
    response = targets[first][response_start:]
    pairs.append(([int(t) for t in prompt], [int(t) for t in response]))
  return pairs


def _samples(model, params, data: _Data, config) -> list[dict[str, str]]:
  """Unbiased (ancestral) continuations of validation prompts, next to the truth."""
  pairs = _sample_prompts(data, config.train.num_samples)
  prompts = [prompt for prompt, _ in pairs]
  ids, mask = sampling.left_pad(prompts, data.tokenizer.pad_id)
  tokens = sampling.sample(
    model, params, ids, mask, jax.random.key(config.seed), max_new_tokens=config.train.sample_tokens
  )
  samples = []
  for (prompt, truth), continuation in zip(pairs, np.asarray(tokens)):
    samples.append(
      {
        "prompt": data.tokenizer.decode(prompt),
        "model": data.tokenizer.decode(continuation.tolist()),
        "human": data.tokenizer.decode(truth[: config.train.sample_tokens]),
      }
    )
  return samples


def _print_samples(
  samples: list[dict[str, str]], base_samples: list[dict[str, str]] | None = None
) -> None:
  """Each prompt with the trained model's continuation (and the base's, when recorded)."""
  for i, sample in enumerate(samples):
    lines = [f"\n--- prompt: {sample['prompt']!r}"]
    if base_samples and i < len(base_samples):
      lines.append(f"    base:   {base_samples[i]['model']!r}")
    lines += [f"    model:  {sample['model']!r}", f"    human:  {sample['human']!r}"]
    print("\n".join(lines))
