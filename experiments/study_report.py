"""The EMO-vs-MLE studies' report: tables with paired tests, decoding and few-shot tables,
wall-clock, figures, the machine-readable summary, and the generated part of RESULTS.md.

Everything here reads finished points' files only (``eval.json``, ``metrics.jsonl``,
``best_metric.json``, ``fewshot.json``, ``timings.jsonl``), from a live root or an archive
alike; ``python experiments/study.py report`` is its command line.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import itertools
import json
import os
import sys

import numpy as np
import provenance
from study_grid import (
  ARCHIVED,
  BASE,
  CORPORA,
  DECODING,
  FEWSHOT,
  FEWSHOT_FILE,
  OBJECTIVES,
  REPO,
  SEEDS,
  TEMPERATURES,
  decoding_dir,
  run_dir,
)

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


def verdict(values, baseline, higher_is_better, p_value, alpha=0.05):
  """'win' / 'loss' against the baseline when ``p_value`` (:func:`paired_p_value`'s) is below
  alpha, else 'tie'."""
  if p_value is None or p_value >= alpha:
    return "tie"
  better = np.mean(values) > np.mean(baseline)
  return "win" if better == higher_is_better else "loss"


def seeds_better(values, baseline, higher_is_better) -> int:
  """How many seed pairs favour ``values`` over ``baseline`` (an equal pair favours neither):
  the test's three pairs hide whether a mean difference holds on every seed."""
  differences = np.asarray(values, np.float64) - np.asarray(baseline, np.float64)
  return int(np.sum(differences > 0 if higher_is_better else differences < 0))


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


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One objective against the baseline on one metric, paired by seed."""

  pairs: int
  outcome: str  # "win" / "tie" / "loss" (see :func:`verdict`).
  p_value: float | None  # None: fewer than two pairs, or no difference at all.
  better: int  # Pairs that favour the objective (:func:`seeds_better`).
  # Means over the paired seeds of the judged values (rep-2's: the distance to people's).
  mean: float
  baseline_mean: float

  def describe(self) -> str:
    """``win, p=0.012, better on 3/3``, or why there is no test."""
    if self.pairs < 2:  # One pair is no test: no verdict either way.
      return f"{self.pairs} pair{'s' * (self.pairs != 1)}, untested"
    if self.p_value is None:
      return self.outcome
    return f"{self.outcome}, {format_p_value(self.p_value)}, better on {self.better}/{self.pairs}"

  def brief(self) -> str:
    """``win (3/3)``: the outcome and the seeds better, or why there is no test."""
    if self.pairs < 2 or self.p_value is None:
      return self.describe()
    return f"{self.outcome} ({self.better}/{self.pairs})"


def compare(run, reference, metric, higher_is_better=None) -> Comparison | None:
  """``run`` against ``reference`` (two ``{metric: [value per seed], "seeds": [...]}`` entries,
  e.g. :func:`collect`'s) on ``metric`` over the seeds both finished; None where either lacks
  the metric (or its human rate). ``higher_is_better`` defaults to :data:`METRICS`'."""
  judged, judged_reference = _judged(run, metric), _judged(reference, metric)
  if np.isnan(judged).any() or np.isnan(judged_reference).any():
    return None
  common = [s for s in run["seeds"] if s in reference["seeds"]]
  mine = [judged[run["seeds"].index(s)] for s in common]
  theirs = [judged_reference[reference["seeds"].index(s)] for s in common]
  # For rep-2 the judged value is a distance: lower wins, as METRICS says.
  higher = METRICS[metric][1] if higher_is_better is None else higher_is_better
  p_value = paired_p_value(mine, theirs)
  return Comparison(
    len(common),
    verdict(mine, theirs, higher, p_value),
    p_value,
    seeds_better(mine, theirs, higher),
    float(np.mean(mine)) if common else float("nan"),
    float(np.mean(theirs)) if common else float("nan"),
  )


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
      for metric in METRICS:
        if np.isnan(values[metric]).any():
          cells.append("–")
          continue
        mean, std = np.mean(values[metric]), np.std(values[metric])
        # Perplexities are in the hundreds; MAUVE and rep-2 can sit below 0.001 (Tiny
        # Shakespeare's rep-2 is 0.0002-0.002), where three decimals would read 0.000.
        digits = 2 if metric == "perplexity" else 4
        cell = f"{mean:.{digits}f} ± {std:.{digits}f}"
        if reference is not None and objective not in (baseline, BASE):
          comparison = compare(values, reference, metric)
          if comparison is not None:
            cell += f" ({comparison.describe()})"
        cells.append(cell)
      lines.append(f"| {objective} | {len(values['seeds'])} | " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)


def glance_report(table, decoding=None, baseline="mle") -> str:
  """Markdown: every objective against the baseline, metric by corpus, in one table (the
  outcome and on how many seeds the objective was better; details in the corpus tables),
  with a row for MAUVE at each objective's own best temperature where ``decoding``
  (``{corpus: decoding_table(...)}``) has the corpus."""
  decoding = decoding or {}
  corpora = [corpus for corpus, objectives in table.items() if baseline in objectives]
  objectives = [
    objective
    for objective in dict.fromkeys(o for corpus in corpora for o in table[corpus])
    if objective not in (baseline, BASE)
  ]
  if not objectives:
    return ""

  cell = lambda comparison: comparison.brief() if comparison else "–"
  lines = [
    f"At a glance, each objective against {baseline} (paired over seeds; better on k of n seeds):",
    "",
    "| objective | metric | " + " | ".join(corpora) + " |",
    "|---|---|" + "---|" * len(corpora),
  ]
  best = {
    corpus: best_temperature_comparisons(decoding.get(corpus, {}), baseline) for corpus in corpora
  }
  for objective in objectives:
    for metric in METRICS:
      cells = []
      for corpus in corpora:
        run = table[corpus].get(objective)
        cells.append(cell(run and compare(run, table[corpus][baseline], metric)))
      lines.append(f"| {objective} | {metric} | " + " | ".join(cells) + " |")
    if any(objective in best[corpus] for corpus in corpora):
      cells = [cell(best[corpus].get(objective)) for corpus in corpora]
      lines.append(f"| {objective} | MAUVE, each at its best T | " + " | ".join(cells) + " |")
  return "\n".join([*lines, ""])


def read_json(path):
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
        record = read_json(path)
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


def decoding_report(table, corpus, baseline="mle") -> str:
  """Markdown from ``corpus``'s :func:`decoding_table`: MAUVE and rep-2 per objective and
  temperature, each objective at its own best temperature, and that best-vs-best comparison
  paired by seed against the baseline."""
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
  comparisons = best_temperature_comparisons(table, baseline)
  for objective, comparison in comparisons.items():
    lines.append(
      f"Each at its own best temperature, {objective} vs {baseline} MAUVE: "
      f"{comparison.mean:.3f} vs {comparison.baseline_mean:.3f} over {comparison.pairs} "
      f"paired seed{'s' * (comparison.pairs != 1)} — {comparison.describe()}."
    )
  return "\n".join([*lines, ""] if comparisons else lines)


def at_best_temperature(decoding) -> dict:
  """``{objective: {"MAUVE": [...], "seeds": [...], ...}}``: each objective's
  :func:`decoding_table` cell at its own best temperature."""
  return {objective: runs[best_temperature(runs)] for objective, runs in decoding.items()}


def best_temperature_comparisons(decoding, baseline="mle") -> dict[str, Comparison]:
  """Each objective's MAUVE at its own best temperature against the baseline's at its own,
  paired by seed (the decoding comparison's question)."""
  best = at_best_temperature(decoding)
  if baseline not in best:
    return {}
  return {
    objective: compare(run, best[baseline], "MAUVE")
    for objective, run in best.items()
    if objective != baseline
  }


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
        for task, result in read_json(path)[objective]["tasks"].items():
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
        entry["best step"] = read_json(best_path)["step"] if os.path.exists(best_path) else None
        decoding = {}
        for temperature in TEMPERATURES:
          path = os.path.join(decoding_dir(root, corpus, objective, seed, temperature), "eval.json")
          if os.path.exists(path):
            record = read_json(path)
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
  record (a command rerun after its marker was deleted counts from scratch); when those
  invocations had different cores, ``cores`` names them all (``"1+2"``), as their seconds do
  not belong to either count. The base model's key is ``("base", "", "", cores)``.
  """
  timings = {}
  # marker -> its last finished record; the unfinished invocations' seconds and cores since.
  latest, pending = {}, {}
  # The live root's log, then the archived points' own logs (markers relative to the root).
  paths = [os.path.join(root, "timings.jsonl")]
  paths += sorted(glob.glob(os.path.join(root, "*", "*", "seed*", "timings.jsonl")))
  for path in filter(os.path.exists, paths):
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        marker = os.path.normpath(os.path.join(root, record["marker"]))
        seconds, cores = pending.pop(marker, (0.0, set()))
        seconds, cores = (
          seconds + record["seconds"],
          cores | {record.get("cores", UNRECORDED_CORES)},
        )
        if record.get("finished", True):
          latest[marker] = {**record, "seconds": seconds, "cores": cores}
        else:
          pending[marker] = (seconds, cores)
  for marker, record in latest.items():
    marker = os.path.relpath(marker, root).split(os.sep)
    cores = record["cores"]
    cores = cores.pop() if len(cores) == 1 else "+".join(map(str, sorted(cores)))
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
  for (stage, _, _, cores), runs in sorted(timings.items(), key=lambda item: str(item[0])):
    if stage == "base":
      minutes = sum(runs.values()) / 60
      lines.append(f"| base | wikitext2+ptb | mle | {cores} | 1 | {minutes:.1f} | |")
  for corpus, objectives in table.items():
    for objective in objectives:
      stages = ["finetune", "eval"]
      stages += sorted({k[0] for k in timings if k[1:3] == (corpus, objective)} - set(stages))
      for stage in stages:
        for cores in sorted(
          {k[3] for k in timings if k[:3] == (stage, corpus, objective)}, key=str
        ):
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


def plot_decoding(table, corpus, out_dir) -> str | None:
  """One PNG from ``corpus``'s :func:`decoding_table`: MAUVE and the model's rep-2 against the
  sampling temperature, per objective (mean over seeds, std error bars, one dot per seed;
  rep-2 with the human continuations' rate as a line). None when no seed has every
  temperature."""
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


def archived_commits(root, table, repo=REPO) -> dict[str, int]:
  """``{code commit: points}`` over ``table``'s points archived under ``root``, most points
  first. A point's ``point.json`` records the commit checked out when ``run`` last started
  it (``-dirty`` if tracked code differed from it); here each counts as the newest commit at
  or before it that changed code (:func:`provenance.code_commit`), so the study's own result
  commits do not split one code version. A point with evaluations added later counts under
  each code commit that wrote some of its files."""
  paths = (
    os.path.join(run_dir(root, corpus, objective, seed), ARCHIVED)
    for corpus, objectives in table.items()
    for objective, values in objectives.items()
    for seed in values["seeds"]
  )
  commits = collections.Counter()
  for path in paths:
    if os.path.exists(path):
      point = read_json(path)
      written = [point["commit"], *(added["commit"] for added in point.get("added", []))]
      commits.update({provenance.code_commit(commit, repo) for commit in written})
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
    parts.append(
      f"Code of the archived points (`{ARCHIVED}`; the newest commit that changed code at or "
      f"before each point's, then how many points it wrote): {listed}.\n"
    )
  decoding = {
    corpus: decoding_table(root, corpus) for corpus in table if corpus in DECODING.corpora
  }
  parts.append(glance_report(table, decoding))
  link = lambda path: os.path.relpath(path, relative_to) if relative_to else path
  for corpus, objectives in table.items():  # Each corpus's table, figure, decoding runs.
    parts.append(markdown_report({corpus: objectives}))
    if figures_dir:
      parts.append(f"![{corpus}]({link(plot_corpus(root, corpus, objectives, figures_dir))})\n")
    if corpus in DECODING.corpora:
      parts.append(decoding_report(decoding[corpus], corpus))
      path = plot_decoding(decoding[corpus], corpus, figures_dir) if figures_dir else None
      if path:
        parts.append(f"![{corpus}: decoding temperature]({link(path)})\n")
  parts.append(fewshot_report(root))
  parts += ["### Wall-clock", "", timings_report(root, table), ""]
  return "\n".join(part for part in parts if part)
