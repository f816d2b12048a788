"""``--mode eval``: perplexity, generations and the paper's metrics for one model.

``evaluate_and_report(config, workdir)`` loads the model to evaluate (``eval.model``, an HF
directory, or else the best checkpoint in ``workdir``), then

1. perplexity on ``eval.split`` (token-weighted, padding excluded; the trainer's number) and
   the mean DEMD of the model's predictions there, under ``eval.cost_model``'s head (by
   default the evaluated model's own);
2. continuations of the corpus' MAUVE prompts (:mod:`emo_jax.evaluation.prompts`), unbiased sampling by
   default, exactly ``eval.max_new_tokens`` tokens;
3. MAUVE (mean ± std over ``eval.mauve_runs``), ROUGE-1/2/L against the human continuations,
   n-gram repetition of model and human text; with ``eval.reference_model``, the oracle
   perplexity of the generations and the distribution measures against the reference;

and writes ``eval.json``, ``eval.md`` and ``generations.jsonl`` (one prompt per line: prefix,
model and human continuation) into the workdir. Generation and MAUVE run in one process (a
mesh over its local devices); perplexity is multi-process safe.

With ``eval.text_metrics=False`` step 3 is left out: a GPU host without the MAUVE featurizer
generates, and ``score_generations`` (``main.py --mode score``) adds the text metrics later,
anywhere, from ``generations.jsonl``. Both paths compute the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from emo_jax import checkpointing, config_checks, cost_embeddings, models, sampling, sharding
from emo_jax import data as data_lib
from emo_jax.data import input_pipeline, instructions
from emo_jax.data import tokenizer as tokenizer_lib
from emo_jax.evaluation import featurizers, text_metrics, token_metrics
from emo_jax.evaluation import prompts as prompts_lib

GENERATIONS = "generations.jsonl"  # Next to eval.json: what --mode score reads.


def load_model_for_eval(config: ml_collections.ConfigDict, workdir: str, vocab_size: int):
  """``(model, params, description)`` of ``eval.model`` or of the workdir's best checkpoint
  (``vocab_size``: the tokenizer's, for a from-scratch architecture)."""
  if config.eval.model:
    model, params = models.from_pretrained(config.eval.model)
    return model, params, config.eval.model
  checkpointer = checkpointing.Checkpointer(workdir)
  if checkpointer.best_step() is None and checkpointer.latest_step() is None:
    raise FileNotFoundError(
      f"no checkpoint in {workdir} (and eval.model is empty): train "
      "first, or set --config.eval.model=<HF directory>."
    )
  best = checkpointer.best_step() is not None
  params = checkpointer.read_best_params() if best else checkpointer.read_state()["params"]
  step = checkpointer.best_step() if best else checkpointer.latest_step()
  checkpointer.close()
  model, _ = models.from_model_config(
    config.model, vocab_size=vocab_size, load_weights=False
  )  # Weights: the checkpoint.
  description = f"{workdir} ({'best' if best else 'latest'} checkpoint, step {step})"
  return model, jax.tree.map(jnp.asarray, params), description


def _tokenizer(config) -> tokenizer_lib.Tokenizer:
  """``data.tokenizer`` if set, else the tokenizer of the model being evaluated."""
  return tokenizer_lib.resolve_tokenizer(
    config.data.tokenizer, config.eval.model or config.model.pretrained
  )


def _demd_cost(config, model, params) -> tuple[jax.Array, str]:
  """The normalised ``[V, d_c]`` cost embeddings of ``eval.cost_model`` (see
  configs/default.py) and where they came from."""
  source = config.eval.cost_model
  if source and source != config.eval.model:
    cost_model, cost_params = models.from_pretrained(source)
    if cost_model.vocab_size != model.vocab_size:
      raise config_checks.invalid(
        "eval.cost_model",
        source,
        f"a head of the evaluated model's vocabulary ({model.vocab_size} tokens, not "
        f"{cost_model.vocab_size})",
      )
    description = f"{source} head"
  else:
    cost_model, cost_params = model, params
    description = f"{source} head" if source else "the evaluated model's own head"
  collection = cost_embeddings.make_cost_collection(
    cost_model, cost_params, cost_embeddings.FROZEN_HEAD
  )
  return collection[cost_embeddings.COLLECTION]["embeddings"], description


def _distribution_measures(model, params, reference, reference_params, blocks, batch_size=8):
  """Token-weighted distribution measures of the model against the reference on ``blocks``."""
  if reference.vocab_size != model.vocab_size:
    raise ValueError(f"reference vocab {reference.vocab_size} != model vocab {model.vocab_size}.")

  @jax.jit
  def sums(params, reference_params, batch):
    logits = model.apply({"params": params}, batch["inputs"])  # [B, L, V]
    reference_logits = reference.apply({"params": reference_params}, batch["inputs"])
    means = token_metrics.distribution_measures(logits, reference_logits, batch["weights"])
    count = jnp.sum(batch["weights"])
    return {k: v * count for k, v in means.items()}, count

  totals, count = {}, 0.0
  for batch in input_pipeline.eval_batches(blocks, batch_size):
    out, n = sums(params, reference_params, batch)
    for k, v in out.items():
      totals[k] = totals.get(k, 0.0) + float(v)
    count += float(n)
  return {k: v / count for k, v in totals.items()}


def evaluate_and_report(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  config_checks.check_config(config)
  eval_config = config.eval
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  tokenizer = _tokenizer(config)
  model, params, description = load_model_for_eval(config, workdir, tokenizer.vocab_size)
  tokenizer.check_model_vocab(model.vocab_size)
  results: dict[str, Any] = {
    "model": description,
    "corpus": config.data.corpus,
    "split": eval_config.split,
    "seed": config.seed,
  }
  timings = {}
  if config.data.corpus in instructions.CORPORA:
    results.update(evaluate_instructions(config, workdir, model, params, tokenizer, mesh))
    _write_results(results, workdir)
    return results

  start = time.time()
  documents = data_lib.read_split(config.data, eval_config.split)
  block_size = min(config.data.block_size, model.max_length)
  blocks = input_pipeline.tokenize_and_pack(
    documents, tokenizer, block_size, name=f"{config.data.corpus}/{eval_config.split}"
  )
  if eval_config.max_blocks:
    blocks = blocks[: eval_config.max_blocks]
  batch_size = eval_config.batch_size
  cost, results["demd_cost"] = _demd_cost(config, model, params)
  step = jax.jit(functools.partial(token_metrics.eval_step, model=model))
  sums = token_metrics.token_sums(
    lambda params, batch: step(params, batch, cost_embeddings=cost),
    params,
    blocks,
    batch_size,
    mesh,
  )
  results["perplexity"] = token_metrics.perplexity_from_sums(sums["ce_sum"], sums["count"])
  results["mean_demd"] = sums["demd_sum"] / sums["count"]
  timings["perplexity_s"] = time.time() - start
  logging.info(
    "perplexity %.3f, mean DEMD %.4f (cost: %s) on %d blocks of %s",
    results["perplexity"],
    results["mean_demd"],
    results["demd_cost"],
    len(blocks),
    eval_config.split,
  )

  start = time.time()
  lengths = prompts_lib.prompt_lengths(
    config.data.corpus, eval_config.prefix_words, eval_config.continuation_words
  )
  logging.info(
    "MAUVE prompts of %s: %d prefix words, %d continuation words",
    config.data.corpus,
    lengths.prefix_words,
    lengths.continuation_words,
  )
  results["prompt_words"] = dataclasses.asdict(lengths)
  prompt_set = prompts_lib.make_prompts(
    config.data.corpus, documents, eval_config.num_prompts, lengths=lengths
  )
  prompt_ids = tokenizer.encode_batch([p.prefix for p in prompt_set])
  longest = model.max_length - eval_config.max_new_tokens
  if longest < 1:
    raise config_checks.invalid(
      "eval.max_new_tokens",
      eval_config.max_new_tokens,
      f"below the model's max_length ({model.max_length}), leaving room for the prompt",
    )
  prompt_ids = [ids[-longest:] for ids in prompt_ids]  # Keep the prefix's end if too long.
  generated = sampling.generate(
    model,
    params,
    prompt_ids,
    jax.random.key(config.seed),
    max_new_tokens=eval_config.max_new_tokens,
    batch_size=batch_size,
    mesh=mesh,
    pad_id=tokenizer.pad_id,
    temperature=eval_config.temperature,
    top_k=eval_config.top_k,
    top_p=eval_config.top_p,
    typical_p=eval_config.typical_p,
    greedy=eval_config.greedy,
  )
  continuations = tokenizer.decode_batch(generated)
  humans = [p.continuation for p in prompt_set]
  timings["generation_s"] = time.time() - start
  results["num_prompts"] = len(prompt_set)

  with open(os.path.join(workdir, GENERATIONS), "w") as f:
    f.writelines(
      json.dumps({"prefix": prompt.prefix, "model": continuation, "human": prompt.continuation})
      + "\n"
      for prompt, continuation in zip(prompt_set, continuations)
    )
  if eval_config.text_metrics:
    start = time.time()
    results.update(score_text(continuations, humans, eval_config, config.seed))
    timings["mauve_s"] = time.time() - start

  if eval_config.reference_model:
    start = time.time()
    reference, reference_params = models.from_pretrained(eval_config.reference_model)
    ce_sum, count = token_metrics.continuation_ce_sums(
      reference, reference_params, prompt_ids, generated, batch_size, tokenizer.pad_id
    )
    results["oracle_perplexity"] = token_metrics.perplexity_from_sums(ce_sum, count)
    results["distribution"] = _distribution_measures(
      model, params, reference, reference_params, blocks
    )
    timings["reference_s"] = time.time() - start
  results["timings"] = timings
  results["examples"] = [
    {"prefix": p.prefix, "model": c, "human": p.continuation}
    for p, c in zip(prompt_set[: eval_config.num_examples], continuations)
  ]

  for example in results["examples"]:
    print(
      f"\n--- prefix: {example['prefix']!r}\n    model:  {example['model']!r}\n"
      f"    human:  {example['human']!r}"
    )
  _write_results(results, workdir)
  return results


def evaluate_instructions(config, workdir, model, params, tokenizer, mesh) -> dict[str, Any]:
  """Held-out instructions (``eval.split`` of an instruction corpus): the response tokens'
  perplexity under the reference outputs and the mean DEMD there (rows packed as in
  training); then each prompt's response, up to EOS or ``eval.max_new_tokens`` tokens, by the
  configured decoding (unbiased by default) and greedily: ROUGE-1/2/L of both against the
  references, MAUVE of the configured decoding against them, and response lengths in words.
  ``generations.jsonl`` holds instruction, both responses and the reference per record (its
  ``model`` / ``human`` fields are the sampled response and the reference, what ``--mode
  score`` reads)."""
  eval_config = config.eval
  timings = {}
  start = time.time()
  records = instructions.read_split(config.data, eval_config.split)
  if eval_config.num_prompts:
    records = records[: eval_config.num_prompts]
  block_size = min(config.data.block_size, model.max_length)
  rows = instructions.tokenize_and_pack(
    records,
    tokenizer,
    config.data.prompt_template,
    block_size,
    name=f"{config.data.corpus}/{eval_config.split}",
  )
  cost, demd_cost = _demd_cost(config, model, params)
  step = jax.jit(functools.partial(token_metrics.eval_step, model=model))
  sums = token_metrics.token_sums(
    lambda params, batch: step(params, batch, cost_embeddings=cost),
    params,
    rows,
    eval_config.batch_size,
    mesh,
  )
  results: dict[str, Any] = {
    "perplexity": token_metrics.perplexity_from_sums(sums["ce_sum"], sums["count"]),
    "mean_demd": sums["demd_sum"] / sums["count"],
    "demd_cost": demd_cost,
    "response_tokens": int(sums["count"]),
    "num_prompts": len(records),
  }
  timings["perplexity_s"] = time.time() - start
  logging.info(
    "response perplexity %.3f, mean DEMD %.4f on %d records of %s",
    results["perplexity"],
    results["mean_demd"],
    len(records),
    eval_config.split,
  )

  prompts = [
    tokenizer.encode(instructions.prompt_text(r, config.data.prompt_template, tokenizer))
    for r in records
  ]
  longest = model.max_length - eval_config.max_new_tokens
  too_long = sum(len(p) > longest for p in prompts)
  if too_long:
    raise config_checks.invalid(
      "eval.max_new_tokens",
      eval_config.max_new_tokens,
      f"small enough that every prompt fits the model with it ({too_long} prompts do not)",
    )
  decode = functools.partial(
    sampling.generate,
    model,
    params,
    prompts,
    jax.random.key(config.seed),
    max_new_tokens=eval_config.max_new_tokens,
    batch_size=eval_config.batch_size,
    mesh=mesh,
    eos_id=tokenizer.eos_id,
    pad_id=tokenizer.pad_id,
  )
  references = [r.output for r in records]
  responses = {}
  for name, decoding in (
    (
      "sampled",
      dict(
        temperature=eval_config.temperature,
        top_k=eval_config.top_k,
        top_p=eval_config.top_p,
        typical_p=eval_config.typical_p,
        greedy=eval_config.greedy,
      ),
    ),
    ("greedy", dict(greedy=True)),
  ):
    start = time.time()
    tokens = decode(**decoding)
    responses[name] = [
      tokenizer.decode(sampling.trim_at_eos(t, tokenizer.eos_id)).strip() for t in tokens
    ]
    timings[f"generation_{name}_s"] = time.time() - start
    results[f"{name}_finished"] = sum(tokenizer.eos_id in t for t in tokens) / len(tokens)

  with open(os.path.join(workdir, GENERATIONS), "w") as f:
    f.writelines(
      json.dumps(
        {
          "prefix": record.user_message,
          "model": sampled,
          "greedy": greedy,
          "human": record.output,
        }
      )
      + "\n"
      for record, sampled, greedy in zip(records, responses["sampled"], responses["greedy"])
    )
  start = time.time()
  mauve_and_more = score_text(responses["sampled"], references, eval_config, config.seed)
  results["mauve"] = mauve_and_more["mauve"]
  results["rouge"] = mauve_and_more["rouge"]  # Of the sampled responses.
  results["repetition"] = mauve_and_more["repetition"]
  results["greedy_rouge"] = text_metrics.rouge(responses["greedy"], references)
  words = lambda texts: sum(len(t.split()) for t in texts) / len(texts)
  results["response_words"] = {
    "sampled": words(responses["sampled"]),
    "greedy": words(responses["greedy"]),
    "reference": words(references),
  }
  timings["text_metrics_s"] = time.time() - start
  results["timings"] = timings
  results["examples"] = [
    {
      "prefix": r.user_message,
      "model": responses["sampled"][i],
      "greedy": responses["greedy"][i],
      "human": r.output,
    }
    for i, r in enumerate(records[: eval_config.num_examples])
  ]
  for example in results["examples"]:
    print(
      f"\n--- instruction: {example['prefix']!r}\n    sampled: {example['model']!r}\n"
      f"    greedy:  {example['greedy']!r}\n    reference: {example['human']!r}"
    )
  return results


def score_text(
  continuations: list[str],
  humans: list[str],
  eval_config: ml_collections.ConfigDict,
  seed: int,
  featurizer=None,
) -> dict[str, Any]:
  """MAUVE (``eval.featurizer``, ``eval.mauve_runs`` k-means seeds from ``seed``), ROUGE-1/2/L
  against the human continuations and n-gram repetition of both sides. ``featurizer``: one
  already loaded for ``eval.featurizer`` (scoring many runs in one process), else loaded."""
  if featurizer is None:
    featurizer = featurizers.make_featurizer(eval_config.featurizer)
  human_features = featurizer(humans)
  model_features = featurizer(continuations)
  mauve = text_metrics.mauve(
    human_features,
    model_features,
    runs=eval_config.mauve_runs,
    seed=seed,
    scaling_factor=eval_config.mauve_scaling,
  )
  mauve["featurizer"] = featurizer.name
  return {
    "mauve": mauve,
    "rouge": text_metrics.rouge(continuations, humans),
    "repetition": {
      f"rep-{n}": {
        "model": text_metrics.repetition([c.split() for c in continuations], n),
        "human": text_metrics.repetition([h.split() for h in humans], n),
      }
      for n in (1, 2, 3, 4)
    },
  }


def score_generations(
  config: ml_collections.ConfigDict, workdir: str, featurizer=None
) -> dict[str, Any]:
  """``--mode score``: adds :func:`score_text`'s metrics to the ``eval.json`` that an
  ``eval.text_metrics=False`` evaluation wrote, from its ``generations.jsonl``
  (``featurizer`` as in :func:`score_text`).

  ``config.eval`` gives the featurizer and MAUVE settings; MAUVE's k-means seeds come from
  the evaluation's own seed (recorded in ``eval.json``), so a score matches what a one-pass
  evaluation of the same run would have reported whatever ``config.seed`` says."""
  config_checks.check_config(config)
  paths = {name: os.path.join(workdir, name) for name in ("eval.json", GENERATIONS)}
  for path in paths.values():
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} is missing: run --mode eval on {workdir} first.")
  with open(paths["eval.json"]) as f:
    results = json.load(f)
  with open(paths[GENERATIONS]) as f:
    generations = [json.loads(line) for line in f]
  if len(generations) != results["num_prompts"]:
    raise ValueError(
      f"{paths[GENERATIONS]} has {len(generations)} generations but eval.json "
      f"says {results['num_prompts']} prompts: the files are from different "
      "evaluations."
    )
  start = time.time()
  seed = results["seed"]
  results.update(
    score_text(
      [g["model"] for g in generations],
      [g["human"] for g in generations],
      config.eval,
      seed,
      featurizer,
    )
  )
  results.setdefault("timings", {})["mauve_s"] = time.time() - start
  _write_results(results, workdir)
  return results


def _write_results(results: dict[str, Any], workdir: str) -> None:
  # Atomically: eval.json is the study driver's "done" marker, and --mode score rewrites it.
  with open(os.path.join(workdir, "eval.md"), "w") as f:
    f.write(markdown_table(results))
  checkpointing.write_json_atomically(os.path.join(workdir, "eval.json"), results)
  print("\n" + markdown_table(results))


def markdown_table(results: dict[str, Any]) -> str:
  """A one-row Markdown summary of :func:`evaluate_and_report`'s results."""
  columns = {"perplexity": f"{results['perplexity']:.2f}"}
  if "mean_demd" in results:  # Absent from evaluations written before it was measured.
    columns["mean DEMD"] = f"{results['mean_demd']:.4f}"
  mauve = results.get("mauve")  # Absent until scored (eval.text_metrics=False).
  if mauve:
    columns.update(
      {
        "MAUVE": f"{mauve['mean']:.3f} ± {mauve['std']:.3f}",
        "ROUGE-1/2/L": "/".join(
          f"{results['rouge'][k]:.3f}" for k in ("rouge1", "rouge2", "rougeL")
        ),
        "rep-2 (model/human)": "{model:.3f}/{human:.3f}".format(**results["repetition"]["rep-2"]),
      }
    )
  if "greedy_rouge" in results:  # Instruction data: greedy responses, lengths in words.
    columns["greedy ROUGE-L"] = f"{results['greedy_rouge']['rougeL']:.3f}"
    columns["words (sampled/greedy/reference)"] = (
      "{sampled:.1f}/{greedy:.1f}/{reference:.1f}".format(**results["response_words"])
    )
  if "oracle_perplexity" in results:
    columns["oracle ppl"] = f"{results['oracle_perplexity']:.2f}"
    columns.update({k: f"{v:.3f}" for k, v in results["distribution"].items()})
  scoring = (
    f"MAUVE featurizer {mauve['featurizer']}, {len(mauve['runs'])} runs"
    if mauve
    else f"text metrics not computed yet (--mode score reads {GENERATIONS})"
  )
  header = (
    f"Model: {results['model']}; {results['corpus']}/{results['split']}, "
    f"{results['num_prompts']} prompts, {scoring}"
    + (f"; DEMD cost: {results['demd_cost']}" if "demd_cost" in results else "")
    + ".\n\n"
  )
  return (
    header
    + "| "
    + " | ".join(columns)
    + " |\n|"
    + "---|" * len(columns)
    + "\n| "
    + " | ".join(columns.values())
    + " |\n"
  )
