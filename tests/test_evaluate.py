"""``main.py --mode eval`` end to end on an HF directory (the workdir path is covered by the
trainer's CLI test)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def hf_directory(tmp_path_factory):
  import torch
  import transformers

  torch.manual_seed(0)
  directory = tmp_path_factory.mktemp("hf")
  transformers.GPT2LMHeadModel(
    transformers.GPT2Config(vocab_size=50257, n_positions=128, n_embd=32, n_layer=2, n_head=2)
  ).save_pretrained(str(directory))
  return directory


def run_eval(workdir, *extra, mode="eval"):
  command = [
    sys.executable,
    os.path.join(REPO, "main.py"),
    "--mode",
    mode,
    "--config",
    os.path.join(REPO, "configs", "default.py"),
    "--workdir",
    str(workdir),
    *extra,
  ]
  return subprocess.run(
    command, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=600
  )


def small_eval_flags(hf_directory):
  return [
    f"--config.eval.model={hf_directory}",
    "--config.data.corpus=ptb",
    "--config.eval.max_blocks=4",
    "--config.eval.num_prompts=12",
    "--config.eval.batch_size=8",
    "--config.eval.max_new_tokens=16",
    "--config.eval.mauve_runs=2",
    f"--config.eval.featurizer={hf_directory}",
  ]


@pytest.fixture(scope="module")
def full_eval(tmp_path_factory, hf_directory):
  """One evaluation with every metric: (workdir, completed process)."""
  workdir = tmp_path_factory.mktemp("full_eval")
  result = run_eval(
    workdir, *small_eval_flags(hf_directory), f"--config.eval.reference_model={hf_directory}"
  )
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return workdir, result


@pytest.mark.slow
def test_eval_of_an_hf_directory_against_itself(full_eval):
  tmp_path, result = full_eval
  results = json.load(open(tmp_path / "eval.json"))
  assert results["num_prompts"] == 12 and len(results["mauve"]["runs"]) == 2
  assert 0.0 <= results["mauve"]["mean"] <= 1.0
  # A random model is near-uniform over 50257 tokens.
  assert 20000 < results["perplexity"] < 100000
  # The reference is the model itself: zero distance, equal cross-entropies.
  distribution = results["distribution"]
  assert distribution["tvd"] == pytest.approx(0.0, abs=1e-5)
  assert distribution["reverse_kl"] == pytest.approx(0.0, abs=1e-4)
  assert distribution["forward_ce"] == pytest.approx(distribution["reverse_ce"], rel=1e-5)
  # Its own samples are typical for it: oracle perplexity is near exp(entropy) ...
  assert results["oracle_perplexity"] == pytest.approx(np.exp(distribution["forward_ce"]), rel=0.05)
  # ... and the unbiased samples of a near-uniform model are nothing like human text.
  assert results["rouge"]["rouge2"] < 0.05
  # No pretrained base in the config: the DEMD cost is the model's own head. A near-uniform
  # model's expected cost is about 1 - (mean cosine between a row and the target's) ~ 1.
  assert results["demd_cost"] == "the evaluated model's own head"
  assert 0.9 < results["mean_demd"] < 1.1
  assert "| perplexity | mean DEMD | MAUVE |" in open(tmp_path / "eval.md").read()
  assert "--- prefix:" in result.stdout


@pytest.mark.slow
def test_eval_without_checkpoint_or_model_fails_clearly(tmp_path):
  result = run_eval(tmp_path)
  assert result.returncode != 0
  assert "no checkpoint in" in result.stderr and "eval.model" in result.stderr


@pytest.mark.slow
def test_generating_then_scoring_elsewhere_equals_one_evaluation(tmp_path, hf_directory, full_eval):
  # The GPU study's path: generate without the featurizer, score later from the jsonl.
  result = run_eval(tmp_path, *small_eval_flags(hf_directory), "--config.eval.text_metrics=False")
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  unscored = json.load(open(tmp_path / "eval.json"))
  assert "mauve" not in unscored and "rouge" not in unscored and unscored["seed"] == 0
  assert "not computed yet" in open(tmp_path / "eval.md").read()
  generations = [json.loads(line) for line in open(tmp_path / "generations.jsonl")]
  assert len(generations) == 12 and all(set(g) == {"prefix", "model", "human"} for g in generations)

  # Scoring takes MAUVE's k-means seeds from the evaluation, not from this command's config.
  result = run_eval(tmp_path, *small_eval_flags(hf_directory), "--config.seed=7", mode="score")
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  scored = json.load(open(tmp_path / "eval.json"))
  full = json.load(open(full_eval[0] / "eval.json"))
  # Same seed, same model: same samples, so every metric agrees with the one-pass evaluation.
  assert generations == [json.loads(line) for line in open(full_eval[0] / "generations.jsonl")]
  assert scored["perplexity"] == full["perplexity"]
  assert scored["mauve"]["runs"] == full["mauve"]["runs"]
  assert scored["rouge"] == full["rouge"] and scored["repetition"] == full["repetition"]
  assert "| perplexity | mean DEMD | MAUVE |" in open(tmp_path / "eval.md").read()


@pytest.mark.slow
def test_scoring_without_an_evaluation_fails_clearly(tmp_path):
  result = run_eval(tmp_path, mode="score")
  assert result.returncode != 0
  assert "eval.json is missing" in result.stderr and "--mode eval" in result.stderr


def _write_own_corpus(directory, extension: str, words_per_document: int, documents: int):
  """``{split}.<extension>`` files of word sequences: a user's own corpus."""
  rng = np.random.default_rng(0)
  vocabulary = [
    "river",
    "stone",
    "light",
    "music",
    "north",
    "garden",
    "window",
    "silver",
    "letter",
    "market",
    "winter",
    "engine",
  ]
  texts = [" ".join(rng.choice(vocabulary, words_per_document)) for _ in range(documents)]
  for split in ("train", "validation", "test"):
    path = directory / f"{split}.{extension}"
    if extension == "jsonl":
      path.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    elif extension == "csv":
      path.write_text("id,body\n" + "".join(f"{i},{t}\n" for i, t in enumerate(texts)))
    else:  # One .txt file is one long document.
      path.write_text("\n\n".join(texts))
  return texts


