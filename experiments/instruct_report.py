"""The instruction-tuning comparison's table (issue #19) from its workdirs.

    python experiments/instruct_report.py --root workdirs/instruct

reads ``<root>/base/eval.json`` (the untouched model, ``--mode eval --config.eval.model=...``)
and, for every ``<root>/lora.rank=R,loss.name=L`` run of ``experiments/sweep.py``, its
``results.json``, ``metrics.jsonl`` and ``eval.json``; prints one Markdown row per run: the
best validation (response-token) perplexity and its step, the held-out test instructions'
response perplexity and mean DEMD, MAUVE and ROUGE-L of the sampled responses, ROUGE-L of the
greedy ones, response lengths, the share of responses that ended with EOS, training
seconds per step and trainable parameters. With ``--paired A B`` (run directory names) it
also compares two runs prompt by prompt: the mean ROUGE-L difference of their sampled and
greedy responses and a Wilcoxon signed-rank p-value (one seed each: the prompts, not the
training runs, are the sample).
"""

from __future__ import annotations

import argparse
import json
import os
import re

import numpy as np

RUN = re.compile(r"lora\.rank=(\d+),loss\.name=(\w+)$")


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _step_seconds(metrics_path):
  with open(metrics_path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  seconds = [r["train/step_seconds"] for r in records if "train/step_seconds" in r]
  return sorted(seconds)[len(seconds) // 2] if seconds else None


def rows(root: str) -> list[dict]:
  out = []
  base = os.path.join(root, "base", "eval.json")
  if os.path.exists(base):
    out.append(dict(name="base (untouched)", eval=_read_json(base)))
  for name in sorted(os.listdir(root)):
    match = RUN.match(name)
    path = os.path.join(root, name)
    if not match or not os.path.exists(os.path.join(path, "eval.json")):
      continue
    rank, loss = int(match.group(1)), match.group(2)
    results = _read_json(os.path.join(path, "results.json"))
    best = _read_json(os.path.join(path, "best_metric.json"))
    out.append(
      dict(
        name=f"{'LoRA r' + str(rank) if rank else 'full'} · {loss.upper()}",
        eval=_read_json(os.path.join(path, "eval.json")),
        best=best,
        trainable=results["trainable_parameters"],
        step_seconds=_step_seconds(os.path.join(path, "metrics.jsonl")),
      )
    )
  return out


def table(runs: list[dict]) -> str:
  header = (
    "model",
    "best valid ppl (step)",
    "test ppl",
    "mean DEMD",
    "MAUVE (sampled)",
    "ROUGE-L sampled",
    "ROUGE-L greedy",
    "words sampled / greedy / ref",
    "ended with EOS (s / g)",
    "s / step",
    "trainable",
  )
  lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
  for run in runs:
    e, best, words = run["eval"], run.get("best"), run["eval"]["response_words"]
    cells = (
      run["name"],
      f"{best['eval/perplexity']:.3f} ({best['step']})" if best else "–",
      f"{e['perplexity']:.3f}",
      f"{e['mean_demd']:.4f}",
      f"{e['mauve']['mean']:.3f} ± {e['mauve']['std']:.3f}",
      f"{e['rouge']['rougeL']:.3f}",
      f"{e['greedy_rouge']['rougeL']:.3f}",
      f"{words['sampled']:.1f} / {words['greedy']:.1f} / {words['reference']:.1f}",
      f"{e['sampled_finished']:.2f} / {e['greedy_finished']:.2f}",
      f"{run['step_seconds']:.1f}" if run.get("step_seconds") else "–",
      f"{run['trainable']:,}" if "trainable" in run else "–",
    )
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def paired(root: str, a: str, b: str) -> str:
  """Prompt-by-prompt ROUGE-L of run ``a`` against run ``b`` (same prompts, same order)."""
  from scipy import stats

  from emo_jax.evaluation import text_metrics

  def per_prompt(name):
    with open(os.path.join(root, name, "generations.jsonl")) as f:
      records = [json.loads(line) for line in f]
    references = [r["human"] for r in records]
    return {
      field: text_metrics.rouge_per_example([r[field] for r in records], references)["rougeL"]
      for field in ("model", "greedy")
    }

  first, second = per_prompt(a), per_prompt(b)
  lines = [f"{a} vs {b}, ROUGE-L per prompt ({len(first['model'])} prompts):"]
  for field, label in (("model", "sampled"), ("greedy", "greedy")):
    diff = first[field] - second[field]
    p = float(stats.wilcoxon(diff).pvalue) if np.any(diff) else 1.0
    lines.append(
      f"  {label}: mean difference {diff.mean():+.4f} (better on {int((diff > 0).sum())}, "
      f"worse on {int((diff < 0).sum())}), Wilcoxon p = {p:.3f}"
    )
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", default="workdirs/instruct")
  parser.add_argument("--paired", nargs=2, metavar=("A", "B"), help="two run directories")
  args = parser.parse_args()
  print(table(rows(args.root)))
  if args.paired:
    print(paired(args.root, *args.paired))


if __name__ == "__main__":
  main()
