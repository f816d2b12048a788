"""Few-shot accuracy of models on AG News and SST-2 (emo_jax.fewshot), with paired tests.

    EMO_JAX_DATA=../shared/data python experiments/fewshot.py --out fewshot.json \\
        --model base=smollm2-135m --model emo=runs/wt2/emo/seed0/hf_export

Each ``--model NAME=SOURCE`` (any model source: a packaged name, a .gguf, an HF directory,
e.g. a run's ``hf_export``) is scored on every task with the same demonstrations; the table
gives accuracy with its Wilson 95% interval and, for every model after the first, an exact
McNemar test against the first on the same queries; a second table does the same for the
contextually calibrated predictions (``emo_jax.fewshot``). The JSON holds every prediction, so
paired tests across any two models can be redone later. A model already in ``--out`` with the
same source and settings (k, demonstration seed, query cap, content-free inputs) is not scored again (the file is
rewritten atomically after each model).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emo_jax import checkpointing, fewshot, models
from emo_jax.data import tokenizer as tokenizer_lib


def parse_model(spec: str) -> tuple[str, str]:
  name, sep, source = spec.partition("=")
  if not sep or not name or not source:
    raise argparse.ArgumentTypeError(f"--model needs NAME=SOURCE, got {spec!r}.")
  return name, source


def table(results: dict, baseline: str, calibrated: bool = False) -> str:
  """Accuracy per model and task with its interval and McNemar against ``baseline``; with
  ``calibrated``, of the contextually calibrated predictions."""

  def scores(model, task):
    result = model["tasks"][task]
    return result["calibrated"] if calibrated else result

  tasks = sorted({task for model in results.values() for task in model["tasks"]})
  lines = [
    "| model | " + " | ".join(f"{t} acc. [95% CI] | vs {baseline} (p)" for t in tasks) + " |",
    "|---|" + "---|---|" * len(tasks),
  ]
  for name, model in results.items():
    cells = []
    for task in tasks:
      result = scores(model, task)
      cells.append(f"{result['accuracy']:.3f} [{result['low']:.3f}, {result['high']:.3f}]")
      if name == baseline or task not in results[baseline]["tasks"]:
        cells.append("—")
      else:
        test = fewshot.mcnemar(result["correct"], scores(results[baseline], task)["correct"])
        cells.append(f"+{test['a_only']} / -{test['b_only']} ({test['p_value']:.3f})")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--model",
    type=parse_model,
    action="append",
    required=True,
    help="NAME=SOURCE (repeatable); the first is the paired tests' baseline",
  )
  parser.add_argument("--tasks", default="ag_news,sst2")
  parser.add_argument("--k", type=int, default=8, help="demonstrations per prompt")
  parser.add_argument("--demonstration_seed", type=int, default=0)
  parser.add_argument("--max_queries", type=int, default=0, help="0 = the whole test split")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--out", required=True, help="JSON file of results (resumable)")
  args = parser.parse_args(argv)
  tasks = [t for t in args.tasks.split(",") if t]
  unknown = sorted(set(tasks) - set(fewshot.TASKS))
  if unknown:
    parser.error(f"unknown tasks {unknown}; known: {sorted(fewshot.TASKS)}.")

  results = {}
  if os.path.exists(args.out):
    with open(args.out) as f:
      results = json.load(f)
  # What makes a stored score reusable: a model scored under other settings is rescored.
  settings = {
    "k": args.k,
    "demonstration_seed": args.demonstration_seed,
    "max_queries": args.max_queries,
    "content_free": list(fewshot.CONTENT_FREE),  # The calibrated score's prior.
  }
  data = {}  # Each task's prompts, read once for all models.
  for name, source in args.model:
    stored = results.get(name, {})
    if (
      stored.get("source") == source
      and stored.get("settings") == settings
      and set(tasks) <= set(stored.get("tasks", {}))
    ):
      continue
    model, params = models.from_pretrained(source)
    tokenizer = tokenizer_lib.tokenizer_for_model(source)
    entry = {"source": source, "settings": settings, "tasks": {}, "seconds": {}}
    for task in tasks:
      if task not in data:
        data[task] = fewshot.load_task(
          task, k=args.k, demonstration_seed=args.demonstration_seed, max_queries=args.max_queries
        )
      start = time.time()
      entry["tasks"][task] = fewshot.evaluate_task(
        model, params, tokenizer, data[task], batch_size=args.batch_size
      )
      entry["seconds"][task] = time.time() - start
      print(
        f"{name} {task}: accuracy {entry['tasks'][task]['accuracy']:.3f} "
        f"({entry['seconds'][task]:.0f} s)",
        flush=True,
      )
    results[name] = entry
    checkpointing.write_json_atomically(args.out, results)
  scored = {name: results[name] for name, _ in args.model}
  print(table(scored, args.model[0][0]))
  print("\nContextually calibrated (Zhao et al. 2021; emo_jax.fewshot.calibrated_predictions):\n")
  print(table(scored, args.model[0][0], calibrated=True))
  return results


if __name__ == "__main__":
  main()
