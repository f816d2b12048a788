"""Is a fine-tuned model's perplexity loss a matter of calibration? Temperature scaling of
study v2's points (issue #17).

The decoding comparison found EMO's MAUVE lead at T = 1 to be what a lower temperature gives
MLE: EMO samples from a sharper distribution. A sharper distribution also pays in likelihood
for the tokens it is confident against, and a single temperature can undo that part. Per
point this measures the NLL-optimal temperature T* (one scalar, minimised over a grid on the
validation blocks and refined between its points), the test perplexity at T = 1 and at T* (how much of a perplexity gap
temperature scaling removes), the mean predictive entropy and the top-1 over-confidence
(mean max probability minus top-1 accuracy), on the blocks the study reads
(``configs/smollm2_study.py``: T* on the 32 validation blocks of 256 tokens that training
chose its checkpoint on, the rest on the first 64 test blocks).

    EMO_JAX_DATA=../shared/data python experiments/calibration.py run    # resumable
    python experiments/calibration.py report --update experiments/RESULTS.md

Models: every point's exported best model under ``--workdirs`` (the study's workdirs: exports
are not archived; a point whose export is gone is skipped, named) and the untouched base.
Results: one record per point in ``--out``, rewritten atomically after each point, with the
commit that measured it and the study's own test perplexity, which the report compares with
T = 1's (the largest difference is printed); a point already there is not measured again.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import provenance
import study_report
from study_grid import BASE, CORPORA, OBJECTIVES, REPO, SEEDS, SETTINGS, run_dir

import study

sys.path.insert(0, REPO)  # configs/ sits at the repository root.

# The validation grid: NLL-optimal temperatures of fine-tuned LMs sit near 1. Each grid
# temperature costs a pass of exp over every [tokens, V] logit, so the grid is coarse and
# T* is refined between grid points (:func:`optimal_temperature`).
TEMPERATURES = tuple(round(0.8 + 0.05 * i, 2) for i in range(13))
DEFAULT_WORKDIRS = study.workdirs_dir("smollm2")
DEFAULT_OUT = os.path.join(REPO, "experiments", "results", "smollm2_calibration.json")
STUDY_ARCHIVE = study.archive_dir("smollm2")
PRETRAINED = SETTINGS["smollm2"].pretrained
FIT_SPLIT, TEST_SPLIT = "validation", "test"  # T* is fitted on one, scored on the other.


def study_config(corpus: str, variant: str = ""):
  from configs import smollm2_study

  config = smollm2_study.get_config(variant)
  config.data.corpus = corpus
  return config


def point_key(corpus, objective, seed) -> str:
  return f"{corpus}/{objective}/seed{seed}"


def model_source(workdirs, corpus, objective, seed, base=PRETRAINED) -> str:
  """The base itself, or a point's exported best model."""
  return (
    base
    if objective == BASE
    else os.path.join(run_dir(workdirs, corpus, objective, seed), "hf_export")
  )


def optimal_temperature(temperatures, ce_sums) -> float:
  """The NLL-minimising temperature from NLL sampled on a grid: the vertex of the parabola
  in β = 1/T through the grid minimum and its neighbours (NLL is convex in β: a
  log-sum-exp of logits linear in β, minus the target's), clipped to their interval; the
  grid's end where the minimum lies there."""
  betas, ce = 1.0 / np.asarray(temperatures, np.float64), np.asarray(ce_sums, np.float64)
  best = int(np.argmin(ce))
  if best in (0, len(ce) - 1):
    return float(temperatures[best])
  b, c = betas[best - 1 : best + 2], ce[best - 1 : best + 2]
  curvature, slope, _ = np.polyfit(b, c, 2)
  beta = -slope / (2 * curvature) if curvature > 0 else b[1]
  return float(1.0 / np.clip(beta, b.min(), b.max()))


def split_blocks(config, tokenizer, split, max_length, max_blocks):
  """The first ``max_blocks`` (0: all) packed blocks of a split, packed as in training."""
  from emo_jax import data as data_lib
  from emo_jax.data import input_pipeline

  blocks = input_pipeline.tokenize_and_pack(
    data_lib.read_split(config.data, split),
    tokenizer,
    min(config.data.block_size, max_length),
    name=f"{config.data.corpus}/{split}",
  )
  return blocks[:max_blocks] if max_blocks else blocks


