"""Checkpoint layout (periodic checkpoints resume a run; the best one is params + metrics) and
damage: a damaged checkpoint is detected, set aside, and never restored."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emo_jax import checkpointing


def _state(scale: float):
  """A train-state-shaped tree: the optimizer moments are twice the parameters' bytes."""
  params = {
    "wte": jnp.arange(64 * 8, dtype=jnp.float32).reshape(64, 8) * scale,
    "ln": {"scale": jnp.full((8,), scale, jnp.float32)},
  }
  opt_state = {
    "mu": jax.tree.map(lambda x: x * 0.1, params),
    "nu": jax.tree.map(lambda x: x * 0.01, params),
  }
  return {"step": jnp.asarray(3), "params": params, "opt_state": opt_state}


def _directory_bytes(path) -> int:
  return sum(
    os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names
  )


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
  np.testing.assert_array_equal(
    checkpointer.read_best_params()["ln"]["scale"], state["params"]["ln"]["scale"]
  )
  # The periodic checkpoint still resumes everything.
  resumed, data_state = checkpointer.restore(checkpointing.abstract_like(state))
  np.testing.assert_array_equal(resumed["opt_state"]["nu"]["wte"], state["opt_state"]["nu"]["wte"])
  assert data_state == {"train": {"epoch": 0, "position": 4}}
  checkpointer.close()


