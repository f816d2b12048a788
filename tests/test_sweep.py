"""experiments/sweep.py: one main.py command per grid point, each with its own workdir."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments"))
import sweep


def test_grid_is_the_product_of_the_axes(capsys):
  grid = sweep.main(
    [
      "--config",
      "configs/default.py",
      "--root",
      "runs",
      "--grid",
      "loss.name=mle,emo,tailr",
      "--grid",
      "seed=0,1",
      "--",
      "--config.train.num_steps=7",
    ]
  )
  assert len(grid) == 6
  workdirs = [c[c.index("--workdir") + 1] for c in grid]
  assert len(set(workdirs)) == 6
  assert os.path.join("runs", "loss.name=emo,seed=1") in workdirs
  emo_seed1 = grid[workdirs.index(os.path.join("runs", "loss.name=emo,seed=1"))]
  assert {"--config.loss.name=emo", "--config.seed=1", "--config.train.num_steps=7"} <= set(
    emo_seed1
  )
  assert len(capsys.readouterr().out.strip().splitlines()) == 6  # Printed, not run.


@pytest.mark.parametrize("spec", ["loss.name", "=mle", "loss.name="])
def test_malformed_axis_is_an_error(spec):
  with pytest.raises(SystemExit):
    sweep.main(["--config", "c.py", "--root", "r", "--grid", spec])


def test_repeated_axis_is_an_error():
  with pytest.raises(ValueError, match="appears twice"):
    sweep.main(["--config", "c.py", "--root", "r", "--grid", "seed=0", "--grid", "seed=1"])
