"""Orbax checkpoints of the train state and the data-iterator position (the only orbax user).

Layout under the workdir::

    checkpoints/<step>/{state, data}   every ``save_every`` steps, the newest ``keep`` kept
    best/<step>/{params, metrics}      the best validation score so far, kept apart

A periodic checkpoint is everything a resumed run needs (train state + data-iterator
position). The best one is only ever evaluated or exported, so it holds the parameters and the
validation metrics that made it best -- a third of the state's bytes with Adam's two moments
(less still with the frozen cost collection), written up to once per evaluation. Keeping the
metrics inside the checkpoint means the best score a resumed run compares against always
belongs to the weights on disk.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
crash mid-save leaves the previous checkpoint intact: saves are atomic. (``best/`` directories
written before the split hold ``{state, data}``; :meth:`Checkpointer.read_best_params` still
reads them.)
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Periodic checkpoints of ``(state, data_state)``; the best-by-validation params."""

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

  def save(self, step: int, state: Any, data_state: dict) -> None:
    """Saves (and waits for) a periodic checkpoint of the train state and data position."""
    if self._latest.latest_step() == step:
      return  # Already saved at this step (e.g. SIGTERM right after a periodic save).
    self._latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))
    self._latest.wait_until_finished()

  def save_best(self, step: int, params: Any, metrics: dict[str, float]) -> None:
    """Replaces ``best/`` with ``params`` and the validation ``metrics`` that earned them."""
    if self._best.latest_step() == step:
      return
    self._best.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), metrics=ocp.args.JsonSave(metrics)))
    self._best.wait_until_finished()

  def restore(self, abstract_state: Any, step: int | None = None):
    """``(state, data_state)`` of periodic checkpoint ``step`` (default: newest), laid out
    like ``abstract_state`` (a tree of ``jax.ShapeDtypeStruct`` with shardings)."""
    step = self._require_step(self._latest, step)
    restored = self._latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def restore_best_params(self, abstract_params: Any) -> Any:
    """The best checkpoint's parameters, laid out (and sharded) like ``abstract_params``."""
    step = self._require_step(self._best, None)
    if not os.path.isdir(self._item_path(self._best, step, "params")):
      # A best/ from before the split (a run resumed across the change that never improved
      # afterwards): read on the host, then place like the target.
      return jax.tree.map(lambda x, target: jax.device_put(x.astype(target.dtype),
                                                           target.sharding),
                          self.read_best_params(), abstract_params)
    restored = self._best.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params)))
    return restored["params"]

  def best_metrics(self) -> dict[str, float] | None:
    """The validation metrics saved with the best checkpoint; None without one (or for a
    ``best/`` written before the metrics moved into it)."""
    step = self._best.latest_step()
    if step is None or not os.path.isdir(self._item_path(self._best, step, "metrics")):
      return None
    return dict(self._best.restore(
        step, args=ocp.args.Composite(metrics=ocp.args.JsonRestore()))["metrics"])

  def read_state(self, step: int | None = None) -> Any:
    """A periodic checkpoint's state as nested dicts of NumPy arrays, for inspection (no
    target structure needed)."""
    step = self._require_step(self._latest, step)
    return ocp.StandardCheckpointer().restore(self._item_path(self._latest, step, "state"))

  def read_best_params(self) -> Any:
    """The best checkpoint's parameters as nested dicts of NumPy arrays (no target needed)."""
    step = self._require_step(self._best, None)
    path = self._item_path(self._best, step, "params")
    if not os.path.isdir(path):  # A best/ from before the split: the whole train state.
      return ocp.StandardCheckpointer().restore(
          self._item_path(self._best, step, "state"))["params"]
    return ocp.StandardCheckpointer().restore(path)

  @staticmethod
  def _require_step(manager: ocp.CheckpointManager, step: int | None) -> int:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {manager.directory}.")
    return step

  @staticmethod
  def _item_path(manager: ocp.CheckpointManager, step: int, item: str) -> str:
    return os.path.join(str(manager.directory), str(step), item)

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
