"""The EMO-vs-MLE study (issue #8): base model, fine-tuning grid, evaluation, report.

    python experiments/study.py commands              # print every command of every stage
    python experiments/study.py run base              # 1. pretrain the MLE base model
    python experiments/study.py run finetune          # 2. corpora x objectives x seeds
    python experiments/study.py run eval              # 3. --mode eval on every run
    python experiments/study.py run                   # 1-3, each point evaluated when trained
    python experiments/study.py report                # 4. tables, figures, timings
    python experiments/study.py report --update experiments/RESULTS.md \
        --figures experiments/figures                 #    ... written into RESULTS.md

``--setting smollm2`` is study v2 (issue #17): no base stage (the packaged SmolLM2-135M is
the base), ``configs/smollm2_study.py`` for every point, workdirs under
``workdirs/study_smollm2``; ``--setting cpu`` (the default) is the first study's.

``run`` executes the stage's commands one after another, skips points that are finished
(``results.json`` for training, ``eval.json`` for evaluation), resumes half-finished ones
(the trainer resumes from its workdir) and appends each command's wall-clock to
``<root>/timings.jsonl``. ``--corpora/--objectives/--seeds`` narrow the grid; anything after
``--`` is passed to every ``main.py`` call of the stage.

The grid and its paths are in ``study_grid.py``; ``report`` is ``study_report.py``.
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time

import child_process
import study_report
from provenance import current_commit
from study_grid import (  # What the study is; shared with the report.
  ARCHIVED,
  BASE,
  CORPORA,
  DECODING,
  FEWSHOT,
  FEWSHOT_FILE,
  OBJECTIVES,
  REPO,
  SEEDS,
  SETTINGS,
  TEMPERATURES,
  Setting,
  base_model,
  decoding_dir,
  run_dir,
  setting_spec,
  with_options,
)

# ----------------------------------------------------------------------------------------
# Commands: one ``main.py`` / ``fewshot.py`` call per stage of a point, with its done marker.
# ----------------------------------------------------------------------------------------


def main_py(config, workdir, *overrides, variant=""):
  """The ``main.py`` command for ``configs/<config>`` (its ``variant``) in ``workdir``."""
  return [
    sys.executable,
    os.path.join(REPO, "main.py"),
    "--config",
    os.path.join(REPO, "configs", config) + (f":{variant}" if variant else ""),
    "--workdir",
    workdir,
    *overrides,
  ]


def _cost_flags(spec: Setting) -> list[str]:
  """A ready-made base's head is every evaluation's DEMD cost (the cost EMO trains with)."""
  return [f"--config.eval.cost_model={spec.pretrained}"] if spec.pretrained else []


def point_evaluation_commands(stage, root, corpus, objective, seed, extra, spec):
  """``[(command, done_marker)]`` of the ``decoding`` or ``fewshot`` stage for one point
  (none where the stage's :class:`PointEvaluation` does not cover it)."""
  workdir = run_dir(root, corpus, objective, seed)
  model = spec.pretrained if objective == BASE else os.path.join(workdir, "hf_export")
  if stage == "decoding" and corpus in DECODING.corpora and objective in DECODING.objectives:
    return [
      (
        main_py(
          spec.finetune_config,
          decoding_dir(root, corpus, objective, seed, temperature),
          "--mode",
          "eval",
          f"--config.eval.model={model}",
          f"--config.data.corpus={corpus}",
          f"--config.seed={seed}",
          f"--config.eval.temperature={temperature}",
          *_cost_flags(spec),
          *extra,
          variant=spec.variant,
        ),
        os.path.join(decoding_dir(root, corpus, objective, seed, temperature), "eval.json"),
      )
      for temperature in TEMPERATURES
    ]
  if stage == "fewshot" and corpus in FEWSHOT.corpora and objective in FEWSHOT.objectives:
    out = os.path.join(workdir, FEWSHOT_FILE)
    command = [
      sys.executable,
      os.path.join(REPO, "experiments", "fewshot.py"),
      "--out",
      out,
      "--model",
      f"{objective}={model}",
      *spec.fewshot_flags,
    ]
    return [(command, out)]
  return []


def stage_commands(
  stage, root, corpora=CORPORA, objectives=tuple(OBJECTIVES), seeds=SEEDS, extra=(), setting="cpu"
):
  """``[(command, done_marker)]`` of one stage of study ``setting`` (a name in
  :data:`SETTINGS`, or a :class:`Setting`)."""
  spec = setting_spec(setting)
  base = os.path.join(root, "base")
  if stage in ("decoding", "fewshot"):
    if not spec.point_evaluations:
      raise ValueError(f"study setting {spec.default_root!r} has no {stage} stage.")
    points = [(c, o, s) for c in corpora for o in objectives for s in seeds]
    if spec.base_config is None:
      points += [(c, BASE, 0) for c in corpora]
    return [
      command
      for corpus, objective, seed in points
      for command in point_evaluation_commands(stage, root, corpus, objective, seed, extra, spec)
    ]
  if stage == "base":
    if spec.base_config is None:  # Ready-made: nothing to pretrain; evaluate it untouched.
      return [
        (
          main_py(
            spec.finetune_config,
            run_dir(root, corpus, BASE, 0),
            "--mode",
            "eval",
            f"--config.eval.model={spec.pretrained}",
            f"--config.data.corpus={corpus}",
            "--config.seed=0",
            *_cost_flags(spec),
            *extra,
            variant=spec.variant,
          ),
          os.path.join(run_dir(root, corpus, BASE, 0), "eval.json"),
        )
        for corpus in corpora
      ]
    base_command = main_py(spec.base_config, base, *extra, variant=spec.variant)
    return [(base_command, os.path.join(base, "results.json"))]
  out = []
  for corpus in corpora:
    for objective in objectives:
      for seed in seeds:
        workdir = run_dir(root, corpus, objective, seed)
        common = [
          f"--config.model.pretrained={base_model(spec, root)}",
          f"--config.data.corpus={corpus}",
          f"--config.seed={seed}",
          *OBJECTIVES[objective],
          *_cost_flags(spec),
        ]
        if stage == "finetune":
          out.append(
            (
              main_py(spec.finetune_config, workdir, *common, *extra, variant=spec.variant),
              os.path.join(workdir, "results.json"),
            )
          )
        elif stage == "eval":
          out.append(
            (
              main_py(
                spec.finetune_config,
                workdir,
                "--mode",
                "eval",
                *common,
                *extra,
                variant=spec.variant,
              ),
              os.path.join(workdir, "eval.json"),
            )
          )
        else:
          raise ValueError(f"unknown stage {stage!r}: base, finetune, eval, decoding or fewshot.")
  return out


# ----------------------------------------------------------------------------------------
# Running: each command in turn, skipping finished ones, its wall-clock recorded.
# ----------------------------------------------------------------------------------------


def record_timing(root, marker, seconds, **extra):
  """Appends one command's wall-clock to ``<root>/timings.jsonl`` (read by ``read_timings``),
  with the CPU cores it could use and ``extra`` fields (``study_gpu.py``: the device)."""
  with open(os.path.join(root, "timings.jsonl"), "a") as f:
    f.write(
      json.dumps(
        {"marker": marker, "seconds": seconds, "cores": len(os.sched_getaffinity(0)), **extra}
      )
      + "\n"
    )


# How much of a command's time a SIGKILL (or a machine that goes away) can leave unrecorded.
HEARTBEAT_SECONDS = 30.0


def _in_flight_path(done):
  """The running command's heartbeat, ``{"seconds", "cores"}`` so far, beside its marker."""
  return done + ".in_flight.json"


def _heartbeat(path, start, stop, interval):
  # Not checkpointing.write_json_atomically: importing it loads jax into a driver that sits
  # beside every training run.
  while not stop.wait(interval):
    with open(path + ".tmp", "w") as f:
      json.dump({"seconds": time.time() - start, "cores": len(os.sched_getaffinity(0))}, f)
    os.replace(path + ".tmp", path)


def _record_killed_invocation(root, done):
  """An invocation killed without a chance to record its time (SIGKILL) left its last
  heartbeat: that time counts towards the command, as an interrupted one's does."""
  path = _in_flight_path(done)
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      beat = json.load(f)
    record_timing(root, done, beat["seconds"], finished=False, killed=True, cores=beat["cores"])
  except (OSError, ValueError, KeyError) as error:  # Unreadable: say so, count nothing.
    print(f"unreadable heartbeat {path} ({error}); its time is not counted", flush=True)
  os.remove(path)


def run_stage(commands, root, heartbeat_seconds=HEARTBEAT_SECONDS):
  """Runs each ``(command, done_marker)`` whose marker does not exist yet, appending its
  wall-clock to ``<root>/timings.jsonl``: finished, interrupted (an exception or SIGTERM), or,
  for an invocation that was killed outright, its last heartbeat (every
  ``heartbeat_seconds``), recorded when the command is next run."""
  os.makedirs(root, exist_ok=True)
  child_process.raise_on_sigterm()  # So the except block below records interrupted time.
  for command, done in commands:
    if os.path.exists(done):
      print(f"done already: {done}", flush=True)
      continue
    _record_killed_invocation(root, done)
    print(shlex.join(command), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(done)), exist_ok=True)
    start, stop = time.time(), threading.Event()
    beat = threading.Thread(
      target=_heartbeat,
      args=(_in_flight_path(done), start, stop, heartbeat_seconds),
      daemon=True,
    )
    beat.start()
    try:
      returncode = child_process.run(command)
      if returncode:  # A preempted training run exits non-zero.
        raise subprocess.CalledProcessError(returncode, command)
    except BaseException:
      # Interrupted (SIGTERM, Ctrl-C, a crash): its time still counts towards the point,
      # which the next invocation resumes (read_timings adds the two).
      record_timing(root, done, time.time() - start, finished=False)
      raise
    finally:
      stop.set()
      beat.join()
      if os.path.exists(_in_flight_path(done)):
        os.remove(_in_flight_path(done))
    if not os.path.exists(done):
      raise RuntimeError(f"{shlex.join(command)} exited 0 but did not write {done}.")
    record_timing(root, done, time.time() - start)