@functools.cache
def jitted_calibration_step():
  """:func:`token_metrics.calibration_step` compiled once per model architecture and
  temperature count for the whole run: every point's model is the same module (equal and
  hashed by its config), so only its parameters change."""
  import jax

  from emo_jax.evaluation import token_metrics

  return jax.jit(token_metrics.calibration_step, static_argnames="model")


def measure(config, source, batch_size) -> dict:
  """One point's record: T* from the validation grid, then the test blocks at T = 1 and T*."""
  from emo_jax import models, sharding
  from emo_jax.data import tokenizer as tokenizer_lib
  from emo_jax.evaluation import token_metrics

  start = time.time()
  model, params = models.from_pretrained(source)
  tokenizer = tokenizer_lib.resolve_tokenizer(config.data.tokenizer, source)
  tokenizer.check_model_vocab(model.vocab_size)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  step = jitted_calibration_step()

  def sums(split, max_blocks, temperatures):
    temperatures = np.asarray(temperatures, np.float32)  # Traced: any T* reuses the compile.
    return token_metrics.token_sums(
      lambda params, batch: step(params, batch, model=model, temperatures=temperatures),
      params,
      split_blocks(config, tokenizer, split, model.max_length, max_blocks),
      batch_size,
      mesh,
    )

  # T* on the validation blocks training chose its checkpoint on; the test blocks are the
  # study evaluation's.
  fit = sums(FIT_SPLIT, config.data.max_eval_blocks, TEMPERATURES)
  best = optimal_temperature(TEMPERATURES, fit["ce_sum"])
  test = sums(TEST_SPLIT, config.eval.max_blocks, (1.0, best))
  return {
    "T*": best,
    "perplexity": float(np.exp(test["ce_sum"][0] / test["count"])),
    "perplexity at T*": float(np.exp(test["ce_sum"][1] / test["count"])),
    "entropy": test["entropy_sum"] / test["count"],
    "over-confidence": (test["confidence_sum"] - test["correct_sum"]) / test["count"],
    "accuracy": test["correct_sum"] / test["count"],
    "fit": {
      "temperatures": list(TEMPERATURES),
      "ce_sum": fit["ce_sum"].tolist(),
      "count": fit["count"],
    },
    "blocks": {"fit": config.data.max_eval_blocks, "test": config.eval.max_blocks},
    "source": source,
    "seconds": time.time() - start,
    "commit": provenance.current_commit(),
  }


def read_results(path) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def study_perplexity(archive, corpus, objective, seed) -> float | None:
  """The point's test perplexity in the study's archive, to compare with T = 1's here."""
  path = os.path.join(run_dir(archive, corpus, objective, seed), "eval.json")
  return study_report.read_json(path)["perplexity"] if os.path.exists(path) else None


def run(
  workdirs,
  out,
  corpora,
  objectives,
  seeds,
  batch_size,
  base=PRETRAINED,
  variant="",
  archive=STUDY_ARCHIVE,
):
  """Measures every point (each corpus's base first) not yet in ``out``."""
  from emo_jax import checkpointing

  results = read_results(out)
  points = [
    (c, o, s) for c in corpora for o in (BASE, *objectives) for s in ((0,) if o == BASE else seeds)
  ]
  for corpus, objective, seed in points:
    key = point_key(corpus, objective, seed)
    if key in results:
      print(f"measured already: {key}", flush=True)
      continue
    source = model_source(workdirs, corpus, objective, seed, base)
    if objective != BASE and not os.path.isdir(source):
      print(f"no export {source}: {key} skipped", flush=True)
      continue
    record = measure(study_config(corpus, variant), source, batch_size)
    record["study perplexity"] = study_perplexity(archive, corpus, objective, seed)
    results[key] = record
    checkpointing.write_json_atomically(out, results)
    print(
      f"{key}: T* {record['T*']:.2f}, perplexity {record['perplexity']:.2f} (study: "
      f"{record['study perplexity']}) -> {record['perplexity at T*']:.2f} at T*, entropy "
      f"{record['entropy']:.3f}, over-confidence {record['over-confidence']:+.4f} "
      f"({record['seconds']:.0f} s)",
      flush=True,
    )


