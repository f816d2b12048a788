"""Orbax checkpoints of the train state and the data-iterator position (the only orbax user).

Layout under the workdir::

    checkpoints/<step>/{state, data}   every ``save_every`` steps, the newest ``keep`` kept
    best/<step>/{state, data}          the best validation score so far, kept apart

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
crash mid-save leaves the previous checkpoint intact: saves are atomic.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Periodic + best-by-validation checkpoints of ``(state, data_state)``."""

  def __init__(self, workdir: str, keep: int = 2):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.best_directory = os.path.join(os.path.abspath(workdir), "best")
    self._latest = ocp.CheckpointManager(self.directory, options=options)
    self._best = ocp.CheckpointManager(
        self.best_directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                             enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def best_step(self) -> int | None:
    return self._best.latest_step()

  def save(self, step: int, state: Any, data_state: dict, best: bool = False) -> None:
    """Saves (and waits for) a checkpoint; ``best=True`` saves into ``best/`` instead."""
    manager = self._best if best else self._latest
    if manager.latest_step() == step:
      return  # Already saved at this step (e.g. SIGTERM right after a periodic save).
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))
    manager.wait_until_finished()

  def restore(self, abstract_state: Any, best: bool = False, step: int | None = None):
    """``(state, data_state)`` of ``step`` (default: newest), laid out like
    ``abstract_state`` (a tree of ``jax.ShapeDtypeStruct`` with shardings)."""
    manager = self._best if best else self._latest
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {manager.directory}.")
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def read_state(self, best: bool = False, step: int | None = None) -> Any:
    """The saved state as plain nested dicts of NumPy arrays, for inspection (no target
    structure needed)."""
    manager = self._best if best else self._latest
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {manager.directory}.")
    return ocp.StandardCheckpointer().restore(
        os.path.join(manager.directory, str(step), "state"))

  def describe_latest(self) -> str:
    step = self.latest_step()
    return "none" if step is None else os.path.join(self.directory, str(step))

  def close(self) -> None:
    self._latest.close()
    self._best.close()


def abstract_like(tree: Any) -> Any:
  """``ShapeDtypeStruct``s (with shardings) describing ``tree``, for :meth:`restore`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)
