"""Orbax checkpoints of the train state and the data-iterator position (the only orbax user).

Layout under the workdir::

    checkpoints/<step>/{state, data, integrity.json}   every ``save_every`` steps, newest ``keep``
    best/<step>/{params, metrics, integrity.json}      the best validation score so far
    checkpoints_set_aside/<step>                       periodic checkpoints that did not restore

A periodic checkpoint is everything a resumed run needs (train state + data-iterator
position). The best one is only ever evaluated or exported, so it holds the parameters and the
validation metrics that made it best -- a third of the state's bytes with Adam's two moments.
Keeping the metrics inside the checkpoint means the best score a resumed run compares against
always belongs to the weights on disk.

Two guarantees:

* **Atomic saves.** Orbax writes each checkpoint into a temporary directory and renames it
  when complete, so a crash mid-save leaves the previous checkpoints intact.
* **Damage is detected, never restored.** After a save, ``integrity.json`` records the size
  and CRC-32 of every file of the checkpoint (orbax keeps no checksums itself, and a flipped
  byte in an uncompressed chunk would otherwise restore as a silently wrong number). A
  resumed run tries the newest periodic checkpoint first; one whose files do not match, or
  that orbax cannot read, is moved into ``checkpoints_set_aside/`` (never deleted) with a
  warning naming it, and the next newer-to-older one is tried. A damaged ``best/`` is an error
  naming the directory and what to do, since silently choosing other weights would change
  what "best" means.

A checkpoint written without ``integrity.json`` (a crash between orbax's rename and the
record) is trusted as far as orbax's own commit marker goes: it is restored if it reads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

INTEGRITY_FILE = "integrity.json"
PERIODIC_DIRECTORY = "checkpoints"
BEST_DIRECTORY = "best"
SET_ASIDE_DIRECTORY = "checkpoints_set_aside"
_CHUNK_BYTES = 1 << 24


class CorruptCheckpointError(RuntimeError):
  """A checkpoint directory whose files do not match its record or that does not restore."""


# ----------------------------------------------------------------------------------------
# Integrity records.
# ----------------------------------------------------------------------------------------


def _crc32(path: str) -> int:
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK_BYTES):
      crc = zlib.crc32(chunk, crc)
  return crc


def _files(directory: str) -> list[str]:
  """Every file under ``directory`` except the record itself, as sorted relative paths."""
  found = []
  for root, _, names in os.walk(directory):
    for name in names:
      relative = os.path.relpath(os.path.join(root, name), directory)
      if relative != INTEGRITY_FILE:
        found.append(relative)
  return sorted(found)


def write_integrity_record(directory: str) -> None:
  """Records ``{relative path: [bytes, crc32]}`` of ``directory``'s files, atomically."""
  record = {
    path: [os.path.getsize(os.path.join(directory, path)), _crc32(os.path.join(directory, path))]
    for path in _files(directory)
  }
  write_json_atomically(os.path.join(directory, INTEGRITY_FILE), record)


def check_integrity(directory: str) -> bool:
  """Raises :class:`CorruptCheckpointError` naming the first file of ``directory`` that is
  missing or differs from its record; returns False when there is no record to check."""
  record_path = os.path.join(directory, INTEGRITY_FILE)
  if not os.path.exists(record_path):
    return False
  try:
    with open(record_path) as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    raise CorruptCheckpointError(f"{record_path} is unreadable ({e}).") from e
  for relative, (size, crc) in sorted(record.items()):
    path = os.path.join(directory, relative)
    if not os.path.exists(path):
      raise CorruptCheckpointError(f"{path} is missing.")
    if os.path.getsize(path) != size:
      raise CorruptCheckpointError(
        f"{path} has {os.path.getsize(path)} bytes, {size} when saved (truncated?)."
      )
    if _crc32(path) != crc:
      raise CorruptCheckpointError(f"{path} differs from what was saved (CRC-32 mismatch).")
  return True


def write_json_atomically(path: str, record: Any) -> None:
  """Writes ``record`` as JSON to ``path`` so that a crash leaves the old file or the new one,
  never a truncated one that the next run fails to parse."""
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=2)
  os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------------------
# The checkpointer.
# ----------------------------------------------------------------------------------------