# Column -> (decimals, lower is better; None: no verdict, neither direction is better).
COLUMNS = {
  "T*": (2, None),
  "perplexity": (2, True),
  "perplexity at T*": (2, True),
  "entropy": (3, None),
  "over-confidence": (4, None),
}


def report(results, corpora, objectives, seeds, baseline="mle") -> str:
  """Markdown: per corpus, each objective's mean ± std over seeds, the perplexities paired
  by seed against ``baseline`` (win / tie / loss, p, seeds better)."""
  legend = (
    "T*: the NLL-optimal temperature on the validation blocks (grid "
    f"{TEMPERATURES[0]:g}–{TEMPERATURES[-1]:g}, step 0.05, refined between grid points); "
    "perplexity at T = 1 and at T* on "
    "the test blocks; entropy: mean predictive entropy (nats); over-confidence: mean top-1 "
    "probability minus top-1 accuracy."
  )
  lines = [legend, ""]
  for corpus in corpora:
    rows = {}
    for objective in (BASE, *objectives):
      for seed in (0,) if objective == BASE else seeds:
        record = results.get(point_key(corpus, objective, seed))
        if record:
          rows.setdefault(objective, {"seeds": []})["seeds"].append(seed)
          for column in COLUMNS:
            rows[objective].setdefault(column, []).append(record[column])
    if not rows:
      continue
    lines += [
      f"#### {corpus}",
      "",
      "| objective | seeds | " + " | ".join(COLUMNS) + " |",
      "|---|---:|" + "---:|" * len(COLUMNS),
    ]
    checked = [
      abs(record["perplexity"] / record["study perplexity"] - 1)
      for key, record in results.items()
      if key.startswith(f"{corpus}/") and record.get("study perplexity")
    ]
    reference = rows.get(baseline)
    for objective, values in rows.items():
      cells = []
      for column, (digits, lower_is_better) in COLUMNS.items():
        cell = f"{np.mean(values[column]):.{digits}f} ± {np.std(values[column]):.{digits}f}"
        if lower_is_better is not None and reference and objective not in (baseline, BASE):
          comparison = study_report.compare(values, reference, column, not lower_is_better)
          cell += f" ({comparison.describe()})"
        cells.append(cell)
      lines.append(f"| {objective} | {len(values['seeds'])} | " + " | ".join(cells) + " |")
    if checked:
      agreement = (
        f"The perplexity at T = 1 differs from the study's (`eval.json`) by at most "
        f"{100 * max(checked):.2g} % over {len(checked)} points."
      )
      lines += ["", agreement]
    lines.append("")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("action", choices=["run", "report"])
  parser.add_argument("--workdirs", default=DEFAULT_WORKDIRS, help="run: the study's workdirs")
  parser.add_argument("--out", default=DEFAULT_OUT, help="the results file (JSON)")
  parser.add_argument("--corpora", nargs="+", default=list(CORPORA))
  parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
  parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
  parser.add_argument("--batch_size", type=int, default=8, help="run: blocks per forward pass")
  parser.add_argument("--base", default=PRETRAINED, help="run: the untouched base's source")
  parser.add_argument(
    "--archive",
    default=STUDY_ARCHIVE,
    help="run: the study's archive, whose test perplexities T = 1's are compared with",
  )
  parser.add_argument(
    "--smoke", action="store_true", help="run: the study config's smoke sizes (tests)"
  )
  parser.add_argument(
    "--update", help="report: write between this file's smollm2_calibration markers"
  )
  args = parser.parse_args(argv)
  if args.action == "run":
    run(
      args.workdirs,
      args.out,
      args.corpora,
      args.objectives,
      args.seeds,
      args.batch_size,
      args.base,
      "smoke" if args.smoke else "",
      args.archive,
    )
    return
  text = report(read_results(args.out), args.corpora, args.objectives, args.seeds)
  if args.update:
    study_report.update_between_markers(args.update, text, "smollm2_calibration")
  else:
    print(text)


if __name__ == "__main__":
  main()
