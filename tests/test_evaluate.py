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
  import torch, transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  directory = tmp_path_factory.mktemp("hf")
  transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=50257, n_positions=128, n_embd=32, n_layer=2, n_head=2)).save_pretrained(
          str(directory))
  return directory


def run_eval(workdir, *extra):
  command = [sys.executable, os.path.join(REPO, "main.py"), "--mode", "eval",
             "--config", os.path.join(REPO, "configs", "default.py"), "--workdir",
             str(workdir), *extra]
  return subprocess.run(command, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                        capture_output=True, text=True, timeout=600)


def test_eval_of_an_hf_directory_against_itself(tmp_path, hf_directory):
  result = run_eval(
      tmp_path, f"--config.eval.model={hf_directory}", "--config.data.corpus=ptb",
      "--config.eval.max_blocks=4", "--config.eval.num_prompts=12",
      "--config.eval.batch_size=8", "--config.eval.max_new_tokens=16",
      "--config.eval.mauve_runs=2", f"--config.eval.featurizer={hf_directory}",
      f"--config.eval.reference_model={hf_directory}")
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
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
  assert results["oracle_perplexity"] == pytest.approx(
      np.exp(distribution["forward_ce"]), rel=0.05)
  # ... and the unbiased samples of a near-uniform model are nothing like human text.
  assert results["rouge"]["rouge2"] < 0.05
  assert "| perplexity | MAUVE |" in open(tmp_path / "eval.md").read()
  assert "--- prefix:" in result.stdout


def test_eval_without_checkpoint_or_model_fails_clearly(tmp_path):
  result = run_eval(tmp_path)
  assert result.returncode != 0
  assert "no checkpoint in" in result.stderr and "eval.model" in result.stderr
