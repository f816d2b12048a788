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
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPORA = ("wikitext2_raw_carved", "ag_news", "tiny_shakespeare")
# Objective name -> its loss overrides. Everything else is identical across objectives.
OBJECTIVES = {
  "mle": ["--config.loss.name=mle"],
  "emo": ["--config.loss.name=emo", "--config.loss.weighting=mle"],
  "emo_demd": ["--config.loss.name=emo", "--config.loss.weighting=demd"],
  "tailr": ["--config.loss.name=tailr"],
  "mixce": ["--config.loss.name=mixce"],
}
SEEDS = (0, 1, 2)
# The untouched ready-made base's row in a study without a base stage: one evaluation per
# corpus (its workdir is <root>/<corpus>/base/seed0), no fine-tuning, no paired test.
BASE = "base"
# timings.jsonl records written before the driver logged cores ran unpinned on the 2-core
# machine every study run so far used.
UNRECORDED_CORES = 2
# One colour per row in every figure, so an objective looks the same across them.
COLORS = {name: f"C{i}" for i, name in enumerate((BASE, *OBJECTIVES))}
# Metric name in the report -> (path into eval.json, higher is better).
METRICS = {
  "perplexity": (("perplexity",), False),
  "MAUVE": (("mauve", "mean"), True),
  "ROUGE-L": (("rouge", "rougeL"), True),
  "rep-2": (("repetition", "rep-2", "model"), False),
  # Under the pretrained base's head for every row (eval.cost_model); evaluations written
  # before it was measured (the CPU study's) show "–".
  "mean DEMD": (("mean_demd",), False),
}
# Metrics whose verdict is the distance to the human continuations' value (lower is better)
# rather than the value itself: a model can repeat too little as well as too much (SmolLM2
# fine-tuned with MLE samples rep-2 0.025 at T = 1 against WikiText's human 0.039).
HUMAN_REFERENCE = {"rep-2": ("repetition", "rep-2", "human")}


@dataclasses.dataclass(frozen=True)
class Setting:
  """Where a study's fine-tuning starts and with which config, and what else each point's
  weights are evaluated on before its workdir may go (:data:`DECODING`, :data:`FEWSHOT`)."""

  finetune_config: str
  base_config: str | None  # Pretrained here by the "base" stage; None: a ready-made base.
  pretrained: str | None  # The ready-made base (any model source) when base_config is None.
  default_root: str  # Under workdirs/.
  point_evaluations: bool = False  # The decoding and few-shot stages.
  archive: str | None = None  # Where finished points are archived, under experiments/results/.
  variant: str = ""  # The configs' variant: "smoke" (``--smoke``) runs every stage tiny.
  fewshot_flags: tuple[str, ...] = ()  # Extra experiments/fewshot.py flags (``--smoke``).


@dataclasses.dataclass(frozen=True)
class PointEvaluation:
  """An evaluation that needs a fine-tuned point's weights, run on some of the grid."""

  corpora: tuple[str, ...]
  objectives: tuple[str, ...]  # BASE included: the untouched base gets it too.


# Issue #17's decoding comparison: the main evaluation samples at temperature 1; these
# temperatures are sampled again from the exported best model, each into its own workdir.
DECODING = PointEvaluation(("wikitext2_raw_carved",), ("mle", "emo"))
TEMPERATURES = (0.7, 0.85, 1.15)
# Issue #17's few-shot downstream: the base and the WikiText-2-tuned MLE and EMO models.
FEWSHOT = PointEvaluation(("wikitext2_raw_carved",), (BASE, "mle", "emo", "emo_demd"))


SETTINGS = {
  # Issue #8: a 16M GPT-2 pretrained here, then fine-tuned (experiments/RESULTS.md).
  "cpu": Setting("study_finetune.py", "study_base.py", None, "study"),
  # Issue #17: the packaged SmolLM2-135M, the paper's continual fine-tuning setting.
  "smollm2": Setting(
    "smollm2_study.py",
    None,
    "smollm2-135m",
    "study_smollm2",
    point_evaluations=True,
    archive="smollm2",
  ),
}


def setting_spec(setting: str | Setting) -> Setting:
  """A :class:`Setting` from its name in :data:`SETTINGS`, or as given (``main`` builds one
  for ``--smoke`` / ``--pretrained``)."""
  return setting if isinstance(setting, Setting) else SETTINGS[setting]