# ----------------------------------------------------------------------------------------
# Archive: what a finished point leaves in the repository.
# ----------------------------------------------------------------------------------------

# Small files the report needs, relative to a point's workdir (checkpoints and samples stay):
# glob patterns, one per file or kind of file.
ARCHIVED_FILES = (
  "eval.json",
  "metrics.jsonl",
  "best_metric.json",
  FEWSHOT_FILE,
  os.path.join("decoding", "*", "eval.json"),
)


def workdirs_dir(setting: str, smoke: bool = False) -> str:
  """Where ``run`` puts ``setting``'s workdirs by default (a smoke run's beside them)."""
  return os.path.join(REPO, "workdirs", SETTINGS[setting].default_root + "_smoke" * smoke)


def archive_dir(setting: str) -> str | None:
  name = SETTINGS[setting].archive
  return os.path.join(REPO, "experiments", "results", name) if name else None


def is_archived(archive, corpus, objective, seed) -> bool:
  return bool(archive) and os.path.exists(
    os.path.join(run_dir(archive, corpus, objective, seed), ARCHIVED)
  )


def _archived_name(name: str) -> bool:
  """Whether a file of a point's workdir (a path relative to it) belongs in the archive: it
  matches a pattern of :data:`ARCHIVED_FILES` as :func:`archive_point`'s ``glob`` would, one
  path component per pattern component (``*`` never crosses a separator)."""
  parts = name.split(os.sep)
  return any(
    len(parts) == len(pattern_parts) and all(map(fnmatch.fnmatchcase, parts, pattern_parts))
    for pattern_parts in (pattern.split(os.sep) for pattern in ARCHIVED_FILES)
  )


