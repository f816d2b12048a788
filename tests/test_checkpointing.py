"""Checkpoint layout: periodic checkpoints resume a run; the best one is params + metrics."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from emo_jax import checkpointing


def _state(scale: float):
  """A train-state-shaped tree: the optimizer moments are twice the parameters' bytes."""
  params = {"wte": jnp.arange(64 * 8, dtype=jnp.float32).reshape(64, 8) * scale,
            "ln": {"scale": jnp.full((8,), scale, jnp.float32)}}
  opt_state = {"mu": jax.tree.map(lambda x: x * 0.1, params),
               "nu": jax.tree.map(lambda x: x * 0.01, params)}
  return {"step": jnp.asarray(3), "params": params, "opt_state": opt_state}


def _directory_bytes(path) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def test_best_checkpoint_holds_the_params_and_the_metrics_that_made_it_best(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  state = _state(1.0)
  checkpointer.save(4, state, {"train": {"epoch": 0, "position": 4}})
  metrics = {"step": 4, "eval/perplexity": 123.25}
  checkpointer.save_best(4, state["params"], metrics)

  best_dir = tmp_path / "best" / "4"
  assert {"params", "metrics"} <= set(os.listdir(best_dir))
  assert "state" not in os.listdir(best_dir)  # No optimizer moments, no data position.
  periodic = _directory_bytes(tmp_path / "checkpoints" / "4")
  assert _directory_bytes(best_dir) < periodic / 2
  assert checkpointer.best_metrics() == metrics

  restored = checkpointer.restore_best_params(checkpointing.abstract_like(state["params"]))
  np.testing.assert_array_equal(restored["wte"], state["params"]["wte"])
  np.testing.assert_array_equal(checkpointer.read_best_params()["ln"]["scale"],
                                state["params"]["ln"]["scale"])
  # The periodic checkpoint still resumes everything.
  resumed, data_state = checkpointer.restore(checkpointing.abstract_like(state))
  np.testing.assert_array_equal(resumed["opt_state"]["nu"]["wte"],
                                state["opt_state"]["nu"]["wte"])
  assert data_state == {"train": {"epoch": 0, "position": 4}}
  checkpointer.close()


def test_a_better_score_replaces_the_best_checkpoint_and_survives_reopening(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  checkpointer.save_best(4, _state(1.0)["params"], {"step": 4, "eval/perplexity": 50.0})
  checkpointer.save_best(8, _state(2.0)["params"], {"step": 8, "eval/perplexity": 40.0})
  checkpointer.close()

  reopened = checkpointing.Checkpointer(str(tmp_path))  # As a resumed run sees it.
  assert os.listdir(tmp_path / "best") == ["8"]
  assert reopened.best_step() == 8
  assert reopened.best_metrics() == {"step": 8, "eval/perplexity": 40.0}
  np.testing.assert_array_equal(reopened.read_best_params()["ln"]["scale"], np.full(8, 2.0))


def test_best_directory_written_before_the_split_is_still_read(tmp_path):
  """Workdirs trained before best/ became params-only hold the whole train state there."""
  state = _state(3.0)
  legacy = ocp.CheckpointManager(str(tmp_path / "best"),
                                 options=ocp.CheckpointManagerOptions(create=True))
  legacy.save(6, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                         data=ocp.args.JsonSave({"train": {}})))
  legacy.wait_until_finished()
  legacy.close()

  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  assert checkpointer.best_metrics() is None  # The trainer then reads best_metric.json.
  np.testing.assert_array_equal(checkpointer.read_best_params()["wte"], state["params"]["wte"])
  restored = checkpointer.restore_best_params(checkpointing.abstract_like(state["params"]))
  assert isinstance(restored["wte"], jax.Array)
  np.testing.assert_array_equal(restored["ln"]["scale"], state["params"]["ln"]["scale"])


def test_an_empty_workdir_names_the_missing_checkpoint(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  assert checkpointer.best_metrics() is None
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*best"):
    checkpointer.read_best_params()
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*checkpoints"):
    checkpointer.restore(checkpointing.abstract_like(_state(1.0)))
