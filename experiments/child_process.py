"""Running a long command (a training run) from a driver script so that stopping the driver
stops the command the way it wants to be stopped.

A training run saves its step on SIGTERM (``emo_jax.train``). ``kill <driver>`` reaches only
the driver: Python's default SIGTERM ends it at once and leaves the command running on its
own, and ``subprocess.run`` kills the command outright when the driver is interrupted,
losing its steps since the last checkpoint. :func:`run` passes SIGTERM on instead and waits
up to :data:`STOP_GRACE_SECONDS` for the command to save and exit before killing it.
"""

from __future__ import annotations

import signal
import subprocess
import threading

# How long an interrupted driver waits for its command to save and exit (a training run's
# SIGTERM handler writes a checkpoint of the whole train state) before it kills the command.
STOP_GRACE_SECONDS = 300.0


def _raise_on_sigterm(signum, frame):
  raise SystemExit(128 + signum)


def raise_on_sigterm() -> None:
  """SIGTERM raises ``SystemExit(143)`` in this process (from the main thread; elsewhere
  Python cannot install handlers), so ``finally`` blocks and :func:`run` see it; Python's
  default ends the process without running them."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _raise_on_sigterm)


def run(command) -> int:
  """Runs ``command`` to its end and returns its exit status. Should the caller be
  interrupted meanwhile (SIGTERM under :func:`raise_on_sigterm`, Ctrl-C), the command gets
  SIGTERM and up to :data:`STOP_GRACE_SECONDS` to save and exit before it is killed; the
  interruption is then raised again."""
  process = subprocess.Popen(command)
  try:
    return process.wait()
  except BaseException:
    if process.poll() is None:
      process.terminate()
      try:
        process.wait(timeout=STOP_GRACE_SECONDS)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    raise
