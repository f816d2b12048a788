"""What a run leaves for people: a progress line, TensorBoard events, a metrics JSONL, PNG
curves. Only process 0 writes; every other process gets a logger that does nothing."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any


class _NoMissingTpuRuntime(logging.Filter):
  """Drops JAX's report that ``libtpu.so`` is absent: on a host without TPUs that is not news,
  and it is the first line every run printed. Other backend failures (a CUDA plugin that
  does not load) still show."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith("Unable to initialize backend 'tpu'") and "libtpu.so" in message)


def configure_console() -> None:
  """The console of a command-line run: INFO from emo_jax, warnings from orbax (it reports
  every save and restore through absl at INFO), no probing noise from JAX."""
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)
  probing = logging.getLogger("jax._src.xla_bridge")
  if not any(isinstance(f, _NoMissingTpuRuntime) for f in probing.filters):
    probing.addFilter(_NoMissingTpuRuntime())


class RunLogger:
  """Scalars go to ``metrics.jsonl`` and (``tensorboard``) event files under ``workdir``."""

  def __init__(
    self, workdir: str, total_steps: int, enabled: bool = True, tensorboard: bool = True
  ):
    self.enabled = enabled
    self.total_steps = total_steps
    self.workdir = workdir
    self._start = time.time()
    self._start_step: int | None = None
    self._writer = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        # Imported only when used: tensorboardX imports torch (seconds of start-up).
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
      path = os.path.join(workdir, "metrics.jsonl")
      _drop_partial_last_line(path)
      self._jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close()).

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._writer is not None:
      for name, value in scalars.items():
        self._writer.add_scalar(name, float(value), int(step))
      self._writer.flush()

  def progress(self, step: int, loss: float, tokens_per_second: float) -> None:
    """One ``\\r``-updated line: step, loss, tokens/s and ETA."""
    if not self.enabled:
      return
    if self._start_step is None:
      self._start_step, self._start = step, time.time()
    done = step - self._start_step
    elapsed = time.time() - self._start
    remaining = (self.total_steps - step) * elapsed / done if done > 0 else float("nan")
    width = 30
    filled = int(width * step / max(self.total_steps, 1))
    bar = "#" * filled + "-" * (width - filled)
    eta = format_duration(remaining)
    sys.stderr.write(
      f"\r[{bar}] {step}/{self.total_steps} loss {loss:.4f} "
      f"{tokens_per_second:,.0f} tok/s ETA {eta}   "
    )
    sys.stderr.flush()

  def close(self) -> None:
    if self.enabled:
      sys.stderr.write("\n")
      if self._writer is not None:
        self._writer.close()
      self._jsonl.close()


def _drop_partial_last_line(path: str) -> None:
  """A run killed in the middle of a record leaves a line without its newline; the resumed
  run rewrites that step, so the fragment goes (appending to it would garble two records)."""
  if not os.path.exists(path):
    return
  with open(path, "rb+") as f:
    data = f.read()
    if data and not data.endswith(b"\n"):
      f.truncate(data.rfind(b"\n") + 1)


def format_duration(seconds: float) -> str:
  """``H:MM:SS`` (``MM:SS`` under an hour; ``--:--`` when unknown): an ETA must not wrap
  at an hour."""
  if not math.isfinite(seconds) or seconds < 0:
    return "--:--"
  minutes, secs = divmod(round(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of ``metrics.jsonl``; a resumed run's rewritten steps keep their last
  record (so the curve shows what the surviving run computed)."""
  path = os.path.join(workdir, "metrics.jsonl")
  by_step_and_keys: dict[tuple, dict] = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      by_step_and_keys[(record["step"], tuple(sorted(record)))] = record
  return sorted(by_step_and_keys.values(), key=lambda r: r["step"])


def plot_curves(workdir: str, out_name: str = "curves.png") -> str:
  """Training loss and validation perplexity against step, as a PNG in the workdir."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = read_metrics(workdir)
  series = {}
  for key in ("train/loss", "train/ce", "train/demd", "eval/perplexity"):
    points = [(r["step"], r[key]) for r in records if key in r]
    if points:
      series[key] = points
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for key in ("train/loss", "train/ce", "train/demd"):
    if key in series:
      axes[0].plot(*zip(*series[key]), label=key)
  axes[0].set_xlabel("step")
  axes[0].set_title("training objectives")
  axes[0].legend()
  if "eval/perplexity" in series:
    axes[1].plot(*zip(*series["eval/perplexity"]), marker="o")
    axes[1].set_yscale("log")
  axes[1].set_xlabel("step")
  axes[1].set_title("validation perplexity")
  fig.tight_layout()
  path = os.path.join(workdir, out_name)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