def with_options(setting: str, smoke: bool = False, pretrained: str | None = None) -> Setting:
  """``setting`` at smoke size (the configs' ``:smoke`` variant, 4 few-shot queries per
  task) and/or from another ready-made base (any model source; the evaluation's DEMD cost is
  that base's head too)."""
  spec = SETTINGS[setting]
  if pretrained:
    if spec.base_config is not None:
      raise ValueError(
        f"study setting {setting!r} pretrains its own base: --pretrained is for "
        "settings that start from a ready-made one."
      )
    spec = dataclasses.replace(spec, pretrained=pretrained)
  if smoke:
    spec = dataclasses.replace(spec, variant="smoke", fewshot_flags=("--max_queries", "4"))
  return spec


def base_model(setting: Setting, root: str) -> str:
  """The model every grid point starts from."""
  return setting.pretrained or os.path.join(root, "base", "hf_export")


def _main_py(config, workdir, *overrides, variant=""):
  return [
    sys.executable,
    os.path.join(REPO, "main.py"),
    "--config",
    os.path.join(REPO, "configs", config) + (f":{variant}" if variant else ""),
    "--workdir",
    workdir,
    *overrides,
  ]


def run_dir(root, corpus, objective, seed):
  return os.path.join(root, corpus, objective, f"seed{seed}")


def decoding_dir(root, corpus, objective, seed, temperature):
  return os.path.join(run_dir(root, corpus, objective, seed), "decoding", f"T{temperature:.2f}")