@pytest.mark.parametrize(
  "extension,lengths", [("jsonl", None), ("csv", (5, 15)), ("txt", (10, 30))]
)
@pytest.mark.slow
def test_eval_of_a_users_own_corpus(tmp_path, hf_directory, extension, lengths):
  """``data.corpus='files:...'`` has no known prompt lengths: WebText's 20/80 unless
  eval.prefix_words / eval.continuation_words set them."""
  from configs import default
  from emo_jax import evaluate

  texts = _write_own_corpus(tmp_path, extension, words_per_document=120, documents=6)
  config = default.get_config()
  config.data.corpus = f"files:{tmp_path}/{{split}}.{extension}"
  config.data.text_field = "body"
  config.eval.model = str(hf_directory)
  config.eval.featurizer = str(hf_directory)
  config.eval.max_blocks, config.eval.batch_size = 2, 8
  config.eval.max_new_tokens, config.eval.mauve_runs = 8, 1
  config.eval.num_prompts = 0  # All of them: the count below is the windows' count.
  if lengths:
    config.eval.prefix_words, config.eval.continuation_words = lengths
  workdir = tmp_path / "eval"
  results = evaluate.evaluate_and_report(config, str(workdir))

  prefix, continuation = lengths or (20, 80)
  assert results["prompt_words"] == {"prefix_words": prefix, "continuation_words": continuation}
  words = [t.split() for t in texts]
  window = prefix + continuation
  if extension == "txt":  # One document: its words cut into consecutive windows.
    words = [[word for document in words for word in document]]
  expected = [
    w[i : i + prefix]
    for w in words
    for i in range(0, len(w), window)
    if len(w) - i >= prefix + -(-continuation // 2)
  ]
  generations = [json.loads(line) for line in open(workdir / "generations.jsonl")]
  assert [g["prefix"].split() for g in generations] == expected
  assert results["num_prompts"] == len(expected) > 1
  assert all(len(g["human"].split()) <= continuation for g in generations)
  assert np.isfinite(results["perplexity"]) and 0.0 <= results["mauve"]["mean"] <= 1.0