def archive_gaps(root, archive, point, commands) -> list[str]:
  """The archivable files that ``point``'s ``commands`` write and its archive lacks
  (relative to the point's directory): evaluations the grid gained after the point was
  archived (issue #17's decoding comparison, widened to TaiLr and MixCE). A file counts as
  archived once ``point.json`` lists it, which is written last: an addition cut short is
  made again."""
  with open(os.path.join(run_dir(archive, *point), ARCHIVED)) as f:
    archived = set(json.load(f)["files"])
  workdir = run_dir(root, *point)
  names = (os.path.relpath(done, workdir) for _, done in commands)
  return [name for name in names if _archived_name(name) and name not in archived]


def archive_point(root, archive, corpus, objective, seed, commit, only=None):
  """Copies a finished point's small files from ``root`` into ``archive`` (same layout), with
  its ``timings.jsonl`` records (markers made relative to the root), so that the report can
  be rebuilt from the repository after the workdirs are gone, stamped with ``commit`` (the
  code that made the files: :func:`current_commit` when the point started). Returns the
  archived files.

  ``only``: add just these files (relative to the point's directory) to a point archived
  before, with their timings; its archived files stay as they are and ``point.json`` lists
  the addition under ``"added"`` with its own commit."""
  source = os.path.abspath(run_dir(root, corpus, objective, seed))
  target = run_dir(archive, corpus, objective, seed)
  if only is None:
    names = [
      os.path.relpath(path, source)
      for pattern in ARCHIVED_FILES
      for path in sorted(glob.glob(os.path.join(source, pattern)))
    ]
    if "eval.json" not in names:
      raise FileNotFoundError(f"{source} has no eval.json: evaluate the point before archiving it.")
  else:
    names = list(only)
    absent = [name for name in names if not os.path.exists(os.path.join(source, name))]
    if absent or not os.path.exists(os.path.join(target, ARCHIVED)):
      raise FileNotFoundError(
        f"cannot add {absent or names} to {target}: "
        + ("not in " + source if absent else "the point is not archived yet")
      )
  for name in names:
    os.makedirs(os.path.dirname(os.path.join(target, name)), exist_ok=True)
    shutil.copyfile(os.path.join(source, name), os.path.join(target, name))
  # The point's records (an addition: only its files', after those archived before).
  added = {os.path.join(source, name) for name in names}
  timings = os.path.join(root, "timings.jsonl")
  records = []
  if os.path.exists(timings):
    with open(timings) as f:
      for line in f:
        record = json.loads(line)
        marker = os.path.abspath(record["marker"])
        if marker.startswith(source + os.sep) and (only is None or marker in added):
          records.append({**record, "marker": os.path.relpath(record["marker"], root)})
  with open(os.path.join(target, "timings.jsonl"), "a" if only is not None else "w") as f:
    f.writelines(json.dumps(record) + "\n" for record in records)
  from emo_jax import checkpointing  # Here, not at the top: see _heartbeat.

  if only is None:
    summary = {"commit": commit, "files": [*names, "timings.jsonl"]}
  else:
    with open(os.path.join(target, ARCHIVED)) as f:
      summary = json.load(f)
    summary["files"] += [name for name in names if name not in summary["files"]]
    summary.setdefault("added", []).append({"commit": commit, "files": names})
  checkpointing.write_json_atomically(os.path.join(target, ARCHIVED), summary)
  return names if only is not None else summary["files"]


