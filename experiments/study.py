"""The EMO-vs-MLE study (issue #8): base model, fine-tuning grid, evaluation, report.

    python experiments/study.py commands              # print every command of every stage
    python experiments/study.py run base              # 1. pretrain the MLE base model
    python experiments/study.py run finetune          # 2. corpora x objectives x seeds
    python experiments/study.py run eval              # 3. --mode eval on every run
    python experiments/study.py report                # 4. experiments/RESULTS.md tables

``run`` executes the stage's commands one after another, skips points that are finished
(``results.json`` for training, ``eval.json`` for evaluation), resumes half-finished ones
(the trainer resumes from its workdir) and appends each command's wall-clock to
``<root>/timings.jsonl``. ``--corpora/--objectives/--seeds`` narrow the grid; anything after
``--`` is passed to every ``main.py`` call of the stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
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
# Metric name in the report -> (path into eval.json, higher is better).
METRICS = {
    "perplexity": (("perplexity",), False),
    "MAUVE": (("mauve", "mean"), True),
    "ROUGE-L": (("rouge", "rougeL"), True),
    "rep-2": (("repetition", "rep-2", "model"), False),
}


def _main_py(config, workdir, *overrides):
  return [sys.executable, os.path.join(REPO, "main.py"), "--config",
          os.path.join(REPO, "configs", config), "--workdir", workdir, *overrides]


def run_dir(root, corpus, objective, seed):
  return os.path.join(root, corpus, objective, f"seed{seed}")


def stage_commands(stage, root, corpora=CORPORA, objectives=tuple(OBJECTIVES), seeds=SEEDS,
                   extra=()):
  """``[(command, done_marker)]`` of one stage."""
  base = os.path.join(root, "base")
  if stage == "base":
    return [(_main_py("study_base.py", base, *extra), os.path.join(base, "results.json"))]
  out = []
  for corpus in corpora:
    for objective in objectives:
      for seed in seeds:
        workdir = run_dir(root, corpus, objective, seed)
        common = [f"--config.model.pretrained={os.path.join(base, 'hf_export')}",
                  f"--config.data.corpus={corpus}", f"--config.seed={seed}",
                  *OBJECTIVES[objective]]
        if stage == "finetune":
          out.append((_main_py("study_finetune.py", workdir, *common, *extra),
                      os.path.join(workdir, "results.json")))
        elif stage == "eval":
          out.append((_main_py("study_finetune.py", workdir, "--mode", "eval", *common,
                               *extra), os.path.join(workdir, "eval.json")))
        else:
          raise ValueError(f"unknown stage {stage!r}: base, finetune or eval.")
  return out


def run_stage(commands, root):
  os.makedirs(root, exist_ok=True)
  for command, done in commands:
    if os.path.exists(done):
      print(f"done already: {done}", flush=True)
      continue
    print(shlex.join(command), flush=True)
    start = time.time()
    subprocess.run(command, check=True)
    with open(os.path.join(root, "timings.jsonl"), "a") as f:
      f.write(json.dumps({"marker": done, "seconds": time.time() - start}) + "\n")


# ----------------------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------------------


def _lookup(record, path):
  for key in path:
    record = record[key]
  return float(record)


def collect(root, corpora=CORPORA, objectives=tuple(OBJECTIVES), seeds=SEEDS):
  """``{corpus: {objective: {metric: [value per seed]}}}`` from the runs' ``eval.json``
  (seeds in order; a missing run is left out and named on stderr)."""
  table = {}
  for corpus in corpora:
    for objective in objectives:
      for seed in seeds:
        path = os.path.join(run_dir(root, corpus, objective, seed), "eval.json")
        if not os.path.exists(path):
          print(f"missing {path}", file=sys.stderr)
          continue
        with open(path) as f:
          record = json.load(f)
        values = table.setdefault(corpus, {}).setdefault(objective, {})
        for metric, (key_path, _) in METRICS.items():
          values.setdefault(metric, []).append(_lookup(record, key_path))
        values.setdefault("seeds", []).append(seed)
  return table


def paired_p_value(values, baseline):
  """Two-sided paired t-test over seeds; None with fewer than 2 pairs or no difference at
  all, 0.0 when every pair differs by the same non-zero amount (t is infinite)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
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


def markdown_report(table, baseline="mle") -> str:
  lines = []
  for corpus, objectives in table.items():
    lines += [f"### {corpus}", "",
              "| objective | seeds | " + " | ".join(METRICS) + " |",
              "|---|---:|" + "---:|" * len(METRICS)]
    reference = objectives.get(baseline)
    for objective, values in objectives.items():
      cells = []
      for metric, (_, higher) in METRICS.items():
        mean, std = np.mean(values[metric]), np.std(values[metric])
        cell = f"{mean:.3f} ± {std:.3f}"
        if reference is not None and objective != baseline:
          # Pair runs by seed: only seeds both objectives finished.
          common = [s for s in values["seeds"] if s in reference["seeds"]]
          pick = lambda run: [run[metric][run["seeds"].index(s)] for s in common]
          p_value = paired_p_value(pick(values), pick(reference))
          outcome = verdict(pick(values), pick(reference), higher)
          cell += f" ({outcome}, p={p_value:.3f})" if p_value is not None else f" ({outcome})"
        cells.append(cell)
      lines.append(f"| {objective} | {len(values['seeds'])} | " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("action", choices=["commands", "run", "report"])
  parser.add_argument("stage", nargs="?", choices=["base", "finetune", "eval"])
  parser.add_argument("--root", default=os.path.join(REPO, "workdirs", "study"))
  parser.add_argument("--corpora", nargs="+", default=list(CORPORA))
  parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES),
                      choices=list(OBJECTIVES))
  parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
  argv = sys.argv[1:] if argv is None else list(argv)
  # Everything after "--" goes to main.py (argparse cannot take it after the grid options).
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
  grid = dict(corpora=args.corpora, objectives=args.objectives, seeds=args.seeds,
              extra=extra)
  if args.action == "report":
    print(markdown_report(collect(args.root, args.corpora, args.objectives, args.seeds)))
    return
  stages = [args.stage] if args.stage else ["base", "finetune", "eval"]
  for stage in stages:
    commands = stage_commands(stage, args.root, **grid)
    if args.action == "commands":
      for command, _ in commands:
        print(shlex.join(command))
    else:
      run_stage(commands, args.root)


if __name__ == "__main__":
  main()
