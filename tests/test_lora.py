"""LoRA (emo_jax.models.lora over qwix): the adapted model starts as the base, merging is
exact, only adapters train, and a LoRA instruction run resumes exactly and exports a plain
model."""

import functools
import json
import os
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_instructions import objective_config

from emo_jax import models, sharding, train
from emo_jax.models import lora

from test_train import REPO, interrupt_at_step, losses_by_step, run_main

TARGETS = {"llama": ("q_proj", "v_proj", "down_proj"), "gpt2": ("c_attn", "mlp/c_proj")}


def adapted(family, rank=4, dropout=0.0, seed=0):
  """A tiny model, the LoRA config, and parameters: base weights + fresh adapters."""
  model = models.from_config(family, "tiny", vocab_size=61, max_length=32)
  config = lora.LoraConfig(rank=rank, alpha=2.0 * rank, dropout=dropout, targets=TARGETS[family])
  params = lora.adapt(model, config).init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))
  return model, config, nn.meta.unbox(params["params"])


def random_b(params, seed=1):
  """Adapters whose B is no longer zero (as after training)."""
  key = jax.random.key(seed)
  return jax.tree_util.tree_map_with_path(
    lambda path, x: (
      jax.random.normal(jax.random.fold_in(key, x.size), x.shape) * 0.1
      if path[-1].key == "kernel_lora_b"
      else x
    ),
    params,
  )


IDS = jnp.asarray(np.random.default_rng(0).integers(0, 61, (2, 12)), jnp.int32)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_zero_initialised_b_gives_exactly_the_base_models_logits(family):
  model, config, params = adapted(family)
  adapters, base = lora.split(params)
  assert lora.check_targets(params, config)  # Every target adapted something.
  assert set(jax.tree.leaves(jax.tree.map(lambda x: float(jnp.abs(x).max()), adapters))) != {0.0}
  got = lora.adapt(model, config).apply({"params": params}, IDS)
  np.testing.assert_array_equal(got, model.apply({"params": base}, IDS))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_merged_equals_unmerged(family):
  model, config, params = adapted(family)
  params = random_b(params)
  adapted_model = lora.adapt(model, config)
  unmerged = adapted_model.apply({"params": params}, IDS)
  merged = model.apply({"params": lora.merged(params, config)}, IDS)
  base = model.apply({"params": lora.split(params)[1]}, IDS)
  assert float(jnp.abs(unmerged - base).max()) > 1e-2  # The adapters do something ...
  np.testing.assert_allclose(merged, unmerged, atol=2e-5, rtol=2e-5)  # ... merged or not.
  # The trainer's path (hidden states and head, one apply) is intercepted too.
  hidden, head = models.hidden_states_and_head(adapted_model, params, IDS)
  np.testing.assert_allclose(models.causal_lm.head_logits(hidden, head), unmerged, atol=1e-5)


def test_a_target_that_adapts_nothing_is_named():
  _, _, params = adapted("llama")
  config = lora.LoraConfig(rank=4, targets=("q_proj", "qproj"))
  with pytest.raises(ValueError, match=r"names 'qproj', which matches no dense layer.*'q_proj'"):
    lora.check_targets(params, config)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_only_adapters_train_and_the_optimizer_state_holds_only_them(family):
  model, config, _ = adapted(family, dropout=0.1)
  train_model = lora.adapt(model, config)
  optimizer = optax.adamw(1e-2, weight_decay=0.1)
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  state, _ = train.create_train_state(
    train_model, optimizer, mesh, jax.random.key(0), 8, use_cost_placeholder=False, cost_dim=1
  )
  loss_config = objective_config("emo")
  step = jax.jit(
    functools.partial(
      train.train_step,
      model=train_model,
      optimizer=optimizer,
      objective=train.make_objective(loss_config),
      skip_nonfinite=False,
      use_dropout=True,
    )
  )
  tokens = np.random.default_rng(0).integers(0, 61, (1, 4, 9)).astype(np.int32)
  batch = {
    "inputs": tokens[..., :-1],
    "targets": tokens[..., 1:],
    "weights": np.ones((1, 4, 8), np.float32),
  }
  adapters, base = jax.device_get(lora.split(state.params))
  new_state = state
  for _ in range(3):
    new_state, _ = step(new_state, batch)
  new_adapters, new_base = jax.device_get(lora.split(new_state.params))
  jax.tree.map(np.testing.assert_array_equal, new_base, base)  # Bit-identical.
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), new_adapters, adapters)
  assert all(jax.tree.leaves(changed))
  # Adam's two moments of the adapters and nothing of the base.
  adapter_size = lora.count_parameters(adapters)
  moments = [x for x in jax.tree.leaves(new_state.opt_state) if x.ndim > 0]
  assert sum(x.size for x in moments) == 2 * adapter_size
  assert adapter_size < 0.1 * lora.count_parameters(base)


