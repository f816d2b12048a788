"""The study's accelerator table (issue #8): a larger base, one corpus, every objective.

``run`` does steps 1-3 of ``experiments/study.py`` in one process on one accelerator:
pretrain ``configs/study_gpu_base.py`` (GPT-2 small, same data and epoch as the CPU base),
fine-tune it on WikiText-2 raw with the five objectives under ``configs/study_gpu_finetune.py``
(the CPU grid's budget, learning rate and data order) and generate each run's MAUVE
continuations. One process, because on a GPU a ``main.py`` launch per point (start-up, model
load, compilation) would cost more than the point itself. The persistent compilation cache is
on so that later seeds can reuse each objective's compiled step (on the H200, training took
37–45 s a point for seed 0 and 29–33 s for seed 1; cache hits were not logged). Points run
seed-major (all objectives of seed 0, then seed 1, ...), so a budget that runs out leaves whole
seeds.
Workdirs and ``timings.jsonl`` have ``study_grid.py``'s layout, so ``study.py report`` reads them.

MAUVE's featurizer does not travel to the device, so ``score`` adds MAUVE/ROUGE/repetition
afterwards on any host (``main.py --mode score`` on each run):

    python experiments/study_gpu.py run --root /tmp/study_gpu --budget-minutes 8 \\
        --pack /tmp/study_gpu.tar.gz                  # on the GPU host
    python experiments/study_gpu.py unpack /tmp/study_gpu.tar.gz --root workdirs/study_gpu
    python experiments/study_gpu.py score --root workdirs/study_gpu
    python experiments/study.py report --root workdirs/study_gpu \\
        --corpora wikitext2_raw_carved --section study_gpu \\
        --update experiments/RESULTS.md --figures experiments/figures/gpu

``run --smoke`` runs every code path at a tiny size in seconds (a check before spending
accelerator time).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import shutil
import sys
import tarfile
import time

import ml_collections
from absl import flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.dirname(os.path.abspath(__file__))]

import study_grid

import study

CORPUS = "wikitext2_raw_carved"
# --smoke: the configs' smoke variant (configs/default.py: every code path, nothing at full
# size), the base reading Tiny Shakespeare (0.3M tokens) because tokenizing WikiText-2 + PTB
# (3.9M) would be most of it.
SMOKE_BASE = ["--config.data.corpus=tiny_shakespeare", "--config.train.num_samples=0"]
# Never packed: model weights (GBs at this size); each run's metrics and text are what matter.
UNPACKED = {"checkpoints", "best", "hf_export", "tensorboard", "jax_cache"}


def make_config(name, overrides, variant=""):
  """``configs/<name>.py:<variant>``'s config with ``--config.a.b=value`` overrides applied
  by the parser main.py uses (ml_collections' config_flags: each value parsed by its field's
  type); an unknown field or a malformed flag is an error naming it."""
  path = os.path.join(REPO, "configs", name + ".py") + (f":{variant}" if variant else "")
  defaults = importlib.import_module(f"configs.{name}").get_config(variant)
  for override in overrides:
    if not override.startswith("--config.") or "=" not in override:
      raise ValueError(f"expected --config.<field>=<value>, got {override!r}.")
    field = override.removeprefix("--config.").split("=", 1)[0]
    node = defaults
    for part in field.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise ValueError(f"unknown config field {field!r} in configs/{name}.py.")
      node = node[part]
  argv = ["study_gpu", f"--config={path}", *overrides]
  flag_values = flags.FlagValues()  # Private: the driver's own flags stay untouched.
  # sys_argv: config_flags finds the override flags in this list, not in sys.argv.
  config_flags.DEFINE_config_file(
    "config", flag_values=flag_values, lock_config=True, sys_argv=argv
  )
  flag_values(argv)
  return flag_values.config


def drop_checkpoints(workdir):
  from emo_jax import checkpointing

  for name in (checkpointing.PERIODIC_DIRECTORY, checkpointing.BEST_DIRECTORY):
    shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)


def pack(root, path):
  """Everything under ``root`` but weights and caches, as a .tar.gz written atomically (a run
  killed mid-pack leaves the previous pack whole)."""
  partial = path + ".partial"
  with tarfile.open(partial, "w:gz") as archive:
    archive.add(
      root,
      arcname=".",
      filter=lambda info: None if os.path.basename(info.name) in UNPACKED else info,
    )
  os.replace(partial, path)


def _timed(root, marker, action, device):
  start = time.time()
  action()
  if not os.path.exists(marker):
    raise RuntimeError(f"finished without writing {marker}.")
  seconds = time.time() - start
  study.record_timing(root, marker, seconds, device=device)
  return seconds


def run(root, objectives, seeds, budget_s, pack_path=None, smoke=False, keep_weights=False):
  """Base, then each (seed, objective) point trained and generated; returns the points done.

  A point starts only if the slowest point so far would still end inside ``budget_s``
  (counted from the call); finished points (their markers exist) are skipped.
  """
  import jax

  from emo_jax import evaluate, train

  start = time.time()
  os.makedirs(root, exist_ok=True)
  # Seeds after the first reuse each objective's executables; the eval step is shared.
  jax.config.update("jax_compilation_cache_dir", os.path.join(root, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  device = jax.devices()[0].device_kind
  print(
    f"study_gpu: {jax.device_count()} x {device}, {len(os.sched_getaffinity(0))} CPU "
    f"cores, jax {jax.__version__}",
    flush=True,
  )

  base = os.path.join(root, "base")
  base_marker = os.path.join(base, "results.json")
  if not os.path.exists(base_marker):
    config = make_config("study_gpu_base", SMOKE_BASE if smoke else [], "smoke" if smoke else "")
    seconds = _timed(root, base_marker, lambda: train.train_and_evaluate(config, base), device)
    print(f"study_gpu: base trained in {seconds:.0f} s", flush=True)

  done, slowest = [], 0.0
  for seed in seeds:
    for objective in objectives:
      workdir = study_grid.run_dir(root, CORPUS, objective, seed)
      trained = os.path.join(workdir, "results.json")
      evaluated = os.path.join(workdir, "eval.json")
      if os.path.exists(evaluated):
        continue
      elapsed = time.time() - start
      if elapsed + slowest > budget_s:
        print(
          f"study_gpu: budget: {elapsed:.0f} s spent, a point takes up to {slowest:.0f} s; "
          f"stopping before {objective} seed {seed}.",
          flush=True,
        )
        return done
      flags = [
        f"--config.model.pretrained={os.path.join(base, 'hf_export')}",
        f"--config.data.corpus={CORPUS}",
        f"--config.seed={seed}",
        *study_grid.OBJECTIVES[objective],
      ]
      config = make_config("study_gpu_finetune", flags, "smoke" if smoke else "")
      point_start = time.time()
      if not os.path.exists(trained):
        _timed(root, trained, functools.partial(train.train_and_evaluate, config, workdir), device)
      _timed(
        root, evaluated, functools.partial(evaluate.evaluate_and_report, config, workdir), device
      )
      slowest = max(slowest, time.time() - point_start)
      if not keep_weights:
        drop_checkpoints(workdir)
      if pack_path:
        pack(root, pack_path)
      done.append((objective, seed))
      print(
        f"study_gpu: {objective} seed {seed} done in {time.time() - point_start:.0f} s "
        f"({time.time() - start:.0f} s in all)",
        flush=True,
      )
  return done


def unpack(path, root):
  os.makedirs(root, exist_ok=True)
  with tarfile.open(path) as archive:
    archive.extractall(root, filter="data")
  # Markers in timings.jsonl name the device's root; study.py's report wants this one.
  timings = os.path.join(root, "timings.jsonl")
  if os.path.exists(timings):
    with open(timings) as f:
      records = [json.loads(line) for line in f]
    for record in records:
      relative = record["marker"].split(os.sep)
      for anchor in ("base", CORPUS):
        if anchor in relative:
          record["marker"] = os.path.join(
            os.path.abspath(root), *relative[relative.index(anchor) :]
          )
          break
    with open(timings, "w") as f:
      f.writelines(json.dumps(record) + "\n" for record in records)


def score(root, objectives, seeds):
  """``--mode score`` (MAUVE, ROUGE, repetition) for each generated, unscored run."""
  from emo_jax import evaluate
  from emo_jax.evaluation import featurizers

  featurizer = None  # Loaded once; every run's human continuations are featurized once.
  for seed in seeds:
    for objective in objectives:
      workdir = study_grid.run_dir(root, CORPUS, objective, seed)
      path = os.path.join(workdir, "eval.json")
      if not os.path.exists(path):
        print(f"not generated: {workdir}", file=sys.stderr)
        continue
      with open(path) as f:
        if "mauve" in json.load(f):
          continue
      config = make_config("study_gpu_finetune", [f"--config.seed={seed}"])
      if featurizer is None:
        featurizer = featurizers.MemoizedFeaturizer(
          featurizers.make_featurizer(config.eval.featurizer)
        )
      evaluate.score_generations(config, workdir, featurizer)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("action", choices=["run", "unpack", "score"])
  parser.add_argument("archive", nargs="?", help="unpack: the .tar.gz that run --pack wrote")
  parser.add_argument("--root", default=os.path.join(REPO, "workdirs", "study_gpu"))
  parser.add_argument(
    "--objectives",
    nargs="+",
    default=list(study_grid.OBJECTIVES),
    choices=list(study_grid.OBJECTIVES),
  )
  parser.add_argument("--seeds", nargs="+", type=int, default=list(study_grid.SEEDS))
  parser.add_argument(
    "--budget-minutes",
    type=float,
    default=float("inf"),
    help="run: start no point that would end after this",
  )
  parser.add_argument(
    "--pack",
    help="run: after each point, write the metrics, generations "
    "and logs (no weights) into this .tar.gz",
  )
  parser.add_argument("--smoke", action="store_true", help="run: tiny sizes, seconds")
  parser.add_argument(
    "--keep-weights",
    action="store_true",
    help="run: keep each run's checkpoints (default: drop after evaluation)",
  )
  args = parser.parse_args(argv)
  from emo_jax import run_logging

  run_logging.configure_console()
  if args.action == "run":
    run(
      args.root,
      args.objectives,
      args.seeds,
      args.budget_minutes * 60,
      args.pack,
      args.smoke,
      args.keep_weights,
    )
  elif args.action == "unpack":
    if not args.archive:
      parser.error("unpack needs the archive's path.")
    unpack(args.archive, args.root)
  else:
    score(args.root, args.objectives, args.seeds)


if __name__ == "__main__":
  main()
