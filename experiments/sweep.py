"""Launch a grid of ``main.py`` runs: one command per point of the product of the axes.

    python experiments/sweep.py --config configs/default.py --root workdirs/sweep \\
        --grid loss.name=mle,emo,mixce,tailr --grid seed=0,1,2 \\
        -- --config.train.num_steps=1000        # fixed overrides after "--"

prints the 12 commands (each with its own workdir, ``<root>/loss.name=emo,seed=1``);
``--run`` executes them one after another and stops at the first failure; stopping the sweep
(SIGTERM, Ctrl-C) lets the running one save its step first (``child_process``). Every run resumes
from its workdir, so re-launching a half-finished sweep only does the missing work.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import child_process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_axis(spec: str) -> tuple[str, list[str]]:
  """``"loss.name=mle,emo"`` -> ``("loss.name", ["mle", "emo"])``."""
  if "=" not in spec:
    raise argparse.ArgumentTypeError(f"--grid needs KEY=V1,V2,...; got {spec!r}.")
  key, values = spec.split("=", 1)
  values = [v for v in values.split(",") if v]
  if not key or not values:
    raise argparse.ArgumentTypeError(f"--grid needs KEY=V1,V2,...; got {spec!r}.")
  return key, values


def commands(
  config: str, root: str, axes: list[tuple[str, list[str]]], fixed: list[str]
) -> list[list[str]]:
  keys = [key for key, _ in axes]
  if len(set(keys)) != len(keys):
    raise ValueError(f"an axis appears twice in --grid: {keys}.")
  out = []
  for values in itertools.product(*(vals for _, vals in axes)):
    name = ",".join(f"{k}={v}" for k, v in zip(keys, values)) or "run"
    out.append(
      [
        sys.executable,
        os.path.join(REPO, "main.py"),
        "--config",
        config,
        "--workdir",
        os.path.join(root, name),
        *(f"--config.{k}={v}" for k, v in zip(keys, values)),
        *fixed,
      ]
    )
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True, help="config file, e.g. configs/default.py")
  parser.add_argument("--root", required=True, help="parent folder of the runs' workdirs")
  parser.add_argument(
    "--grid",
    type=parse_axis,
    action="append",
    default=[],
    help="KEY=V1,V2,... (repeatable); KEY is a config field path",
  )
  parser.add_argument("--run", action="store_true", help="execute instead of printing")
  parser.add_argument("fixed", nargs="*", help="overrides shared by every run (after --)")
  args = parser.parse_args(argv)
  grid = commands(args.config, args.root, args.grid, args.fixed)
  if args.run:
    run_all(grid)
  else:
    for command in grid:
      print(shlex.join(command), flush=True)
  return grid


def run_all(grid) -> None:
  """Each command in turn, stopping at the first that fails (a preempted run exits 143).
  SIGTERM to this script is passed on to the running command, which saves its step."""
  child_process.raise_on_sigterm()
  for command in grid:
    print(shlex.join(command), flush=True)
    returncode = child_process.run(command)
    if returncode:
      raise subprocess.CalledProcessError(returncode, command)


if __name__ == "__main__":
  main()