def test_removing_a_finished_runs_periodic_checkpoints_keeps_the_best_and_set_aside(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  state = _state(1.0)
  for step in (2, 4):
    checkpointer.save(step, state, {"train": {"epoch": 0, "position": step}})
  checkpointer.save_best(4, state["params"], {"step": 4, "eval/perplexity": 9.5})
  checkpointer.close()
  set_aside = tmp_path / checkpointing.SET_ASIDE_DIRECTORY / "1"
  set_aside.mkdir(parents=True)
  (set_aside / "damaged").write_bytes(b"x" * 10)
  periodic_bytes = _directory_bytes(tmp_path / checkpointing.PERIODIC_DIRECTORY)

  assert checkpointing.remove_periodic_checkpoints(str(tmp_path)) == periodic_bytes > 0
  assert sorted(os.listdir(tmp_path)) == [checkpointing.BEST_DIRECTORY, set_aside.parent.name]
  reopened = checkpointing.Checkpointer(str(tmp_path))
  assert reopened.latest_step() is None
  restored = reopened.restore_best_params(checkpointing.abstract_like(state["params"]))
  np.testing.assert_array_equal(restored["wte"], state["params"]["wte"])
  reopened.close()
  assert checkpointing.remove_periodic_checkpoints(str(tmp_path / "nothing_here")) == 0


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


def test_an_empty_workdir_names_the_missing_checkpoint(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  assert checkpointer.best_metrics() is None
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*best"):
    checkpointer.read_best_params()
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*checkpoints"):
    checkpointer.restore(checkpointing.abstract_like(_state(1.0)))


# ----------------------------------------------------------------------------------------
# Damaged checkpoints.
# ----------------------------------------------------------------------------------------


def _largest_file(directory) -> str:
  files = [
    os.path.join(root, name)
    for root, _, names in os.walk(directory)
    for name in names
    if name != checkpointing.INTEGRITY_FILE
  ]
  return max(files, key=os.path.getsize)


def flip_bytes(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))


def truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


# How a file of a saved checkpoint can go bad on disk.
DAMAGE = {"bytes_flipped": flip_bytes, "truncated": truncate, "removed": os.remove}


def damage_checkpoint(step_directory, how: str) -> str:
  """Damages the largest array file of a checkpoint; returns its path."""
  path = _largest_file(step_directory)
  DAMAGE[how](path)
  return path


def _two_checkpoints(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  checkpointer.save(4, _state(1.0), {"train": {"position": 4}})
  checkpointer.save(8, _state(2.0), {"train": {"position": 8}})
  checkpointer.close()
  return checkpointing.Checkpointer(str(tmp_path))  # As a resumed run opens it.


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_restored(
  tmp_path, how, caplog
):
  checkpointer = _two_checkpoints(tmp_path)
  damaged = damage_checkpoint(tmp_path / "checkpoints" / "8" / "state", how)

  with caplog.at_level("WARNING"):
    state, data_state = checkpointer.restore(checkpointing.abstract_like(_state(0.0)))
  np.testing.assert_array_equal(state["params"]["wte"], _state(1.0)["params"]["wte"])
  assert data_state == {"train": {"position": 4}}
  assert checkpointer.latest_step() == 4  # The manager no longer sees step 8 ...
  set_aside = tmp_path / checkpointing.SET_ASIDE_DIRECTORY / "8"
  assert set_aside.is_dir()  # ... whose files are kept, not deleted.
  if how != "removed":
    assert os.path.exists(str(damaged).replace(str(tmp_path / "checkpoints" / "8"), str(set_aside)))
  assert "checkpoints/8 did not restore" in caplog.text and str(set_aside) in caplog.text
  # Saving step 8 again (the resumed run gets there) works and restores.
  checkpointer.save(8, _state(3.0), {"train": {"position": 8}})
  state, _ = checkpointer.restore(checkpointing.abstract_like(_state(0.0)))
  np.testing.assert_array_equal(state["params"]["wte"], _state(3.0)["params"]["wte"])


def test_every_checkpoint_damaged_is_an_error_listing_each_and_moves_nothing(tmp_path):
  checkpointer = _two_checkpoints(tmp_path)
  damage_checkpoint(tmp_path / "checkpoints" / "8", "bytes_flipped")
  damage_checkpoint(tmp_path / "checkpoints" / "4", "truncated")
  with pytest.raises(
    checkpointing.CorruptCheckpointError,
    match=r"(?s)no periodic checkpoint .* restores.*checkpoints/8: .*CRC-32"
    r".*checkpoints/4: .*truncated",
  ):
    checkpointer.restore(checkpointing.abstract_like(_state(0.0)))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "8"]
  assert not (tmp_path / checkpointing.SET_ASIDE_DIRECTORY).exists()


def test_a_checkpoint_without_its_record_restores_if_orbax_reads_it(tmp_path):
  """A crash between orbax's rename and the integrity record: orbax's commit still vouches
  for the files, and a file orbax cannot read still sends the run to the older one."""
  checkpointer = _two_checkpoints(tmp_path)
  os.remove(tmp_path / "checkpoints" / "8" / checkpointing.INTEGRITY_FILE)
  state, _ = checkpointer.restore(checkpointing.abstract_like(_state(0.0)))
  np.testing.assert_array_equal(state["params"]["wte"], _state(2.0)["params"]["wte"])

  damage_checkpoint(tmp_path / "checkpoints" / "8" / "state", "removed")
  state, _ = checkpointer.restore(checkpointing.abstract_like(_state(0.0)))
  np.testing.assert_array_equal(state["params"]["wte"], _state(1.0)["params"]["wte"])


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_a_damaged_best_checkpoint_is_an_error_naming_it_and_what_to_do(tmp_path, how):
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  checkpointer.save_best(4, _state(1.0)["params"], {"step": 4, "eval/perplexity": 9.0})
  damage_checkpoint(tmp_path / "best" / "4", how)
  message = r"(?s)best checkpoint is damaged: .*best/4.*Move .*best/4 out of the workdir"
  with pytest.raises(checkpointing.CorruptCheckpointError, match=message):
    checkpointer.restore_best_params(checkpointing.abstract_like(_state(0.0)["params"]))
  with pytest.raises(checkpointing.CorruptCheckpointError, match=message):
    checkpointer.read_best_params()
  with pytest.raises(checkpointing.CorruptCheckpointError, match=message):
    checkpointer.best_metrics()
