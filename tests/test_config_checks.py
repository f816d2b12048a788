"""Every config value is range-checked before any work, with one message naming it."""

import glob
import importlib
import os

import pytest

from configs import default
from emo_jax import config_checks, evaluate, train
from emo_jax.data import instructions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Values each field must refuse (the ones a ConfigDict lets through: it already refuses a
# value of the wrong type, so strings and booleans are covered by ``WRONG_TYPE`` below).
BAD_VALUES = {
  "seed": [-1],
  "model.family": ["gpt3"],
  "model.preset": ["", "  "],
  "model.max_length": [0, 1],
  "model.dropout": [-0.1, 1.0, float("nan")],
  "model.dtype": ["float64", "fp32"],
  "model.param_dtype": ["int8"],
  "data.corpus": [""],
  "data.source": ["hub"],
  "data.text_field": [""],
  "data.train_split": [""],
  "data.eval_split": [""],
  "data.block_size": [0, 1, -4],
  "data.max_eval_blocks": [-1],
  "data.max_train_tokens": [-1, 2.5],
  "data.train_subset_seed": [-1],
  "data.prompt_template": ["chatml", ""],
  "loss.name": ["emd", "MLE"],
  "loss.weighting": ["ce"],
  "loss.max_weight": [0.0, -3.0, float("inf")],
  "loss.mixing_ratio": [-0.1, 1.5],
  "loss.gamma": [-0.5, 2.0],
  "loss.cost_source": ["head"],
  "loss.mle_warmup_steps": [-1],
  "loss.chunk_size": [0, -512],
  "lora.rank": [-1],
  "lora.alpha": [0.0, -16.0],
  "lora.dropout": [1.0, -0.1],
  "lora.targets": ["q_proj,,v_proj", " "],
  "optim.learning_rate": [0.0, -1.0, float("nan")],
  "optim.schedule": ["exponential"],
  "optim.warmup_steps": [-1],
  "optim.weight_decay": [-0.01],
  "optim.b1": [-0.1, 1.0],
  "optim.b2": [1.0, 1.2],
  "optim.eps": [0.0, -1e-8],
  "optim.grad_clip_norm": [-1.0],
  "train.batch_size": [0, -8],
  "train.grad_accum_steps": [0],
  "train.num_steps": [-1],
  "train.num_epochs": [-1],
  "train.log_every": [0],
  "train.eval_every": [0, -100],
  "train.save_every": [0],
  "train.keep_checkpoints": [0],
  "train.nan_policy": ["ignore"],
  "train.num_samples": [-1],
  "train.sample_tokens": [0],
  "eval.split": [""],
  "eval.max_blocks": [-1],
  "eval.num_prompts": [-5],
  "eval.prefix_words": [0],
  "eval.continuation_words": [0, -80],
  "eval.max_new_tokens": [0],
  "eval.batch_size": [0],
  "eval.temperature": [0.0, -1.0],
  "eval.top_k": [-1],
  "eval.top_p": [0.0, 1.1],
  "eval.typical_p": [0.0, 2.0],
  "eval.featurizer": [""],
  "eval.mauve_runs": [0],
  "eval.mauve_scaling": [0.0, -5.0],
  "eval.num_examples": [-1],
  "mesh.data": [0, -2],
  "mesh.fsdp": [0, -1],
  "distributed.coordinator_address": [""],
  "distributed.num_processes": [0],
  "distributed.process_id": [-1],
}
# Fields whose every value of the right type is fine (free text, switches): the rule still
# refuses a value of the wrong type, for configs built outside ml_collections' type checks.
WRONG_TYPE = {
  field: 3
  for field, rule in config_checks.RULES.items()
  if rule in (config_checks.TEXT, config_checks.BOOLEAN)
}


def _set(config, field, value):
  section, _, name = field.rpartition(".")
  target = config
  for part in filter(None, section.split(".")):
    target = target[part]
  with target.ignore_type():
    setattr(target, name, value)


def test_every_field_has_a_rule_and_every_rule_a_refused_value():
  fields = set(config_checks.leaves(default.get_config()))
  assert fields == set(config_checks.RULES)
  assert set(BAD_VALUES) | set(WRONG_TYPE) == fields, (
    "fields without a refused value: "
    + ", ".join(sorted(fields - set(BAD_VALUES) - set(WRONG_TYPE)))
  )


CONFIG_NAMES = sorted(
  os.path.splitext(os.path.basename(path))[0]
  for path in glob.glob(os.path.join(REPO, "configs", "*.py"))
  if not path.endswith("__init__.py")
)


@pytest.mark.parametrize("variant", default.VARIANTS)
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_shipped_config_passes_in_every_variant(name, variant):
  config_checks.check_config(importlib.import_module(f"configs.{name}").get_config(variant))


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_smoke_variant_shrinks_sizes_and_keeps_the_recipe(name):
  module = importlib.import_module(f"configs.{name}")
  full, smoke = module.get_config(), module.get_config("smoke")
  assert smoke.train.num_steps == 12 and smoke.train.num_epochs == 0
  # Instruction rows must hold a whole chat prompt (configs/smollm2_instruct.py).
  smoke_block = 160 if smoke.data.corpus in instructions.CORPORA else 16
  assert smoke.data.block_size == smoke_block and smoke.train.batch_size == 4
  assert not smoke.train.tensorboard and smoke.eval.num_prompts == 8
  # What the config is about stays: model source, objective, optimizer, corpus.
  for field in (
    "model.pretrained",
    "model.family",
    "loss.name",
    "loss.weighting",
    "loss.cost_source",
    "optim.learning_rate",
    "optim.schedule",
    "data.corpus",
  ):
    section, key = field.split(".")
    assert smoke[section][key] == full[section][key], field
  assert bool(smoke.loss.mle_warmup_steps) == bool(full.loss.mle_warmup_steps)
  assert (smoke.model.preset == "tiny") == (
    not full.model.pretrained or full.model.preset == "tiny"
  )


def test_an_unknown_variant_is_an_error_naming_it():
  with pytest.raises(ValueError, match="unknown config variant 'runlocal'.*'smoke'"):
    default.get_config("runlocal")


@pytest.mark.parametrize(
  "field,value",
  [(f, v) for f, vs in sorted(BAD_VALUES.items()) for v in vs] + sorted(WRONG_TYPE.items()),
)
def test_a_value_out_of_range_names_the_field_and_the_value(field, value):
  config = default.get_config()
  config.train.num_epochs = 1  # Leave the step-count combinations out of this test.
  _set(config, field, value)
  if field == "train.num_epochs":
    config.train.num_steps = 400
  with pytest.raises(ValueError) as error:
    config_checks.check_config(config)
  message = str(error.value)
  assert message.startswith(f"config value {field}={value!r} is invalid: it must be "), message


@pytest.mark.parametrize(
  "changes,message",
  [
    (
      {"train.num_steps": 0},
      ("train.num_steps=0 is invalid: it must be an integer >= 1 when train.num_epochs is 0"),
    ),
    (
      {"train.num_steps": 10, "optim.warmup_steps": 11},
      "optim.warmup_steps=11 is invalid: it must be at most the run's total steps (10)",
    ),
    (
      {"train.num_steps": 100, "loss.mle_warmup_steps": 100},
      (
        "loss.mle_warmup_steps=100 is invalid: it must be below train.num_steps (100), or the "
        "run never uses loss.name='emo'"
      ),
    ),
    (
      {"train.batch_size": 16, "train.grad_accum_steps": 3},
      "train.batch_size=16 is invalid: it must be a multiple of train.grad_accum_steps (3)",
    ),
    (
      {"data.block_size": 256},
      ("data.block_size=256 is invalid: it must be at most model.max_length (128)"),
    ),
    (
      {"loss.mle_warmup_steps": 0},
      ("loss.mle_warmup_steps=0 is invalid: it must be >= 1 for EMO from scratch"),
    ),
    (
      {"distributed.enabled": True, "distributed.num_processes": 2, "distributed.process_id": 2},
      "distributed.process_id=2 is invalid",
    ),
  ],
)
def test_combinations_that_cannot_work(changes, message):
  config = default.get_config()
  for field, value in changes.items():
    _set(config, field, value)
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_checks.check_config(config)


def test_a_combination_that_is_fine_passes():
  config = default.get_config()
  config.loss.name = "mle"
  config.loss.mle_warmup_steps = 10_000  # Plain MLE: the warm-up length is irrelevant.
  config_checks.check_config(config)


def test_an_unknown_or_missing_field_is_an_error():
  config = default.get_config()
  config.train.num_step = 100  # A typo in a variant config file.
  with pytest.raises(ValueError, match="config field train.num_step is not one emo_jax reads"):
    config_checks.check_config(config)
  config = default.get_config()
  del config.eval["top_k"]
  with pytest.raises(ValueError, match="config field eval.top_k is missing"):
    config_checks.check_config(config)


@pytest.mark.parametrize(
  "devices,processes,batch,accum,ok",
  [
    (1, 1, 16, 1, True),
    (8, 1, 16, 2, True),
    (8, 1, 16, 4, False),
    (4, 2, 6, 1, False),
    (2, 2, 6, 1, True),
    (4, 2, 8, 1, True),
    (1, 2, 3, 1, False),
  ],
)
def test_batch_layout_over_devices_and_processes(devices, processes, batch, accum, ok):
  config = default.get_config()
  config.train.batch_size, config.train.grad_accum_steps = batch, accum
  if ok:
    config_checks.check_batch_layout(config.train, devices, processes)
  else:
    with pytest.raises(ValueError, match=f"train.batch_size={batch} is invalid"):
      config_checks.check_batch_layout(config.train, devices, processes)


@pytest.mark.parametrize("field,value", [("train.batch_size", 0), ("optim.learning_rate", -1.0)])
def test_train_and_eval_refuse_a_bad_value_before_any_work(field, value, tmp_path, monkeypatch):
  """Two values once let through unchecked: nothing is read, built or compiled first."""

  def must_not_run(*args, **kwargs):
    raise AssertionError("work started before the config was checked")

  for module, name in (
    (train.data_lib, "read_split"),
    (train.models, "from_model_config"),
    (train.sharding, "make_mesh"),
    (train.tokenizer_lib, "resolve_tokenizer"),
  ):
    monkeypatch.setattr(module, name, must_not_run)
  config = default.get_config()
  _set(config, field, value)
  for run in (train.train_and_evaluate, evaluate.evaluate_and_report):
    with pytest.raises(ValueError, match=f"config value {field}={value!r} is invalid"):
      run(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_the_trainers_switches_accept_exactly_the_checked_names():
  config = default.get_config()
  for name in config_checks.LOSS_NAMES:
    train.make_objective(config.loss, name=name)
  with pytest.raises(ValueError, match="loss.name must be one of"):
    train.make_objective(config.loss, name="nope")
  for schedule in config_checks.SCHEDULES:
    config.optim.schedule = schedule
    train.make_schedule(config.optim, 100)