def remove_periodic_checkpoints(workdir: str) -> int:
  """Deletes a *finished* run's periodic checkpoints and returns the bytes freed.

  Only a resumed run reads them; evaluation and export read ``best/``, which stays, as do
  set-aside (damaged) checkpoints, kept for inspection. For drivers that run many points on
  one disk (a SmolLM2-135M point's two periodic checkpoints are ~3 GB); deleting them from a
  run that has not finished would lose its progress.
  """
  directory = os.path.join(os.path.abspath(workdir), PERIODIC_DIRECTORY)
  if not os.path.isdir(directory):
    return 0
  freed = sum(
    os.path.getsize(os.path.join(folder, name))
    for folder, _, names in os.walk(directory)
    for name in names
  )
  shutil.rmtree(directory)
  return freed


class Checkpointer:
  """Periodic checkpoints of ``(state, data_state)``; the best-by-validation params."""

  def __init__(self, workdir: str, keep: int = 2):
    workdir = os.path.abspath(workdir)
    self.directory = os.path.join(workdir, PERIODIC_DIRECTORY)
    self.best_directory = os.path.join(workdir, BEST_DIRECTORY)
    self.set_aside_directory = os.path.join(workdir, SET_ASIDE_DIRECTORY)
    # Temporary directories are leftovers of saves a crash interrupted: never restorable.
    options = dict(create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True)
    self._latest = ocp.CheckpointManager(
      self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, **options)
    )
    self._best = ocp.CheckpointManager(
      self.best_directory, options=ocp.CheckpointManagerOptions(max_to_keep=1, **options)
    )

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def all_steps(self) -> list[int]:
    """The periodic checkpoints' steps, oldest first."""
    return sorted(self._latest.all_steps())

  def best_step(self) -> int | None:
    return self._best.latest_step()

  def step_directory(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def best_step_directory(self) -> str | None:
    step = self._best.latest_step()
    return None if step is None else os.path.join(self.best_directory, str(step))

  # ---- Saving ---------------------------------------------------------------------------

  def save(self, step: int, state: Any, data_state: dict) -> None:
    """Saves (and waits for) a periodic checkpoint of the train state and data position."""
    if self._latest.latest_step() == step:
      return  # Already saved at this step (e.g. SIGTERM right after a periodic save).
    self._latest.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
      ),
    )
    self._latest.wait_until_finished()
    self._record_integrity(self.step_directory(step))

  def save_best(self, step: int, params: Any, metrics: dict[str, float]) -> None:
    """Replaces ``best/`` with ``params`` and the validation ``metrics`` that earned them."""
    if self._best.latest_step() == step:
      return
    self._best.save(
      step,
      args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), metrics=ocp.args.JsonSave(metrics)
      ),
    )
    self._best.wait_until_finished()
    self._record_integrity(os.path.join(self.best_directory, str(step)))

  @staticmethod
  def _record_integrity(directory: str) -> None:
    # All processes' shards are complete once wait_until_finished returns; one records.
    if jax.process_index() == 0:
      write_integrity_record(directory)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"emo_jax integrity record {directory}")

  # ---- Restoring periodic checkpoints ---------------------------------------------------

  def restore(self, abstract_state: Any, step: int | None = None):
    """``(state, data_state)`` of the newest periodic checkpoint that restores, laid out like
    ``abstract_state`` (a tree of ``jax.ShapeDtypeStruct`` with shardings).

    Damaged newer checkpoints are moved into ``checkpoints_set_aside/`` with a warning. With
    an explicit ``step`` only that one is tried. Raises :class:`CorruptCheckpointError` when
    none restores (then nothing is moved: the message lists each one's problem)."""
    if step is not None:
      return self._restore_step(abstract_state, step)
    steps = self.all_steps()[::-1]
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}.")
    problems = []
    for candidate in steps:
      try:
        restored = self._restore_step(abstract_state, candidate)
      except CorruptCheckpointError as e:
        problems.append((candidate, str(e)))
        continue
      self._set_aside([bad for bad, _ in problems])
      return restored
    listing = "\n".join(f"  {self.step_directory(s)}: {problem}" for s, problem in problems)
    raise CorruptCheckpointError(
      f"no periodic checkpoint in {self.directory} restores:\n{listing}\nMove them out of "
      "the workdir to train from the start, or restore them from a backup."
    )

  def _restore_step(self, abstract_state: Any, step: int):
    directory = self.step_directory(step)
    check_integrity(directory)
    try:
      restored = self._latest.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
        ),
      )
    except Exception as e:  # Orbax / tensorstore raise many types for unreadable files.
      raise CorruptCheckpointError(f"{directory} does not restore: {type(e).__name__}: {e}") from e
    return restored["state"], restored["data"]

  def _set_aside(self, steps: list[int]) -> None:
    """Moves periodic checkpoints ``steps`` out of the manager's sight, keeping their files."""
    if not steps:
      return
    if jax.process_index() == 0:
      os.makedirs(self.set_aside_directory, exist_ok=True)
      for step in steps:
        target = os.path.join(self.set_aside_directory, str(step))
        suffix = 1
        while os.path.exists(target):  # The same step may go bad twice across restarts.
          target = os.path.join(self.set_aside_directory, f"{step}.{suffix}")
          suffix += 1
        os.replace(self.step_directory(step), target)
        logging.warning(
          "checkpoint %s did not restore; moved it to %s and resumed from an older one.",
          self.step_directory(step),
          target,
        )
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("emo_jax set aside damaged checkpoints")
    self._latest.reload()

  def read_state(self, step: int | None = None) -> Any:
    """A periodic checkpoint's state as nested dicts of NumPy arrays, for inspection (no
    target structure needed)."""
    step = self._require_step(self._latest, step)
    directory = self.step_directory(step)
    return self._read(
      directory, lambda: ocp.StandardCheckpointer().restore(os.path.join(directory, "state"))
    )

  # ---- The best checkpoint --------------------------------------------------------------

  def restore_best_params(self, abstract_params: Any) -> Any:
    """The best checkpoint's parameters, laid out (and sharded) like ``abstract_params``."""
    step = self._require_step(self._best, None)
    return self._read_best(
      lambda: self._best.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
      )["params"]
    )

  def read_best_params(self) -> Any:
    """The best checkpoint's parameters as nested dicts of NumPy arrays (no target needed)."""
    self._require_step(self._best, None)
    path = os.path.join(self.best_step_directory(), "params")
    return self._read_best(lambda: ocp.StandardCheckpointer().restore(path))

  def best_metrics(self) -> dict[str, float] | None:
    """The validation metrics saved with the best checkpoint; None without one.

    The whole checkpoint's record is checked, not just the metrics' files: a resumed run
    reads this first, and damaged best parameters should stop it now, not at the export
    after the last step (one extra read of the parameters: 0.4 s for SmolLM2-135M's 476 MB
    here)."""
    step = self._best.latest_step()
    if step is None:
      return None
    return dict(
      self._read_best(
        lambda: self._best.restore(step, args=ocp.args.Composite(metrics=ocp.args.JsonRestore()))[
          "metrics"
        ]
      )
    )

  def _read_best(self, read):
    directory = self.best_step_directory()
    try:
      return self._read(directory, read)
    except CorruptCheckpointError as e:
      raise CorruptCheckpointError(
        f"the best checkpoint is damaged: {e}\nMove {directory} out of the workdir (keep it "
        "for inspection): --mode eval then evaluates the newest periodic checkpoint, and a "
        "resumed training run selects a new best at its next evaluation."
      ) from e

  @staticmethod
  def _read(directory: str, read):
    check_integrity(directory)
    try:
      return read()
    except Exception as e:  # Orbax / tensorstore raise many types for unreadable files.
      raise CorruptCheckpointError(f"{directory} does not restore: {type(e).__name__}: {e}") from e

  # ---- Misc -----------------------------------------------------------------------------

  @staticmethod
  def _require_step(manager: ocp.CheckpointManager, step: int | None) -> int:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {manager.directory}.")
    return step

  def describe_latest(self) -> str:
    step = self.latest_step()
    return "none" if step is None else self.step_directory(step)

  def close(self) -> None:
    self._latest.close()
    self._best.close()


def abstract_like(tree: Any) -> Any:
  """``ShapeDtypeStruct``s (with shardings) describing ``tree``, for :meth:`restore`."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
  )