FEWSHOT_FILE = "fewshot.json"


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
        _main_py(
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
          _main_py(
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
    base_command = _main_py(spec.base_config, base, *extra, variant=spec.variant)
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
              _main_py(spec.finetune_config, workdir, *common, *extra, variant=spec.variant),
              os.path.join(workdir, "results.json"),
            )
          )
        elif stage == "eval":
          out.append(
            (
              _main_py(
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


def _raise_on_sigterm(signum, frame):
  raise SystemExit(128 + signum)  # An exception, so run_stage records the interrupted time.


def run_stage(commands, root):
  os.makedirs(root, exist_ok=True)
  # Python's default SIGTERM ends the process without running except blocks.
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
  for command, done in commands:
    if os.path.exists(done):
      print(f"done already: {done}", flush=True)
      continue
    print(shlex.join(command), flush=True)
    start = time.time()
    try:
      subprocess.run(command, check=True)  # A preempted training run exits non-zero.
    except BaseException:
      # Interrupted (SIGTERM, Ctrl-C, a crash): its time still counts towards the point,
      # which the next invocation resumes (read_timings adds the two).
      record_timing(root, done, time.time() - start, finished=False)
      raise
    if not os.path.exists(done):
      raise RuntimeError(f"{shlex.join(command)} exited 0 but did not write {done}.")
    record_timing(root, done, time.time() - start)


# ----------------------------------------------------------------------------------------
# Archive: what a finished point leaves in the repository.
# ----------------------------------------------------------------------------------------

ARCHIVED = "point.json"  # Written last: the point is archived once it exists.
# Small files the report needs, relative to a point's workdir (checkpoints and samples stay).
ARCHIVED_FILES = ("eval.json", "metrics.jsonl", "best_metric.json", FEWSHOT_FILE)


def archive_dir(setting: str) -> str | None:
  name = SETTINGS[setting].archive
  return os.path.join(REPO, "experiments", "results", name) if name else None


def is_archived(archive, corpus, objective, seed) -> bool:
  return bool(archive) and os.path.exists(
    os.path.join(run_dir(archive, corpus, objective, seed), ARCHIVED)
  )


def _commit() -> str:
  result = subprocess.run(
    ["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True, check=False
  )
  return result.stdout.strip() or "unknown"


def archive_point(root, archive, corpus, objective, seed, commit=None):
  """Copies a finished point's small files from ``root`` into ``archive`` (same layout), with
  its ``timings.jsonl`` records (markers made relative to the root), so that the report can
  be rebuilt from the repository after the workdirs are gone. Returns the archived files."""
  import shutil

  source = run_dir(root, corpus, objective, seed)
  target = run_dir(archive, corpus, objective, seed)
  names = [name for name in ARCHIVED_FILES if os.path.exists(os.path.join(source, name))]
  decoding = os.path.join(source, "decoding")
  if os.path.isdir(decoding):
    names += [
      os.path.join("decoding", temperature, "eval.json")
      for temperature in sorted(os.listdir(decoding))
      if os.path.exists(os.path.join(decoding, temperature, "eval.json"))
    ]
  if "eval.json" not in names:
    raise FileNotFoundError(f"{source} has no eval.json: evaluate the point before archiving it.")
  for name in names:
    os.makedirs(os.path.dirname(os.path.join(target, name)), exist_ok=True)
    shutil.copyfile(os.path.join(source, name), os.path.join(target, name))
  timings = os.path.join(root, "timings.jsonl")
  records = []
  if os.path.exists(timings):
    with open(timings) as f:
      for line in f:
        record = json.loads(line)
        if os.path.abspath(record["marker"]).startswith(os.path.abspath(source) + os.sep):
          records.append({**record, "marker": os.path.relpath(record["marker"], root)})
  with open(os.path.join(target, "timings.jsonl"), "w") as f:
    f.writelines(json.dumps(record) + "\n" for record in records)
  from emo_jax import checkpointing

  summary = {"commit": commit or _commit(), "files": [*names, "timings.jsonl"]}
  checkpointing.write_json_atomically(os.path.join(target, ARCHIVED), summary)
  return summary["files"]


# ----------------------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------------------


def _lookup(record, path):
  """The number at ``path`` in an eval.json record; NaN where the record lacks it."""
  for key in path:
    if not isinstance(record, dict) or key not in record:
      return float("nan")
    record = record[key]
  return float(record)


def collect(root, corpora=CORPORA, objectives=tuple(OBJECTIVES), seeds=SEEDS):
  """``{corpus: {objective: {metric: [value per seed]}}}`` from the runs' ``eval.json``
  (seeds in order; a missing run is left out and named on stderr)."""
  table = {}
  for corpus in corpora:
    for objective in objectives:
      for seed in (0,) if objective == BASE else seeds:
        path = os.path.join(run_dir(root, corpus, objective, seed), "eval.json")
        if not os.path.exists(path):
          print(f"missing {path}", file=sys.stderr)
          continue
        with open(path) as f:
          record = json.load(f)
        values = table.setdefault(corpus, {}).setdefault(objective, {})
        for metric, (key_path, _) in METRICS.items():
          values.setdefault(metric, []).append(_lookup(record, key_path))
        for metric, key_path in HUMAN_REFERENCE.items():
          values.setdefault(f"{metric} human", []).append(_lookup(record, key_path))
        values.setdefault("seeds", []).append(seed)
  return table


def paired_p_value(values, baseline):
  """Two-sided paired t-test over seeds; None with fewer than 2 pairs or no difference at
  all, 0.0 when every pair differs by the same non-zero amount (t is infinite)."""
  from scipy import stats

  if len(values) != len(baseline) or len(values) < 2:
    return None
  differences = np.asarray(values, np.float64) - np.asarray(baseline, np.float64)
  if np.allclose(differences, differences[0], rtol=0.0, atol=1e-12):
    return None if abs(differences[0]) <= 1e-12 else 0.0
  return float(stats.ttest_rel(values, baseline).pvalue)


def verdict(values, baseline, higher_is_better, alpha=0.05):
  """'win' / 'loss' against the baseline when p < alpha, else 'tie'."""
  p_value = paired_p_value(values, baseline)
  if p_value is None or p_value >= alpha:
    return "tie"
  better = np.mean(values) > np.mean(baseline)
  return "win" if better == higher_is_better else "loss"


def format_p_value(p_value: float) -> str:
  # Three decimals, but never "p=0.000": a test gives no zero p-values.
  return "p<0.001" if p_value < 0.0005 else f"p={p_value:.3f}"


def _judged(run, metric):
  """The per-seed values a verdict compares: the metric, or for :data:`HUMAN_REFERENCE`
  metrics its distance to the human value (NaN where the human value was not recorded)."""
  if metric in HUMAN_REFERENCE:
    return list(np.abs(np.asarray(run[metric]) - np.asarray(run[f"{metric} human"])))
  return run[metric]


def _header(metric):
  if metric not in HUMAN_REFERENCE:
    return metric
  return f"{metric} (nearer the human rate wins)"


def markdown_report(table, baseline="mle") -> str:
  lines = []
  for corpus, objectives in table.items():
    humans = {
      metric: np.nanmean([v for run in objectives.values() for v in run[f"{metric} human"]])
      for metric in HUMAN_REFERENCE
      if any(np.isfinite(run[f"{metric} human"]).any() for run in objectives.values())
    }
    lines += [
      f"### {corpus}",
      "",
      *[f"Human continuations' {metric}: {value:.4f}." for metric, value in humans.items()],
      *([""] if humans else []),
      "| objective | seeds | " + " | ".join(map(_header, METRICS)) + " |",
      "|---|---:|" + "---:|" * len(METRICS),
    ]
    reference = objectives.get(baseline)
    for objective, values in objectives.items():
      cells = []
      for metric, (_, higher) in METRICS.items():
        if np.isnan(values[metric]).any():
          cells.append("–")
          continue
        mean, std = np.mean(values[metric]), np.std(values[metric])
        # Perplexities are in the hundreds; MAUVE and rep-2 can sit below 0.001 (Tiny
        # Shakespeare's rep-2 is 0.0002-0.002), where three decimals would read 0.000.
        digits = 2 if metric == "perplexity" else 4
        cell = f"{mean:.{digits}f} ± {std:.{digits}f}"
        comparable = reference is not None and not (
          np.isnan(_judged(reference, metric)).any() or np.isnan(_judged(values, metric)).any()
        )
        if comparable and objective not in (baseline, BASE):
          # Pair runs by seed: only seeds both objectives finished.
          common = [s for s in values["seeds"] if s in reference["seeds"]]
          pick = lambda run, metric=metric, common=common: [
            _judged(run, metric)[run["seeds"].index(s)] for s in common
          ]
          p_value = paired_p_value(pick(values), pick(reference))
          outcome = verdict(pick(values), pick(reference), higher)
          if len(common) < 2:  # One pair is no test: no verdict either way.
            cell += f" ({len(common)} pair{'s' * (len(common) != 1)}, untested)"
          elif p_value is not None:
            cell += f" ({outcome}, {format_p_value(p_value)})"
          else:
            cell += f" ({outcome})"
        cells.append(cell)
      lines.append(f"| {objective} | {len(values['seeds'])} | " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def decoding_table(root, corpus, objectives=DECODING.objectives, seeds=SEEDS):
  """``{objective: {temperature: {"MAUVE": [...], "rep-2": [...], "seeds": [...]}}}``: the
  main evaluation is temperature 1.0; a seed counts only where every temperature finished
  (so each objective's temperatures are compared on the same seeds)."""
  temperatures = sorted((*TEMPERATURES, 1.0))
  table = {}
  for objective in objectives:
    for seed in seeds:
      paths = {
        t: os.path.join(
          run_dir(root, corpus, objective, seed)
          if t == 1.0
          else decoding_dir(root, corpus, objective, seed, t),
          "eval.json",
        )
        for t in temperatures
      }
      if not all(os.path.exists(path) for path in paths.values()):
        continue
      for t, path in paths.items():
        record = _read_json(path)
        cell = table.setdefault(objective, {}).setdefault(
          t, {"MAUVE": [], "rep-2": [], "human rep-2": [], "seeds": []}
        )
        cell["MAUVE"].append(_lookup(record, METRICS["MAUVE"][0]))
        cell["rep-2"].append(_lookup(record, METRICS["rep-2"][0]))
        cell["human rep-2"].append(_lookup(record, ("repetition", "rep-2", "human")))
        cell["seeds"].append(seed)
  return table


def best_temperature(by_temperature) -> float:
  """The temperature of the highest mean MAUVE over seeds (ties: the one nearest 1)."""
  return max(by_temperature, key=lambda t: (np.mean(by_temperature[t]["MAUVE"]), -abs(t - 1.0)))


def decoding_report(root, corpus, baseline="mle", seeds=SEEDS) -> str:
  """Markdown: MAUVE and rep-2 per objective and temperature, each objective at its own best
  temperature, and that best-vs-best comparison paired by seed against the baseline."""
  table = decoding_table(root, corpus, seeds=seeds)
  if not table:
    return ""
  temperatures = sorted((*TEMPERATURES, 1.0))
  lines = [
    f"#### {corpus}: decoding temperature (MAUVE / rep-2 of the model, mean ± std over seeds)",
    "",
    "| objective | seeds | " + " | ".join(f"T={t:g}" for t in temperatures) + " | best T |",
    "|---|---:|" + "---|" * len(temperatures) + "---:|",
  ]
  for objective, by_temperature in table.items():
    cells = [
      f"{np.mean(c['MAUVE']):.3f} ± {np.std(c['MAUVE']):.3f} / {np.mean(c['rep-2']):.3f}"
      for c in (by_temperature[t] for t in temperatures)
    ]
    seeds_done = len(by_temperature[1.0]["seeds"])
    best = best_temperature(by_temperature)
    lines.append(f"| {objective} | {seeds_done} | " + " | ".join(cells) + f" | {best:g} |")
  lines.append("")
  reference = table.get(baseline)
  if reference:
    reference_best = reference[best_temperature(reference)]
    for objective, by_temperature in table.items():
      if objective == baseline:
        continue
      best = by_temperature[best_temperature(by_temperature)]
      common = [s for s in best["seeds"] if s in reference_best["seeds"]]
      mine = [best["MAUVE"][best["seeds"].index(s)] for s in common]
      theirs = [reference_best["MAUVE"][reference_best["seeds"].index(s)] for s in common]
      p_value = paired_p_value(mine, theirs)
      outcome = verdict(mine, theirs, higher_is_better=True)
      lines.append(
        f"Each at its own best temperature, {objective} vs {baseline} MAUVE: "
        f"{np.mean(mine):.3f} vs {np.mean(theirs):.3f} over {len(common)} paired seeds — "
        f"{outcome}" + (f" ({format_p_value(p_value)})" if p_value is not None else "") + "."
      )
    lines.append("")
  return "\n".join(lines)


def fewshot_results(root, corpora=FEWSHOT.corpora, objectives=FEWSHOT.objectives, seeds=SEEDS):
  """``{task: {objective: {seed: result}}}`` from the points' ``fewshot.json`` (the base's
  under seed 0); ``result`` is :func:`emo_jax.fewshot.evaluate_task`'s."""
  results = {}
  for corpus in corpora:
    for objective in objectives:
      for seed in (0,) if objective == BASE else seeds:
        path = os.path.join(run_dir(root, corpus, objective, seed), FEWSHOT_FILE)
        if not os.path.exists(path):
          continue
        for task, result in _read_json(path)[objective]["tasks"].items():
          results.setdefault(task, {}).setdefault(objective, {})[seed] = result
  return results


def fewshot_report(root, baseline="mle", seeds=SEEDS) -> str:
  """Markdown per task: accuracy [Wilson 95%] per model and seed, and an exact McNemar test
  of each fine-tuned model against the baseline objective of the same seed."""
  from emo_jax import fewshot

  results = fewshot_results(root, seeds=seeds)
  lines = []
  for task, by_objective in sorted(results.items()):
    lines += [
      f"### Few-shot {task} (models fine-tuned on {', '.join(FEWSHOT.corpora)})",
      "",
      f"| model | seed | queries | accuracy [95% CI] | vs {baseline}: +only / -only (McNemar p) |",
      "|---|---:|---:|---|---|",
    ]
    for objective, by_seed in by_objective.items():
      for seed, result in sorted(by_seed.items()):
        reference = by_objective.get(baseline, {}).get(seed)
        test = "—"
        if reference is not None and objective not in (baseline, BASE):
          paired = fewshot.mcnemar(result["correct"], reference["correct"])
          test = f"+{paired['a_only']} / -{paired['b_only']} ({format_p_value(paired['p_value'])})"
        lines.append(
          f"| {objective} | {seed} | {len(result['correct'])} | {result['accuracy']:.3f} "
          f"[{result['low']:.3f}, {result['high']:.3f}] | {test} |"
        )
    lines.append("")
  return "\n".join(lines)


def summary(root, table, seeds=SEEDS) -> dict:
  """The machine-readable study (``experiments/results/smollm2_study.json``): per corpus,
  objective and seed the main metrics, best step and the decoding runs; few-shot accuracies
  per task, model and seed."""
  points = {}
  for corpus, objectives in table.items():
    for objective, values in objectives.items():
      for i, seed in enumerate(values["seeds"]):
        workdir = run_dir(root, corpus, objective, seed)
        names = [*METRICS, *(f"{metric} human" for metric in HUMAN_REFERENCE)]
        entry = {name: (None if np.isnan(values[name][i]) else values[name][i]) for name in names}
        best_path = os.path.join(workdir, "best_metric.json")
        entry["best step"] = _read_json(best_path)["step"] if os.path.exists(best_path) else None
        decoding = {}
        for temperature in TEMPERATURES:
          path = os.path.join(decoding_dir(root, corpus, objective, seed, temperature), "eval.json")
          if os.path.exists(path):
            record = _read_json(path)
            decoding[f"{temperature:g}"] = {
              "MAUVE": _lookup(record, METRICS["MAUVE"][0]),
              "rep-2": _lookup(record, METRICS["rep-2"][0]),
            }
        if decoding:
          entry["decoding"] = decoding
        points.setdefault(corpus, {}).setdefault(objective, {})[str(seed)] = entry
  fewshot = {
    task: {
      objective: {str(seed): result["accuracy"] for seed, result in by_seed.items()}
      for objective, by_seed in by_objective.items()
    }
    for task, by_objective in fewshot_results(root, seeds=seeds).items()
  }
  return {"points": points, "fewshot_accuracy": fewshot}


def _run_metrics(root, corpus, objective, seeds):
  """Each finished seed's ``metrics.jsonl`` records (runs without a log are skipped)."""
  from emo_jax import run_logging

  for seed in seeds:
    workdir = run_dir(root, corpus, objective, seed)
    if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
      yield run_logging.read_metrics(workdir)


def validation_curves(root, corpus, objective, seeds=SEEDS):
  """``{step: [validation perplexity per finished seed]}`` from the runs' metrics logs."""
  curves = {}
  for records in _run_metrics(root, corpus, objective, seeds):
    for record in records:
      if "eval/perplexity" in record:
        curves.setdefault(record["step"], []).append(record["eval/perplexity"])
  return dict(sorted(curves.items()))


def step_seconds(root, corpus, objective, seeds=SEEDS):
  """Median wall-clock seconds of one optimizer step over the runs' logging intervals; None
  if not logged. Left out: each run's first interval (it holds the compilation) and, for logs
  written before the trainer stopped counting them, intervals that contain an evaluation."""
  seconds = []
  for records in _run_metrics(root, corpus, objective, seeds):
    eval_steps = [r["step"] for r in records if "eval/perplexity" in r]
    logged = [(r["step"], r["train/step_seconds"]) for r in records if "train/step_seconds" in r]
    for (previous, _), (step, value) in itertools.pairwise(logged):
      if not any(previous <= e < step for e in eval_steps):
        seconds.append(value)
  return float(np.median(seconds)) if seconds else None


def read_timings(root):
  """``{(stage, corpus, objective, cores): {seed: seconds}}`` from ``timings.jsonl``.

  ``cores`` is how many CPU cores the command could use (``taskset`` narrows it; records
  written before it was logged ran unpinned on the 2-core study machine). A command that was
  interrupted and resumed counts every invocation since the marker's previous finished
  record (a command rerun after its marker was deleted counts from scratch). The base
  model's key is ``("base", "", "", cores)``.
  """
  import glob

  timings = {}
  latest, pending = {}, {}  # marker -> its last finished record; unfinished seconds since.
  # The live root's log, then the archived points' own logs (markers relative to the root).
  paths = [os.path.join(root, "timings.jsonl")]
  paths += sorted(glob.glob(os.path.join(root, "*", "*", "seed*", "timings.jsonl")))
  for path in filter(os.path.exists, paths):
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        marker = os.path.normpath(os.path.join(root, record["marker"]))
        if record.get("finished", True):
          latest[marker] = {**record, "seconds": pending.pop(marker, 0.0) + record["seconds"]}
        else:
          pending[marker] = pending.get(marker, 0.0) + record["seconds"]
  for marker, record in latest.items():
    marker = os.path.relpath(marker, root).split(os.sep)
    cores = record.get("cores", UNRECORDED_CORES)
    if marker[0] == "base":
      key, seed = ("base", "", "", cores), 0
    else:
      if "decoding" in marker:
        stage = f"decoding {marker[-2]}"
      else:
        stage = {"results.json": "finetune", "eval.json": "eval", FEWSHOT_FILE: "fewshot"}[
          marker[-1]
        ]
      key, seed = (stage, marker[0], marker[1], cores), int(marker[2].removeprefix("seed"))
    timings.setdefault(key, {})[seed] = record["seconds"]
  return timings


def recorded_devices(root):
  """The accelerators named in ``timings.jsonl`` (``experiments/study_gpu.py`` records them;
  ``study.py`` runs on the CPU and records none), in order of first appearance."""
  path = os.path.join(root, "timings.jsonl")
  devices = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        device = json.loads(line).get("device")
        if device and device not in devices:
          devices.append(device)
  return devices


def timings_report(root, table) -> str:
  """Markdown: wall-clock of each stage, per corpus and objective."""
  timings = read_timings(root)
  devices = recorded_devices(root)
  lines = [f"Device: {', '.join(devices)} (`cores`: the host's CPU cores).", ""] if devices else []
  lines += [
    ("| stage | corpus | objective | cores | runs | minutes per run | s per optimizer step |"),
    "|---|---|---|---:|---:|---:|---:|",
  ]
  for (stage, _, _, cores), runs in sorted(timings.items()):
    if stage == "base":
      minutes = sum(runs.values()) / 60
      lines.append(f"| base | wikitext2+ptb | mle | {cores} | 1 | {minutes:.1f} | |")
  for corpus, objectives in table.items():
    for objective in objectives:
      stages = ["finetune", "eval"]
      stages += sorted({k[0] for k in timings if k[1:3] == (corpus, objective)} - set(stages))
      for stage in stages:
        for cores in sorted({k[3] for k in timings if k[:3] == (stage, corpus, objective)}):
          runs = timings[(stage, corpus, objective, cores)]
          per_step = (
            step_seconds(root, corpus, objective, seeds=sorted(runs))
            if stage == "finetune"
            else None
          )
          lines.append(
            f"| {stage} | {corpus} | {objective} | {cores} | {len(runs)} | "
            f"{np.mean(list(runs.values())) / 60:.1f} | "
            + (f"{per_step:.2f} |" if per_step is not None else "|")
          )
  return "\n".join(lines)


def save_figure(fig, path) -> str:
  """Writes ``fig`` (tight layout, 90 dpi) to ``path``, creating its folder, and closes it."""
  import matplotlib.pyplot as plt

  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def plot_corpus(root, corpus, objectives, out_dir) -> str:
  """One PNG per corpus: MAUVE per objective (mean, std error bar, one dot per seed) and the
  validation perplexity curves (mean over seeds, min-max band)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (bars, curves) = plt.subplots(1, 2, figsize=(11, 4))
  names = list(objectives)
  for i, name in enumerate(names):
    values = objectives[name]["MAUVE"]
    bars.bar(i, np.mean(values), yerr=np.std(values), capsize=4, color=COLORS[name], alpha=0.7)
    bars.plot([i] * len(values), values, "k.", markersize=5)
    steps_to_values = validation_curves(root, corpus, name, objectives[name]["seeds"])
    if steps_to_values:
      steps = list(steps_to_values)
      mean = [np.mean(v) for v in steps_to_values.values()]
      curves.plot(steps, mean, marker="o", color=COLORS[name], label=name)
      curves.fill_between(
        steps,
        [min(v) for v in steps_to_values.values()],
        [max(v) for v in steps_to_values.values()],
        color=COLORS[name],
        alpha=0.15,
      )
  bars.set_xticks(range(len(names)), names)
  bars.set_ylabel("MAUVE (mean ± std over seeds)")
  bars.set_title(f"{corpus}: MAUVE")
  curves.set_xlabel("fine-tuning step")
  curves.set_ylabel("validation perplexity (mean, min-max band)")
  curves.set_title(f"{corpus}: validation perplexity")
  if curves.get_legend_handles_labels()[0]:  # Runs without a metrics log draw no curve.
    curves.legend()
  return save_figure(fig, os.path.join(out_dir, f"study_{corpus}.png"))


def plot_decoding(root, corpus, out_dir, seeds=SEEDS) -> str | None:
  """One PNG: MAUVE and the model's rep-2 against the sampling temperature, per objective
  (mean over seeds, std error bars, one dot per seed; rep-2 with the human continuations'
  rate as a line). None when no seed has every temperature."""
  table = decoding_table(root, corpus, seeds=seeds)
  if not table:
    return None
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (mauve, repetition) = plt.subplots(1, 2, figsize=(11, 4))
  human = []
  for objective, by_temperature in table.items():
    temperatures = sorted(by_temperature)
    for axis, metric in ((mauve, "MAUVE"), (repetition, "rep-2")):
      values = [by_temperature[t][metric] for t in temperatures]
      axis.errorbar(
        temperatures,
        [np.mean(v) for v in values],
        yerr=[np.std(v) for v in values],
        marker="o",
        capsize=4,
        color=COLORS[objective],
        label=f"{objective} ({len(by_temperature[1.0]['seeds'])} seeds)",
      )
      for t, v in zip(temperatures, values, strict=True):
        axis.plot([t] * len(v), v, "k.", markersize=4)
    best = best_temperature(by_temperature)
    mauve.axvline(best, color=COLORS[objective], linestyle=":", alpha=0.6)
    human += [h for t in temperatures for h in by_temperature[t]["human rep-2"]]
  repetition.axhline(np.mean(human), color="gray", linestyle="--", label="human")
  mauve.set_ylabel("MAUVE (dotted: each objective's best temperature)")
  repetition.set_ylabel("rep-2 of the samples")
  for axis, title in ((mauve, "MAUVE"), (repetition, "rep-2")):
    axis.set_xlabel("sampling temperature")
    axis.set_title(f"{corpus}: {title} by temperature")
    axis.legend()
  return save_figure(fig, os.path.join(out_dir, f"decoding_{corpus}.png"))


def markers(section="study"):
  """The comment lines that delimit ``section``'s generated text in RESULTS.md."""
  return f"<!-- {section}:begin -->", f"<!-- {section}:end -->"


BEGIN, END = markers()


def update_between_markers(path, text, section="study"):
  """Replace what sits between ``section``'s markers in ``path`` (both must be there)."""
  begin, end = markers(section)
  with open(path) as f:
    document = f.read()
  if begin not in document or end not in document:
    raise ValueError(f"{path} lacks the markers {begin} ... {end} that the report replaces.")
  head, rest = document.split(begin, 1)
  _, tail = rest.split(end, 1)
  with open(path, "w") as f:
    f.write(f"{head}{begin}\n{text.strip()}\n{end}{tail}")


FULL_GRID = len(CORPORA) * len(OBJECTIVES) * len(SEEDS)


def archived_commits(root, table) -> dict[str, int]:
  """``{commit: points}`` over ``table``'s points archived under ``root`` (their
  ``point.json``: the commit checked out when ``run`` started the point), most points first."""
  import collections

  paths = (
    os.path.join(run_dir(root, corpus, objective, seed), ARCHIVED)
    for corpus, objectives in table.items()
    for objective, values in objectives.items()
    for seed in values["seeds"]
  )
  commits = collections.Counter(
    _read_json(path)["commit"] for path in paths if os.path.exists(path)
  )
  return dict(commits.most_common())


def full_report(root, table, figures_dir=None, relative_to=None, full_grid=FULL_GRID) -> str:
  """Tables, figure links and timings: what ``report`` prints or writes into RESULTS.md."""
  finished = sum(
    len(values["seeds"])
    for objectives in table.values()
    for objective, values in objectives.items()
    if objective != BASE
  )
  parts = [f"Evaluated grid points: **{finished} of {full_grid}**.\n"]
  commits = archived_commits(root, table)
  if commits:
    listed = ", ".join(f"`{commit[:10]}` ({n})" for commit, n in commits.items())
    parts.append(f"Code of the archived points (commit: points; `{ARCHIVED}`): {listed}.\n")
  link = lambda path: os.path.relpath(path, relative_to) if relative_to else path
  for corpus, objectives in table.items():  # Each corpus's table, figure, decoding runs.
    parts.append(markdown_report({corpus: objectives}))
    if figures_dir:
      parts.append(f"![{corpus}]({link(plot_corpus(root, corpus, objectives, figures_dir))})\n")
    if corpus in DECODING.corpora:
      parts.append(decoding_report(root, corpus))
      path = plot_decoding(root, corpus, figures_dir) if figures_dir else None
      if path:
        parts.append(f"![{corpus}: decoding temperature]({link(path)})\n")
  parts.append(fewshot_report(root))
  parts += ["### Wall-clock", "", timings_report(root, table), ""]
  return "\n".join(part for part in parts if part)


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
    help=f"report: write into this file between the markers {BEGIN} and {END} instead of printing",
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
  default_root = SETTINGS[args.setting].default_root + ("_smoke" if args.smoke else "")
  args.root = args.root or os.path.join(REPO, "workdirs", default_root)
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
    table = collect(args.root, args.corpora, objectives, args.seeds)
    relative_to = os.path.dirname(os.path.abspath(args.update)) if args.update else None
    text = full_report(
      args.root,
      table,
      args.figures,
      relative_to,
      full_grid=len(args.corpora) * len(args.objectives) * len(args.seeds),
    )
    if args.update:
      update_between_markers(args.update, text, args.section)
    else:
      print(text)
    if args.summary:
      with open(args.summary, "w") as f:
        json.dump(summary(args.root, table, args.seeds), f, indent=1, sort_keys=True)
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
  commit = _commit()
  for point, commands in groups:
    if point and is_archived(archive, *point):
      print(f"archived already: {run_dir(archive, *point)}", flush=True)
      continue
    run_stage(commands, args.root)
    if point and archive:
      archive_point(args.root, archive, *point, commit=commit)
      print(f"archived: {run_dir(archive, *point)}", flush=True)


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