# A LoRA instruction run end to end: a tiny random LLaMA with SmolLM2's tokenizer (its chat
# template) on the Alpaca sample, EMO adaptive with LoRA on every attention projection.
INSTRUCT_CONFIG = os.path.join(REPO, "configs", "smollm2_instruct.py") + ":smoke"
TINY_LLAMA = (
  "--config.model.pretrained=",
  "--config.model.family=llama",
  "--config.model.preset=tiny",
  "--config.model.max_length=256",
  "--config.data.tokenizer=smollm2-135m",
  "--config.train.compare_with_base=False",
  "--config.train.save_every=2",
)


@pytest.mark.slow
def test_a_lora_instruction_run_resumes_exactly_and_exports_a_plain_model(tmp_path):
  reference, resumed = tmp_path / "reference", tmp_path / "resumed"
  result = run_main(reference, *TINY_LLAMA, config=INSTRUCT_CONFIG)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "trainable parameters: " in result.stdout
  code, output = interrupt_at_step(resumed, signal.SIGTERM, 5, TINY_LLAMA, config=INSTRUCT_CONFIG)
  assert code == train.PREEMPTED_EXIT_CODE, output[-3000:]
  result = run_main(resumed, *TINY_LLAMA, config=INSTRUCT_CONFIG)
  assert result.returncode == 0, result.stderr[-3000:]
  want, got = losses_by_step(reference), losses_by_step(resumed)
  assert sorted(got) == list(range(1, 13))
  np.testing.assert_allclose(
    [got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-6
  )

  results = json.load(open(reference / "results.json"))
  assert 0 < results["trainable_parameters"] < 0.2 * results["total_parameters"]
  # The export is the merged model: transformers-free reload through emo_jax's loader, and
  # its parameters are the plain family's (no adapter leaves).
  model, params = models.from_pretrained(str(reference / "hf_export"))
  assert not any(
    "lora" in "/".join(map(str, p)) for p, _ in jax.tree_util.tree_leaves_with_path(params)
  )
  logits = model.apply({"params": params}, IDS)
  assert np.all(np.isfinite(logits))

  # --mode eval on held-out instructions: response perplexity, sampled and greedy responses.
  result = run_main(reference, *TINY_LLAMA, "--mode=eval", config=INSTRUCT_CONFIG)
  assert result.returncode == 0, result.stderr[-3000:]
  evaluation = json.load(open(reference / "eval.json"))
  assert evaluation["corpus"] == "alpaca" and evaluation["num_prompts"] == 8
  assert 1 < evaluation["perplexity"] < 49152 and 0 <= evaluation["greedy_rouge"]["rougeL"] <= 1
  assert 0 <= evaluation["mauve"]["mean"] <= 1 and evaluation["response_words"]["reference"] > 0
  generations = [json.loads(line) for line in open(reference / "generations.jsonl")]
  assert len(generations) == 8 and all({"model", "greedy", "human"} <= set(g) for g in generations)
