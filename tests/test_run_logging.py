"""The run logger's pieces that people read: the progress line's ETA and the metric log."""

import json
import logging
import math
import os

import pytest

from emo_jax import run_logging


@pytest.mark.parametrize(
  "seconds, expected",
  [
    (0.0, "00:00"),
    (59.4, "00:59"),
    (61.0, "01:01"),
    (3599.0, "59:59"),
    (3600.0, "1:00:00"),  # Used to print "00:00": the hours were dropped.
    (6680.0, "1:51:20"),
    (90061.0, "25:01:01"),
    (math.nan, "--:--"),
    (math.inf, "--:--"),
    (-1.0, "--:--"),
  ],
)
def test_format_duration(seconds, expected):
  assert run_logging.format_duration(seconds) == expected


def test_read_metrics_keeps_the_last_record_of_a_rewritten_step(tmp_path):
  records = [
    {"step": 10, "train/loss": 3.0},
    {"step": 20, "train/loss": 2.0},
    {"step": 20, "eval/perplexity": 9.0},
    {"step": 20, "train/loss": 2.5},
  ]  # Resumed run recomputed step 20.
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  got = run_logging.read_metrics(str(tmp_path))
  assert [r["step"] for r in got] == [10, 20, 20]
  assert {"step": 20, "train/loss": 2.5} in got and {"step": 20, "train/loss": 2.0} not in got


def test_a_record_cut_off_by_a_kill_is_dropped_when_the_run_resumes(tmp_path):
  whole = json.dumps({"step": 1, "train/loss": 3.0}) + "\n"
  (tmp_path / "metrics.jsonl").write_text(whole + '{"step": 2, "train/lo')  # SIGKILL here.
  logger = run_logging.RunLogger(str(tmp_path), total_steps=4)
  logger.write(2, {"train/loss": 2.5})
  logger.close()
  assert run_logging.read_metrics(str(tmp_path)) == [
    {"step": 1, "train/loss": 3.0},
    {"step": 2, "train/loss": 2.5},
  ]


@pytest.mark.parametrize("tensorboard", [True, False])
def test_tensorboard_events_only_when_asked(tmp_path, tensorboard):
  logger = run_logging.RunLogger(str(tmp_path), total_steps=2, tensorboard=tensorboard)
  logger.write(1, {"train/loss": 3.0})
  logger.close()
  assert run_logging.read_metrics(str(tmp_path)) == [{"step": 1, "train/loss": 3.0}]
  events = (tmp_path / "tensorboard").is_dir() and [
    name for name in os.listdir(tmp_path / "tensorboard") if "tfevents" in name
  ]
  assert bool(events) == tensorboard


def test_console_hides_only_the_missing_tpu_runtime():
  run_logging.configure_console()
  run_logging.configure_console()  # Idempotent: one filter.
  probing = logging.getLogger("jax._src.xla_bridge")
  assert len(probing.filters) == 1

  def shown(message):
    record = probing.makeRecord(probing.name, logging.INFO, __file__, 1, message, (), None)
    return all(f.filter(record) for f in probing.filters)

  assert not shown(
    "Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so: "
    "libtpu.so: cannot open shared object file: No such file or directory"
  )
  assert shown("Unable to initialize backend 'cuda': module 'jax_plugins' has no attribute")
  assert shown("Unable to initialize backend 'tpu': UNAVAILABLE: TPU in use by process 12")
