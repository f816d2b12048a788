"""The instruction-tuning comparison's table (issue #19) from its workdirs.

    python experiments/instruct_report.py --root workdirs/instruct

reads ``<root>/base/eval.json`` (the untouched model, ``--mode eval --config.eval.model=...``)
and, for every ``<root>/lora.rank=R,loss.name=L`` run of ``experiments/sweep.py``, its
``results.json``, ``metrics.jsonl`` and ``eval.json``; prints one Markdown row per run: the
best validation (response-token) perplexity and its step, the held-out test instructions'
response perplexity and mean DEMD, MAUVE and ROUGE-L of the sampled responses, ROUGE-L of the
greedy ones, response lengths, the share of responses that ended with EOS, training
seconds per step and trainable parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import re

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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", default="workdirs/instruct")
  args = parser.parse_args()
  print(table(rows(args.root)))


if __name__ == "__main__":
  main()
