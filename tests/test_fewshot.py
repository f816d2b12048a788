"""Few-shot scoring: the shared-prefix KV-cache path equals scoring every sequence from
scratch, prompts tokenize as a whole, and the statistics match their formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emo_jax import fewshot, models
from emo_jax.data import corpora
from emo_jax.data import tokenizer as tokenizer_lib


def tiny_model(family, vocab=97, max_length=64):
  model = models.from_config(family, "tiny", vocab_size=vocab, max_length=max_length)
  params = model.init(jax.random.key(1), jnp.zeros((1, 8), jnp.int32))["params"]
  # Larger weights than the initialiser's: label losses then differ clearly across labels.
  params = jax.tree.map(lambda p: p * 3.0 if p.ndim == 2 else p, params)
  return model, params


def reference_losses(model, params, prefix, queries, labels):
  """Mean token loss of each label after prefix + query, from one plain forward pass over
  every ``prefix + query + label`` sequence (right-padded: causal logits ignore the pad)."""
  sequences = [prefix + query + label for query in queries for label in labels]
  ids = np.zeros((len(sequences), max(map(len, sequences))), np.int32)
  for row, sequence in enumerate(sequences):
    ids[row, : len(sequence)] = sequence
  log_probs = np.asarray(jax.nn.log_softmax(model.apply({"params": params}, ids), axis=-1))
  out = np.zeros((len(queries), len(labels)))
  for i, query in enumerate(queries):
    for j, label in enumerate(labels):
      start = len(prefix) + len(query)
      row = log_probs[i * len(labels) + j]
      out[i, j] = -np.mean([row[start + t - 1, token] for t, token in enumerate(label)])
  return out


@pytest.mark.parametrize(
  "labels", [[[40], [41, 42, 43], [44, 45]], [[40], [41]]], ids=["ragged", "one_token"]
)
@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.slow
def test_shared_prefix_scores_equal_full_forward_passes(family, labels):
  model, params = tiny_model(family)
  rng = np.random.default_rng(0)
  prefix = rng.integers(1, 97, 11).tolist()
  # Ragged (padding), in no length order (batches go shortest first and are put back), and
  # over two padding buckets (16 and 32 tokens).
  queries = [rng.integers(1, 97, n).tolist() for n in (5, 1, 20, 9, 3, 7)]
  got = fewshot.label_losses_of_ids(model, params, prefix, queries, labels, batch_size=2)
  expected = reference_losses(model, params, prefix, queries, labels)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  assert np.ptp(expected, axis=1).min() > 1e-2  # The labels are told apart at all.


def test_a_prompt_too_long_for_the_model_is_an_error():
  model, params = tiny_model("gpt2", max_length=16)
  with pytest.raises(ValueError, match="exceed the model's max_length \\(16\\)"):
    fewshot.label_losses_of_ids(model, params, [3] * 12, [[4, 4, 4]], [[5]])


def test_rendered_prompt_reads_as_written():
  task = fewshot.TASKS["sst2"]
  prefix = fewshot.demonstration_prefix(task, [("a fine film .", 1), ("dull .", 0)])
  assert prefix + fewshot.query_text(task, "what a mess .") == (
    "Review: a fine film .\nSentiment: positive\n\n"
    "Review: dull .\nSentiment: negative\n\n"
    "Review: what a mess .\nSentiment:"
  )


@pytest.mark.parametrize("source", ["gpt2", "smollm2-135m"])
@pytest.mark.parametrize("task_name", sorted(fewshot.TASKS))
@pytest.mark.slow
def test_pieces_tokenize_exactly_like_the_whole_prompt(source, task_name, data_dir):
  tokenizer = tokenizer_lib.load_tokenizer(source)
  task = fewshot.TASKS[task_name]
  examples = task.read("test", data_dir)[:20]
  prefix = fewshot.demonstration_prefix(task, examples[:4])
  for text, label in examples[4:]:
    query = fewshot.query_text(task, text)
    word = " " + task.label_words[label]
    assert tokenizer.encode(prefix + query + word) == (
      tokenizer.encode(prefix) + tokenizer.encode(query) + tokenizer.encode(word)
    )


def test_demonstrations_are_balanced_seeded_and_whole_sentences(data_dir):
  task = fewshot.TASKS["sst2"]
  pool = task.read("train", data_dir)
  chosen = fewshot.choose_demonstrations(task, pool, 8, seed=3)
  assert sorted(label for _, label in chosen) == [0] * 4 + [1] * 4
  assert all(len(text.split()) >= 8 for text, _ in chosen)
  assert chosen == fewshot.choose_demonstrations(task, pool, 8, seed=3)
  assert chosen != fewshot.choose_demonstrations(task, pool, 8, seed=4)
  news = fewshot.choose_demonstrations(
    fewshot.TASKS["ag_news"], corpora.ag_news_examples("train", data_dir), 6
  )
  assert sorted(label for _, label in news) == [0, 0, 1, 1, 2, 3]  # 6 over 4 labels.
  with pytest.raises(ValueError, match="only 1 eligible demonstrations of label 'positive'"):
    fewshot.choose_demonstrations(
      task, [("one two three four five six seven eight", 1)] * 1 + [("a b c d e f g h", 0)] * 4, 4
    )


def test_accuracy_interval_is_wilsons():
  correct = [True] * 37 + [False] * 13
  got = fewshot.accuracy_with_interval(correct)
  n, p, z = 50, 37 / 50, 1.959963984540054
  center = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  assert got["accuracy"] == pytest.approx(0.74) and got["n"] == 50
  assert got["low"] == pytest.approx(center - half, rel=1e-9)
  assert got["high"] == pytest.approx(center + half, rel=1e-9)


def test_mcnemar_exact_on_hand_counted_pairs():
  a = [True] * 5 + [True, False] * 3
  b = [False] * 5 + [True, False] * 3  # A alone is right 5 times, B alone never.
  result = fewshot.mcnemar(a, b)
  assert (result["a_only"], result["b_only"]) == (5, 0)
  assert result["p_value"] == pytest.approx(2 * 0.5**5)  # Two-sided exact binomial.
  assert fewshot.mcnemar(a, a)["p_value"] == 1.0
  with pytest.raises(ValueError, match="same queries"):
    fewshot.mcnemar(a, b[:-1])


def test_evaluate_task_on_real_queries(data_dir):
  model, params = tiny_model("gpt2", vocab=50257, max_length=1024)
  tokenizer = tokenizer_lib.load_tokenizer("gpt2")
  data = fewshot.load_task("ag_news", k=4, max_queries=12, manual_dir=data_dir)
  result = fewshot.evaluate_task(model, params, tokenizer, data, batch_size=4)
  assert result["n"] == 12 and len(result["predictions"]) == 12
  assert len(result["demonstrations"]) == 4
  labels = [label for _, label in corpora.ag_news_examples("test", data_dir)[:12]]
  assert result["correct"] == [p == t for p, t in zip(result["predictions"], labels)]
  assert 0.0 <= result["low"] <= result["accuracy"] <= result["high"] <= 1.0
  losses = np.asarray(result["losses"])  # [12, 4]
  assert losses.shape == (12, 4) and (losses.argmin(axis=1) == result["predictions"]).all()
  calibrated = result["calibrated"]
  content_free = np.asarray(calibrated["content_free_losses"])  # [3, 4]
  assert content_free.shape == (3, 4) and calibrated["content_free"] == list(fewshot.CONTENT_FREE)
  assert calibrated["predictions"] == fewshot.calibrated_predictions(losses, content_free).tolist()
  assert calibrated["correct"] == [p == t for p, t in zip(calibrated["predictions"], labels)]
  assert calibrated["n"] == 12


@pytest.mark.parametrize("seed", range(4))
def test_calibrated_predictions_follow_zhaos_affine_form(seed):
  rng = np.random.default_rng(seed)
  labels = 2 + seed
  losses = rng.uniform(0.5, 4.0, (50, labels))
  content_free = rng.uniform(0.5, 4.0, (3, labels))
  # Zhao et al. (2021): q = softmax(W p + b), W = diag(p_cf)^-1, b = 0; p and p_cf the label
  # distributions (probabilities exp(-loss) normalised), p_cf their mean over the
  # content-free inputs. softmax keeps the argmax.
  p = np.exp(-losses) / np.exp(-losses).sum(axis=1, keepdims=True)
  cf = np.exp(-content_free) / np.exp(-content_free).sum(axis=1, keepdims=True)
  weights = np.diag(1.0 / cf.mean(axis=0))
  expected = np.argmax(p @ weights.T, axis=1)
  np.testing.assert_array_equal(fewshot.calibrated_predictions(losses, content_free), expected)


def test_calibration_removes_a_label_prior():
  # Label 1 is favoured by 1 nat on every input, content-free ones included: uncalibrated,
  # it wins every query; calibrated, each query's own evidence (0.5 nat) decides.
  evidence = np.array([[0.0, 0.5], [0.5, 0.0], [0.0, 0.5]])  # Lower loss = the query's label.
  bias = np.array([1.0, 0.0])
  losses = evidence + bias
  assert (losses.argmin(axis=1) == 1).all()
  content_free = np.tile(bias, (3, 1))
  np.testing.assert_array_equal(fewshot.calibrated_predictions(losses, content_free), [0, 1, 0])
  with pytest.raises(ValueError, match="same labels"):
    fewshot.calibrated_predictions(losses, content_free[:, :1])
