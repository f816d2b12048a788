"""The paper's data-scale curve (its Figure 1, right) on SmolLM2-135M (issue #17's stretch).

MLE and EMO fine-tune SmolLM2-135M for one epoch on nested random subsets of WikiText-2 raw
(carved) holding 25k, 100k and 240k tokens (``data.max_train_tokens``: a smaller subset's
blocks lie inside a larger one's, the same subsets for every objective and seed). Everything
else is a study-v2 point (``configs/smollm2_study.py``: lr 3e-4 with linear decay over the
run, validation on 32 blocks six times per run, best checkpoint); each point is evaluated
like one (test perplexity on 64 blocks, MAUVE of 500 samples, mean DEMD) and scored few-shot
(AG News and SST-2, ``experiments/fewshot.py``). The report adds the untouched base (0 tokens)
and the study's own WikiText-2 points (60 steps = 122,880 tokens drawn from the whole split:
one pass, but not one of the nested subsets) from ``experiments/results/smollm2``, and pairs
EMO with MLE budget by budget (:func:`paired_report`: differences, McNemar on the few-shot
queries) and lists the share of few-shot queries each model gives each label
(:func:`label_shares_report`, gold labels from the data folder). ``calibrate`` rescores the
base and every point whose exported model is still in the workdirs with contextual
calibration (``emo_jax.fewshot``), into the archive's ``fewshot_calibrated.json``, which the
report tables when present (points scored from now on also carry calibrated scores in their
own ``fewshot.json``; the report reads only that file).

    EMO_JAX_DATA=../shared/data python experiments/data_scale.py run    # resumable, archives
    EMO_JAX_DATA=../shared/data python experiments/data_scale.py calibrate
    EMO_JAX_DATA=../shared/data python experiments/data_scale.py report --figure experiments/figures/smollm2/data_scale.png \\
        --summary experiments/results/smollm2_data_scale.json --update experiments/RESULTS.md

Layout: ``<root>/tokens<budget>/<objective>/seed<seed>``, i.e. ``study_grid.py``'s with the budget
in the corpus's place, so its runner (timings, resumption) and archive serve here too.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import child_process
import study_grid
import study_report

import study

CORPUS = "wikitext2_raw_carved"
# The paper's curve, scaled to this corpus: the carved train split (WikiText-2 raw's
# validation file less every 10th article; the raw train file is not available offline)
# holds 249,402 target tokens under SmolLM2's tokenizer, so the largest budget is 240k
# (96 % of it), not the 400k first planned.
BUDGETS = (25_000, 100_000, 240_000)
OBJECTIVES = ("mle", "emo")
SEEDS = (0,)
CONFIG = "smollm2_study.py"
PRETRAINED = "smollm2-135m"
DEFAULT_ROOT = os.path.join(study_grid.REPO, "workdirs", "smollm2_data_scale")
DEFAULT_ARCHIVE = os.path.join(study_grid.REPO, "experiments", "results", "smollm2_data_scale")
STUDY_ARCHIVE = os.path.join(study_grid.REPO, "experiments", "results", "smollm2")
TASKS = ("ag_news", "sst2")
# A record's per-query few-shot outcomes, ``{task: {"correct": [bool], "predictions": [label]}}``:
# the paired test's and the label shares' input, kept out of the summary JSON.
PER_QUERY = "per query"


def _study_config():
  sys.path.insert(0, study_grid.REPO)  # configs/ sits at the repository root.
  from configs import smollm2_study

  return smollm2_study.get_config()


# The study's own points: one pass of num_steps batches (60 x 8 x 256 = 122,880 tokens).
_STUDY_CONFIG = _study_config()
STUDY_TOKENS = (
  _STUDY_CONFIG.train.num_steps * _STUDY_CONFIG.train.batch_size * _STUDY_CONFIG.data.block_size
)
EVALUATIONS_PER_RUN = 6  # As the study's 60-step runs validate every 10 steps.


def group(budget: int) -> str:
  """The path component that takes the corpus's place in ``study_grid.py``'s layout."""
  return f"tokens{budget}"


def steps_per_epoch(budget: int) -> int:
  """Optimizer steps in one epoch of a budget's subset under :data:`CONFIG` (every block but
  the split's last is full, so the subset has ⌈budget / block_size⌉ blocks; an incomplete
  batch is dropped)."""
  return -(-budget // _STUDY_CONFIG.data.block_size) // _STUDY_CONFIG.train.batch_size


def point_commands(root, budget, objective, seed, extra=()):
  """``[(command, done_marker)]``: fine-tune, evaluate, score few-shot."""
  workdir = study_grid.run_dir(root, group(budget), objective, seed)
  every = max(1, round(steps_per_epoch(budget) / EVALUATIONS_PER_RUN))
  common = [
    f"--config.model.pretrained={PRETRAINED}",
    f"--config.data.corpus={CORPUS}",
    f"--config.seed={seed}",
    *study_grid.OBJECTIVES[objective],
    f"--config.data.max_train_tokens={budget}",
    "--config.train.num_epochs=1",
    f"--config.train.eval_every={every}",
    f"--config.train.save_every={every}",
    *extra,
  ]
  fewshot = os.path.join(workdir, study_grid.FEWSHOT_FILE)
  return [
    (study.main_py(CONFIG, workdir, *common), os.path.join(workdir, "results.json")),
    (
      study.main_py(CONFIG, workdir, "--mode", "eval", *common),
      os.path.join(workdir, "eval.json"),
    ),
    (
      [
        sys.executable,
        os.path.join(study_grid.REPO, "experiments", "fewshot.py"),
        "--out",
        fewshot,
        "--model",
        f"{objective}={os.path.join(workdir, 'hf_export')}",
      ],
      fewshot,
    ),
  ]


# The contextually calibrated few-shot scores of the points whose exported model was kept
# (``calibrate``; points scored since calibration was added carry it in their own file).
CALIBRATED_FILE = "fewshot_calibrated.json"


def calibrated_name(objective: str, budget: int) -> str:
  return f"{objective}_{budget // 1000}k"


def calibrate_command(root, out, budgets, objectives, seed):
  """``experiments/fewshot.py`` over the base and every point of ``seed`` whose ``hf_export``
  is still in ``root`` (models named by :func:`calibrated_name`), and the points without one."""
  command = [
    sys.executable,
    os.path.join(study_grid.REPO, "experiments", "fewshot.py"),
    "--out",
    out,
    "--model",
    f"{study_grid.BASE}={PRETRAINED}",
  ]
  missing = []
  for budget in budgets:
    for objective in objectives:
      export = os.path.join(study_grid.run_dir(root, group(budget), objective, seed), "hf_export")
      if os.path.isdir(export):
        command += ["--model", f"{calibrated_name(objective, budget)}={export}"]
      else:
        missing.append(calibrated_name(objective, budget))
  return command, missing


def calibrated_report(path, table, budgets, objectives, seed=0, baseline="mle", other="emo"):
  """Few-shot accuracy as scored (the protocol) and contextually calibrated, for the models
  in ``path`` (:func:`calibrate_command`'s output), then ``other`` against ``baseline``
  calibrated, per budget (McNemar). Each rescored model's uncalibrated predictions are
  compared with its archived point's (``table``): the count of queries they agree on."""
  results = study_report.read_json(path)
  models = [(study_grid.BASE, 0, study_grid.BASE)] + [
    (calibrated_name(o, b), b, o) for b in budgets for o in objectives
  ]
  models = [m for m in models if m[0] in results]
  lines = [
    (
      "Few-shot accuracy as scored and contextually calibrated (Zhao et al. 2021: label "
      "probabilities divided by the prompt's prior, measured on content-free queries), for the "
      f"models whose export was kept (seed {seed}); last column: queries on which the rescoring's "
      "uncalibrated predictions equal the archived point's:"
    ),
    "",
    "| model | training tokens | "
    + " | ".join(f"{task} scored | {task} calibrated" for task in TASKS)
    + " | same predictions |",
    "|---|---:|" + "---:|---:|" * len(TASKS) + "---:|",
  ]
  for name, tokens, objective in models:
    tasks = results[name]["tasks"]
    cells = []
    for task in TASKS:
      cells += [f"{tasks[task]['accuracy']:.3f}", f"{tasks[task]['calibrated']['accuracy']:.3f}"]
    record = table.get(objective, {}).get(tokens, {}).get(0 if tokens == 0 else seed)
    agree = "—"
    if record is not None:
      same = [
        np.sum(np.equal(tasks[t]["predictions"], record[PER_QUERY][t]["predictions"]))
        for t in TASKS
      ]
      total = sum(len(record[PER_QUERY][t]["predictions"]) for t in TASKS)
      agree = f"{sum(same)} / {total}"
    lines.append(f"| {name} | {tokens:,} | " + " | ".join(cells) + f" | {agree} |")
  lines += [
    "",
    (
      f"Calibrated, {other} against {baseline} (accuracy difference, queries only {other} / only "
      f"{baseline} gets right, exact McNemar p):"
    ),
    "",
    "| training tokens | " + " | ".join(f"{task} {other} − {baseline}" for task in TASKS) + " |",
    "|---:|" + "---|" * len(TASKS),
  ]
  for budget in budgets:
    names = calibrated_name(other, budget), calibrated_name(baseline, budget)
    if not all(name in results for name in names):
      continue
    ours, theirs = (results[name]["tasks"] for name in names)
    cells = [
      _paired_cell(a["accuracy"], a["correct"], b["accuracy"], b["correct"])
      for a, b in ((ours[t]["calibrated"], theirs[t]["calibrated"]) for t in TASKS)
    ]
    lines.append(f"| {budget:,} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def run(root, archive, budgets, objectives, seeds, extra=(), prune_checkpoints=False):
  """Every point trained, evaluated, scored and archived in a row (smallest budget first)."""
  for budget in budgets:
    for objective in objectives:
      for seed in seeds:
        commands = point_commands(root, budget, objective, seed, extra)
        point = (group(budget), objective, seed)
        study.run_point(root, archive, point, commands, prune_checkpoints)


def _point_record(directory, objective):
  """``{perplexity, MAUVE, mean DEMD, best step, <task>: accuracy, <task> 95% CI: [low,
  high], <PER_QUERY>}`` of a finished point's files (the interval: Wilson's, over the task's
  queries); None until its evaluation and few-shot scores exist."""
  paths = {name: os.path.join(directory, name) for name in ("eval.json", study_grid.FEWSHOT_FILE)}
  if not all(os.path.exists(path) for path in paths.values()):
    return None
  evaluation = study_report.read_json(paths["eval.json"])
  tasks = study_report.read_json(paths[study_grid.FEWSHOT_FILE])[objective]["tasks"]
  record = {
    "perplexity": evaluation["perplexity"],
    "MAUVE": evaluation["mauve"]["mean"],
    "mean DEMD": evaluation["mean_demd"],
    **{task: tasks[task]["accuracy"] for task in TASKS},
    **{f"{task} 95% CI": [tasks[task]["low"], tasks[task]["high"]] for task in TASKS},
    PER_QUERY: {
      task: {key: tasks[task][key] for key in ("correct", "predictions")} for task in TASKS
    },
  }
  best = os.path.join(directory, "best_metric.json")
  record["best step"] = study_report.read_json(best)["step"] if os.path.exists(best) else None
  return record


def collect(root, budgets=BUDGETS, objectives=OBJECTIVES, seeds=SEEDS, study_archive=STUDY_ARCHIVE):
  """``{objective: {tokens: {seed: record}}}``; tokens 0 is the untouched base (its own
  objective key ``base``), and the study's WikiText-2 points sit at :data:`STUDY_TOKENS` under
  ``<objective> (study)``."""
  table = {}
  for objective in objectives:
    for budget in budgets:
      for seed in seeds:
        record = _point_record(study_grid.run_dir(root, group(budget), objective, seed), objective)
        if record:
          table.setdefault(objective, {}).setdefault(budget, {})[seed] = record
    for seed in study_grid.SEEDS:
      directory = study_grid.run_dir(study_archive, CORPUS, objective, seed)
      record = _point_record(directory, objective)
      if record:
        table.setdefault(f"{objective} (study)", {}).setdefault(STUDY_TOKENS, {})[seed] = record
  base = _point_record(
    study_grid.run_dir(study_archive, CORPUS, study_grid.BASE, 0), study_grid.BASE
  )
  if base:
    table[study_grid.BASE] = {0: {0: base}}
  return table


COLUMNS = ("perplexity", "MAUVE", *TASKS)


def markdown(table) -> str:
  """One row per (objective, tokens): mean over seeds of each column, the seeds' count."""
  lines = [
    "| objective | training tokens | seeds | best step | test perplexity | MAUVE | "
    + " | ".join(f"{task} accuracy" for task in TASKS)
    + " |",
    "|---|---:|---:|---:|---:|---:|" + "---:|" * len(TASKS),
  ]
  for objective, by_tokens in table.items():
    for tokens, by_seed in sorted(by_tokens.items()):
      records = list(by_seed.values())
      steps = sorted({r["best step"] for r in records if r["best step"] is not None})
      cells = [
        f"{np.mean([r[c] for r in records]):.{2 if c == 'perplexity' else 3}f}" for c in COLUMNS
      ]
      lines.append(
        f"| {objective} | {tokens:,} | {len(records)} | {'/'.join(map(str, steps)) or '—'} | "
        + " | ".join(cells)
        + " |"
      )
  return "\n".join(lines)


def _paired_cell(accuracy, correct, baseline_accuracy, baseline_correct) -> str:
  """``+0.060 (+46 / -3, p<0.001)``: the accuracy difference, the queries only one side gets
  right, and the exact McNemar p on them."""
  from emo_jax import fewshot  # Loads jax: only here, as study_report does.

  paired = fewshot.mcnemar(correct, baseline_correct)
  return (
    f"{accuracy - baseline_accuracy:+.3f} (+{paired['a_only']} / -{paired['b_only']}, "
    f"{study_report.format_p_value(paired['p_value'])})"
  )


def paired_report(table, seed=0, baseline="mle", other="emo") -> str:
  """``other`` against ``baseline`` on one seed at each budget of :func:`collect`'s ``table``
  where both finished (then the study's points, ``<objective> (study)``): the differences of
  test perplexity and MAUVE, and for each few-shot task the accuracy difference with an exact
  McNemar test on the same queries (study_report's few-shot test). One seed: a difference in
  perplexity or MAUVE has no test here, and the McNemar test speaks to these two models, not
  to the objectives' spread over seeds."""
  lines = [
    (
      f"{other} against {baseline}, seed {seed} at each budget (few-shot: accuracy difference, "
      f"queries only {other} / only {baseline} gets right, exact McNemar p):"
    ),
    "",
    f"| training tokens | test perplexity {other} − {baseline} | MAUVE {other} − {baseline} | "
    + " | ".join(f"{task} {other} − {baseline}" for task in TASKS)
    + " |",
    "|---|---:|---:|" + "---|" * len(TASKS),
  ]
  pairs = [
    (tokens, f"{tokens:,}{suffix}", table[baseline + suffix][tokens].get(seed), by_seed.get(seed))
    for suffix in ("", " (study)")
    for tokens, by_seed in table.get(other + suffix, {}).items()
    if tokens in table.get(baseline + suffix, {})
  ]
  for _, label, theirs, ours in sorted(pairs, key=lambda pair: pair[0]):
    if theirs is None or ours is None:
      continue
    cells = [
      f"{ours['perplexity'] - theirs['perplexity']:+.2f}",
      f"{ours['MAUVE'] - theirs['MAUVE']:+.3f}",
    ]
    for task in TASKS:
      cells.append(
        _paired_cell(
          ours[task],
          ours[PER_QUERY][task]["correct"],
          theirs[task],
          theirs[PER_QUERY][task]["correct"],
        )
      )
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def gold_labels(manual_dir=None) -> dict[str, list[int]]:
  """``{task: [gold label of each test query]}``, read from the data folder as
  ``experiments/fewshot.py`` read the queries (all of them, in order)."""
  from emo_jax import fewshot  # Loads jax: only here, as study_report does.

  return {
    task: [label for _, label in fewshot.load_task(task, manual_dir=manual_dir).queries]
    for task in TASKS
  }


def _shares(labels, count: int) -> list[float]:
  return list(np.bincount(np.asarray(labels, dtype=int), minlength=count) / len(labels))


def label_shares_report(table, seed=0, gold=None) -> str:
  """The share of each task's queries that each point (seed ``seed``; the base) assigns to
  each label, under the gold labels' shares when ``gold`` (:func:`gold_labels`) is given: a
  falling accuracy that comes with one label taking most queries is a shift of the label
  prior that the perplexity-scored prompt sees, not only a loss of the task. Each point's
  right answers are checked against ``gold`` (the same queries, in the same order)."""
  from emo_jax import fewshot  # Loads jax: only here, as study_report does.

  words = {task: fewshot.TASKS[task].label_words for task in TASKS}
  lines = [
    f"Share of the few-shot queries given each label (seed {seed}"
    + ("; the gold labels' first):" if gold is not None else "):"),
    "",
    "| model | training tokens | "
    + " | ".join(f"{task}: {' / '.join(words[task])}" for task in TASKS)
    + " |",
    "|---|---:|" + "---|" * len(TASKS),
  ]

  def cells(labels):
    return " | ".join(
      " / ".join(f"{share:.2f}" for share in _shares(labels[task], len(words[task])))
      for task in TASKS
    )

  if gold is not None:
    lines.append(f"| gold | — | {cells(gold)} |")
  for objective, by_tokens in table.items():
    for tokens, by_seed in sorted(by_tokens.items()):
      record = by_seed.get(0 if objective == study_grid.BASE else seed)
      if record is None:
        continue
      predictions = {task: record[PER_QUERY][task]["predictions"] for task in TASKS}
      for task in TASKS if gold is not None else ():
        outcomes = [p == g for p, g in zip(predictions[task], gold[task], strict=False)]
        if len(predictions[task]) != len(gold[task]) or (
          outcomes != record[PER_QUERY][task]["correct"]
        ):
          raise ValueError(
            f"{objective} at {tokens} tokens: its {task} outcomes do not match the gold "
            f"labels read from the data ({len(predictions[task])} predictions, "
            f"{len(gold[task])} queries): not the queries it was scored on."
          )
      lines.append(f"| {objective} | {tokens:,} | {cells(predictions)} |")
  return "\n".join(lines)


def plot(table, path) -> str:
  """Test perplexity and the few-shot accuracies against the training tokens (log scale);
  the base as a dashed line, the study's points as hollow markers (their mean over seeds). A
  one-seed point's accuracy carries its 95% interval over the queries: the spread between
  fine-tuning seeds is not in it."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 1 + len(TASKS), figsize=(5 * (1 + len(TASKS)), 4))
  base = table.get(study_grid.BASE, {}).get(0, {}).get(0)
  for axis, column in zip(axes, ("perplexity", *TASKS), strict=True):
    for objective, by_tokens in table.items():
      if objective == study_grid.BASE:
        continue
      name = objective.removesuffix(" (study)")
      tokens = sorted(by_tokens)
      means = [np.mean([r[column] for r in by_tokens[t].values()]) for t in tokens]
      hollow = objective.endswith("(study)")
      errors = None
      if column in TASKS and all(len(by_tokens[t]) == 1 for t in tokens):
        intervals = [next(iter(by_tokens[t].values()))[f"{column} 95% CI"] for t in tokens]
        errors = np.abs(np.asarray(intervals).T - np.asarray(means))  # [2, points]
      axis.errorbar(
        tokens,
        means,
        yerr=errors,
        capsize=3,
        marker="o",
        linestyle="none" if hollow else "-",
        markerfacecolor="none" if hollow else study_report.COLORS[name],
        color=study_report.COLORS[name],
        label=objective,
      )
    if base:
      axis.axhline(
        base[column], color=study_report.COLORS[study_grid.BASE], linestyle="--", label="base"
      )
      if column in TASKS:
        axis.axhspan(
          *base[f"{column} 95% CI"], color=study_report.COLORS[study_grid.BASE], alpha=0.1
        )
    axis.set_xscale("log")
    axis.set_xlabel("fine-tuning tokens (one epoch)")
    axis.set_title(f"{CORPUS}: test perplexity" if column == "perplexity" else f"{column} (8-shot)")
    axis.legend()
  return study_report.save_figure(fig, path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("action", choices=["commands", "run", "calibrate", "report"])
  parser.add_argument("--root", help=f"run: default {DEFAULT_ROOT}; report: default the archive")
  parser.add_argument("--archive", default=DEFAULT_ARCHIVE, help="run: where points are archived")
  parser.add_argument("--no_archive", action="store_true")
  parser.add_argument(
    "--prune_checkpoints",
    action="store_true",
    help="run: delete each archived point's periodic checkpoints (study.py's flag)",
  )
  parser.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
  parser.add_argument(
    "--objectives", nargs="+", default=list(OBJECTIVES), choices=list(study_grid.OBJECTIVES)
  )
  parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
  parser.add_argument(
    "--study_archive", default=STUDY_ARCHIVE, help="report: the base's and study's rows"
  )
  parser.add_argument(
    "--data_dir", help="report: the data folder for the few-shot gold labels (EMO_JAX_DATA)"
  )
  parser.add_argument("--figure", help="report: write the curves to this PNG")
  parser.add_argument("--summary", help="report: write the table as JSON")
  parser.add_argument(
    "--update", help="report: also write between this file's smollm2_data_scale markers"
  )
  argv = sys.argv[1:] if argv is None else list(argv)
  extra = argv[argv.index("--") + 1 :] if "--" in argv else []  # Passed on to main.py.
  args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
  archive = None if args.no_archive else args.archive
  if args.action == "commands":
    for budget in args.budgets:
      for objective in args.objectives:
        for seed in args.seeds:
          for command, _ in point_commands(
            args.root or DEFAULT_ROOT, budget, objective, seed, extra
          ):
            print(shlex.join(command))
    return
  if args.action == "run":
    root = args.root or DEFAULT_ROOT
    run(root, archive, args.budgets, args.objectives, args.seeds, extra, args.prune_checkpoints)
    return
  if args.action == "calibrate":
    command, missing = calibrate_command(
      args.root or DEFAULT_ROOT,
      os.path.join(args.archive, CALIBRATED_FILE),
      args.budgets,
      args.objectives,
      min(args.seeds),
    )
    if missing:
      print(f"no exported model (pruned or never trained): {', '.join(missing)}", file=sys.stderr)
    print(shlex.join(command), flush=True)
    child_process.raise_on_sigterm()
    returncode = child_process.run(command)
    if returncode:
      raise SystemExit(returncode)
    return
  table = collect(
    args.root or args.archive, args.budgets, args.objectives, args.seeds, args.study_archive
  )
  try:
    gold = gold_labels(args.data_dir)
  except FileNotFoundError as error:  # The report still stands without the gold row.
    gold = None
    print(f"gold labels left out of the label shares: {error}", file=sys.stderr)
  calibrated = os.path.join(args.root or args.archive, CALIBRATED_FILE)
  sections = [
    markdown(table),
    paired_report(table, seed=min(args.seeds)),
    label_shares_report(table, seed=min(args.seeds), gold=gold),
  ]
  if os.path.exists(calibrated):
    sections.append(
      calibrated_report(calibrated, table, args.budgets, args.objectives, min(args.seeds))
    )
  text = "\n\n".join(
    [
      *sections,
      "Wall-clock of each stage (`cores`: CPU cores the command could use):\n\n"
      + study_report.timings_report(
        args.root or args.archive, {group(b): list(args.objectives) for b in args.budgets}
      ),
    ]
  )
  if args.figure:
    path = plot(table, args.figure)
    # In the updated file the link is relative to it, as the study report's figures are.
    link = (
      os.path.relpath(path, os.path.dirname(os.path.abspath(args.update))) if args.update else path
    )
    text += f"\n\n![data scale]({link})"
  print(text)
  if args.update:
    study_report.update_between_markers(args.update, text, "smollm2_data_scale")
  if args.summary:
    serialisable = {
      objective: {
        str(t): {str(s): {k: v for k, v in r.items() if k != PER_QUERY} for s, r in by_seed.items()}
        for t, by_seed in by_tokens.items()
      }
      for objective, by_tokens in table.items()
    }
    with open(args.summary, "w") as f:
      json.dump(serialisable, f, indent=1, sort_keys=True)
      f.write("\n")


if __name__ == "__main__":
  main()