def run_point(root, archive, point, commands, prune_checkpoints=False):
  """Runs one point's ``commands`` (a finished command is skipped, an interrupted one
  resumes), then archives it with the commit checked out when this invocation started it (a
  ``run`` over many points may outlive a commit). ``point`` is ``(corpus, objective, seed)``,
  or None for commands that are not a point (a base to pretrain): those are run, never
  archived. ``prune_checkpoints``: delete an archived point's periodic checkpoints (only a
  resumed run needs them).

  A point already in ``archive`` is skipped whole, unless the grid has since gained an
  evaluation it lacks: that evaluation runs from the point's workdir and is added to the
  archive. Where the workdir cannot make it without training or evaluating the point again
  (the workdir is gone), the point is skipped with a message: its archive is never replaced."""
  if point and is_archived(archive, *point):
    missing = archive_gaps(root, archive, point, commands)
    if not missing:
      print(f"archived already: {run_dir(archive, *point)}", flush=True)
      return
    workdir = run_dir(root, *point)
    rerun = [
      os.path.relpath(done, workdir)
      for _, done in commands
      if not os.path.exists(done) and os.path.relpath(done, workdir) not in missing
    ]
    if rerun:
      print(
        f"archived {run_dir(archive, *point)} lacks {', '.join(missing)}, but {workdir} "
        f"would first have to remake {', '.join(rerun)}: skipped",
        flush=True,
      )
      return
    commit = current_commit()
    run_stage(commands, root)
    archive_point(root, archive, *point, commit=commit, only=missing)
    print(f"added to {run_dir(archive, *point)}: {', '.join(missing)}", flush=True)
    return
  commit = current_commit()
  run_stage(commands, root)
  if point and archive:
    archive_point(root, archive, *point, commit=commit)
    print(f"archived: {run_dir(archive, *point)}", flush=True)
    if prune_checkpoints:
      from emo_jax import checkpointing

      freed = checkpointing.remove_periodic_checkpoints(run_dir(root, *point))
      print(f"pruned: {freed / 2**30:.1f} GiB of periodic checkpoints", flush=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("action", choices=["commands", "run", "report"])
  parser.add_argument(
    "stage", nargs="?", choices=["base", "finetune", "eval", "decoding", "fewshot"]
  )
  parser.add_argument(
    "--setting",
    default="cpu",
    choices=sorted(SETTINGS),
    help="cpu: the 16M base pretrained here (issue #8); smollm2: the "
    "packaged SmolLM2-135M (issue #17)",
  )
  parser.add_argument("--root", help="default: workdirs/<the setting's folder>")
  parser.add_argument("--corpora", nargs="+", default=list(CORPORA))
  parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
  parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
  parser.add_argument(
    "--archive",
    help="run: copy each finished point's small files (evaluations, logs, timings) here, "
    "and skip points already there; default experiments/results/<the setting's archive>",
  )
  parser.add_argument("--no_archive", action="store_true", help="run: archive nothing")
  parser.add_argument(
    "--prune_checkpoints",
    action="store_true",
    help="run: once a point is archived, delete its periodic (resume) checkpoints; its best "
    "checkpoint and export stay (a SmolLM2 point's periodic ones are ~3 GB)",
  )
  parser.add_argument(
    "--smoke",
    action="store_true",
    help="run/commands: every stage at the configs' smoke size (seconds per command; "
    "workdirs under workdirs/<folder>_smoke, nothing archived unless --archive is given)",
  )
  parser.add_argument(
    "--pretrained",
    help="run/commands: start from this ready-made base instead of the setting's (any model "
    "source; nothing archived unless --archive is given)",
  )
  parser.add_argument(
    "--summary", help="report: also write the machine-readable summary (JSON) to this file"
  )
  parser.add_argument("--figures", help="report: write one PNG per corpus into this folder")
  parser.add_argument(
    "--update",
    help=f"report: write into this file between the markers {study_report.BEGIN} and {study_report.END} instead of printing",
  )
  parser.add_argument(
    "--section",
    default="study",
    help="report: the markers' name, e.g. "
    "study_gpu for <!-- study_gpu:begin --> ... <!-- study_gpu:end -->",
  )
  argv = sys.argv[1:] if argv is None else list(argv)
  # Everything after "--" goes to main.py (argparse cannot take it after the grid options).
  extra = argv[argv.index("--") + 1 :] if "--" in argv else []
  args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
  args.root = args.root or workdirs_dir(args.setting, args.smoke)
  grid = dict(
    corpora=args.corpora,
    objectives=args.objectives,
    seeds=args.seeds,
    extra=extra,
    setting=None,
  )
  try:
    grid["setting"] = with_options(args.setting, args.smoke, args.pretrained)
  except ValueError as error:
    parser.error(str(error))
  ready_made_base = SETTINGS[args.setting].base_config is None
  if args.action == "report":
    objectives = [BASE, *args.objectives] if ready_made_base else args.objectives
    table = study_report.collect(args.root, args.corpora, objectives, args.seeds)
    relative_to = os.path.dirname(os.path.abspath(args.update)) if args.update else None
    text = study_report.full_report(
      args.root,
      table,
      args.figures,
      relative_to,
      full_grid=len(args.corpora) * len(args.objectives) * len(args.seeds),
    )
    if args.update:
      study_report.update_between_markers(args.update, text, args.section)
    else:
      print(text)
    if args.summary:
      with open(args.summary, "w") as f:
        json.dump(study_report.summary(args.root, table, args.seeds), f, indent=1, sort_keys=True)
        f.write("\n")
    return
  # A smoke run or another base must not land among the setting's archived results.
  own_archive = None if (args.smoke or args.pretrained) else archive_dir(args.setting)
  archive = None if args.no_archive else (args.archive or own_archive)
  if args.stage:
    groups = [(None, stage_commands(args.stage, args.root, **grid))]
  else:
    groups = point_groups(args.root, **grid)
  if args.action == "commands":
    for _, commands in groups:
      for command, _ in commands:
        print(shlex.join(command))
    return
  for point, commands in groups:
    run_point(args.root, archive, point, commands, args.prune_checkpoints)


def point_groups(root, corpora, objectives, seeds, extra, setting):
  """``[(point, commands)]`` of ``run`` without a stage: every point trained, evaluated and
  given its point evaluations in a row, so an interrupted study leaves finished points (and,
  with an archive, archived ones; ``point`` is ``(corpus, objective, seed)``, None for the
  pretrained base of a study that has one)."""
  spec = setting_spec(setting)
  grid = dict(extra=extra, setting=setting)
  groups = []
  for corpus in corpora:
    for objective in objectives:
      for seed in seeds:
        one = dict(corpora=[corpus], objectives=[objective], seeds=[seed], **grid)
        commands = stage_commands("finetune", root, **one) + stage_commands("eval", root, **one)
        if spec.point_evaluations:
          for stage in ("decoding", "fewshot"):
            commands += point_evaluation_commands(stage, root, corpus, objective, seed, extra, spec)
        groups.append(((corpus, objective, seed), commands))
  if spec.base_config is not None:
    # A pretrained base comes first: every point needs it.
    return [(None, stage_commands("base", root, corpora, extra=extra, setting=setting)), *groups]
  # A ready-made base's evaluation is a reference row: after the fine-tuned points.
  for corpus in corpora:
    commands = stage_commands("base", root, [corpus], extra=extra, setting=setting)
    if spec.point_evaluations:
      for stage in ("decoding", "fewshot"):
        commands += point_evaluation_commands(stage, root, corpus, BASE, 0, extra, spec)
    groups.append(((corpus, BASE, 0), commands))
  return groups


if __name__ == "__main__":
  main()
