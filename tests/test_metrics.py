"""Metrics on cases whose answers are known by hand or by an independent implementation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emo_jax import losses
from emo_jax.evaluation import featurizers, prompts, text_metrics, token_metrics
from emo_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel


@pytest.fixture(scope="module")
def tiny():
  model = GPT2LMHeadModel(GPT2Config.preset("tiny", vocab_size=41, n_positions=32))
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  return model, params


def test_perplexity_is_exp_of_the_token_weighted_mean_ce(tiny):
  model, params = tiny
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 41, (3, 11)).astype(np.int32)
  weights = np.ones((3, 10), np.float32)
  weights[2, 6:] = 0  # Padding is excluded.
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights}
  out = token_metrics.eval_step(params, batch, model=model)
  logits = model.apply({"params": params}, tokens[:, :-1])
  expected = np.exp(float(losses.masked_mean(losses.cross_entropy(logits, tokens[:, 1:]), weights)))
  assert token_metrics.perplexity_from_sums(float(out["ce_sum"]), float(out["count"])) == (
    pytest.approx(expected, rel=1e-5)
  )
  with pytest.raises(ValueError, match="empty split"):
    token_metrics.perplexity_from_sums(0.0, 0.0)


@pytest.mark.parametrize("cost_width", [8, 5])  # The model's width (8) or another.
def test_eval_step_mean_demd_matches_numpy(tiny, cost_width):
  model, params = tiny
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, 41, (2, 9)).astype(np.int32)
  weights = np.ones((2, 8), np.float32)
  weights[1, 5:] = 0
  cost = rng.normal(size=(41, cost_width)).astype(np.float32)  # Raw rows: normalised inside.
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights}
  out = token_metrics.eval_step(params, batch, model=model, cost_embeddings=jnp.asarray(cost))
  # NumPy transcription: DEMD_t = sum_i p_i (1 - cos(e_i, e_t)), token-weighted mean.
  logits = np.asarray(model.apply({"params": params}, tokens[:, :-1]), np.float64)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  unit = cost / np.linalg.norm(cost, axis=-1, keepdims=True)
  demd = np.einsum("btv,btv->bt", p, 1.0 - unit[tokens[:, 1:]] @ unit.T)
  assert float(out["demd_sum"]) / float(out["count"]) == pytest.approx(
    (demd * weights).sum() / weights.sum(), rel=1e-5
  )
  # The same call without a cost gives the same CE sums and no DEMD.
  plain = token_metrics.eval_step(params, batch, model=model)
  assert "demd_sum" not in plain
  assert float(plain["ce_sum"]) == pytest.approx(float(out["ce_sum"]), rel=1e-6)


@pytest.mark.parametrize("head_scale", [1.0, 8.0])  # Near-uniform, then peaked predictions.
def test_calibration_step_matches_numpy(tiny, head_scale):
  model, params = tiny
  params = nn.meta.unbox(params)
  params = {**params, "wte": {"embedding": params["wte"]["embedding"] * head_scale}}
  rng = np.random.default_rng(2)
  inputs = rng.integers(0, 41, (2, 9)).astype(np.int32)
  logits = np.asarray(model.apply({"params": params}, inputs), np.float64)  # [2, 9, 41]
  # Half the targets are the model's top token, so accuracy lies strictly inside (0, 1).
  targets = np.where(rng.random((2, 9)) < 0.5, logits.argmax(-1), rng.integers(0, 41, (2, 9)))
  weights = np.ones((2, 9), np.float32)
  weights[1, 6:] = 0
  temperatures = np.array([0.5, 1.0, 1.7])
  batch = {"inputs": inputs, "targets": targets.astype(np.int32), "weights": weights}
  out = token_metrics.calibration_step(params, batch, model=model, temperatures=temperatures)

  def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))

  target_of = lambda values: np.take_along_axis(values, targets[..., None], -1)[..., 0]
  ce = [-(target_of(log_softmax(logits / t)) * weights).sum() for t in temperatures]
  log_p = log_softmax(logits)
  expected = {
    "ce_sum": np.array(ce),
    "entropy_sum": (-(np.exp(log_p) * log_p).sum(-1) * weights).sum(),
    "confidence_sum": (np.exp(log_p).max(-1) * weights).sum(),
    "correct_sum": ((logits.argmax(-1) == targets) * weights).sum(),
    "count": weights.sum(),
  }
  assert 0 < expected["correct_sum"] < expected["count"]
  for name, value in expected.items():
    np.testing.assert_allclose(np.asarray(out[name]), value, rtol=2e-5, err_msg=name)
  plain = token_metrics.eval_step(params, batch, model=model)  # T = 1: the perplexity's CE.
  assert float(out["ce_sum"][1]) == pytest.approx(float(plain["ce_sum"]), rel=1e-6)


@pytest.mark.parametrize(
  "sequences, n, expected",
  [
    ([["a", "b", "a", "b"]], 2, 1 / 3),  # ab, ba, ab: 2 unique of 3.
    ([["a", "a", "a", "a"]], 1, 3 / 4),
    ([["a", "b", "c"], ["x", "x"]], 1, 0.25),  # Mean of 0 and 1/2.
    ([[1, 2, 3, 1, 2, 3]], 3, 1 / 4),  # 4 trigrams, 3 unique.
  ],
)
def test_repetition_by_hand(sequences, n, expected):
  assert text_metrics.repetition(sequences, n) == pytest.approx(expected)


def test_repetition_without_long_enough_sequences_is_an_error():
  with pytest.raises(ValueError, match="2 or more"):
    text_metrics.repetition([["a"]], 2)


def test_rouge_by_hand():
  assert text_metrics.rouge(["the cat sat"], ["the cat sat"]) == pytest.approx(
    {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
  )
  # "the cat" vs "the dog": one shared unigram of two each -> P = R = F1 = 1/2; no bigram.
  scores = text_metrics.rouge(["the cat"], ["the dog"])
  assert scores["rouge1"] == pytest.approx(0.5) and scores["rouge2"] == 0.0
  with pytest.raises(ValueError, match="pairs"):
    text_metrics.rouge(["a"], [])


def test_distribution_measures_by_hand():
  p, q = np.array([0.5, 0.5]), np.array([0.25, 0.75])
  out = token_metrics.distribution_measures(jnp.log(jnp.asarray([p])), jnp.log(jnp.asarray([q])))
  assert out["tvd"] == pytest.approx(0.25, rel=1e-5)
  assert out["reverse_kl"] == pytest.approx(0.5 * np.log(2) + 0.5 * np.log(2 / 3), rel=1e-5)
  assert out["forward_ce"] == pytest.approx(np.log(2), rel=1e-5)  # -Σ q log p, p uniform.
  assert out["reverse_ce"] == pytest.approx(-0.5 * np.log(0.25) - 0.5 * np.log(0.75), rel=1e-5)
  # Weights: a second, different position with weight 0 changes nothing.
  two = token_metrics.distribution_measures(
    jnp.log(jnp.asarray([p, q])), jnp.log(jnp.asarray([q, q])), jnp.asarray([1.0, 0.0])
  )
  assert two["tvd"] == pytest.approx(0.25, rel=1e-5)
  with pytest.raises(ValueError, match="differ in shape"):
    token_metrics.distribution_measures(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


def test_continuation_ce_scores_only_the_continuation(tiny):
  model, params = tiny
  prompt_list, continuation_list = [[1, 2, 3], [4]], [[5, 6], [7, 8, 9]]
  ce_sum, count = token_metrics.continuation_ce_sums(
    model, params, prompt_list, continuation_list, batch_size=4
  )
  expected = 0.0
  for prompt, continuation in zip(prompt_list, continuation_list):
    tokens = prompt + continuation
    log_probs = jax.nn.log_softmax(model.apply({"params": params}, jnp.asarray([tokens]))[0])
    expected -= sum(float(log_probs[i - 1, tokens[i]]) for i in range(len(prompt), len(tokens)))
  assert count == 5
  assert ce_sum == pytest.approx(expected, rel=1e-5)


def test_gpt2_featurizer_matches_mauve_text_recipe_on_transformers(tmp_path):
  """Last-token final hidden state, as mauve-text computes it with transformers."""
  import torch
  import transformers

  torch.manual_seed(0)
  hf = transformers.GPT2LMHeadModel(
    transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=2)
  ).eval()
  hf.save_pretrained(str(tmp_path))
  featurizer = featurizers.ModelFeaturizer(str(tmp_path), batch_size=2)
  texts = ["Hello world, this is a test.", "Short.", "A third text of a different length"]
  features = featurizer(texts)
  for text, feature in zip(texts, features):
    ids = torch.tensor([featurizer.tokenizer.encode(text)])
    with torch.no_grad():
      expected = hf(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
    np.testing.assert_allclose(feature, expected.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_mauve_is_high_within_a_corpus_and_low_across_corpora(data_dir):
  """MiniLM features, n = 200 texts per side (MAUVE's 'auto' = 20 buckets), 2 seeds.

  Measured (2026-11-25): random halves of WikiText-2 test paragraphs 0.98; a random 200 of
  WikiText-2 vs AG News 0.11. (Disjoint *article* ranges of WikiText score low too: MiniLM features
  cluster by topic, which is why prompts and continuations must share prefixes.)
  """
  wiki = prompts.load_prompts("wikitext2_raw", "test", manual_dir=data_dir)
  news = prompts.load_prompts("ag_news", "test", 200, manual_dir=data_dir)
  order = np.random.default_rng(0).permutation(len(wiki))[:400]
  texts = [f"{wiki[i].prefix} {wiki[i].continuation}" for i in order]
  featurizer = featurizers.make_featurizer("minilm")
  wiki_features = featurizer(texts)
  news_features = featurizer([f"{p.prefix} {p.continuation}" for p in news])
  same = text_metrics.mauve(wiki_features[:200], wiki_features[200:], runs=2)
  different = text_metrics.mauve(wiki_features[:200], news_features, runs=2)
  assert same["mean"] > 0.9, same
  assert different["mean"] < 0.3, different
  assert same["n_human"] == same["n_model"] == 200 and len(same["runs"]) == 2


def test_mauve_of_identical_feature_sets_is_one():
  features = np.random.default_rng(0).standard_normal((60, 8)).astype(np.float32)
  out = text_metrics.mauve(features, features.copy(), runs=2)
  assert out["mean"] == pytest.approx(1.0, abs=1e-6) and out["std"] == pytest.approx(0.0)


def test_memoized_featurizer_computes_each_text_list_once_and_changes_no_number():
  minilm = featurizers.make_featurizer("minilm")
  calls = []

  class Counting:
    name = minilm.name

    def __call__(self, texts):
      calls.append(list(texts))
      return minilm(texts)

  memoized = featurizers.MemoizedFeaturizer(Counting())
  humans = ["The cat sat on the mat.", "Rain fell all day.", "Markets rose on Tuesday."]
  model = ["The dog sat on the rug.", "It rained.", "Stocks fell."]
  first = memoized(humans)
  first[0, 0] = 123.0  # A caller scribbling on its copy must not reach the memo.
  for texts in (model, humans, model):
    memoized(texts)
  assert calls == [humans, model]
  assert memoized.name == minilm.name
  # The claim that makes the memo safe: featurizing the same list again gives the same bits.
  np.testing.assert_array_equal(memoized(humans), minilm(humans))
  memoized(humans[:2])  # Keyed by the whole list: a sub-list is featurized anew.
  memoized(["The cat sat on the mat.\0Rain fell all day.", "Markets rose on Tuesday."])
  assert len(calls) == 4


def test_unknown_featurizer_is_an_error():
  with pytest.raises(
    ValueError, match="must be 'minilm', an HF model directory, a .gguf file or a packaged"
  ):
    featurizers.make_featurizer("/no/such/dir")


# ----------------------------------------------------------------------------------------
# MAUVE prompt sets.
# ----------------------------------------------------------------------------------------


def test_prompts_follow_the_corpus_lengths_and_filters(data_dir):
  wiki = prompts.load_prompts("wikitext2_raw", "test", manual_dir=data_dir)
  assert len(wiki) == 1547  # Paragraphs with >= 100 chars and >= 20 + 40 words, no headings.
  assert all(len(p.prefix.split()) == 20 for p in wiki)
  assert all(40 <= len(p.continuation.split()) <= 80 for p in wiki)
  assert not any(p.prefix.startswith("=") for p in wiki)
  ptb = prompts.load_prompts("ptb", "test", 10, manual_dir=data_dir)
  assert len(ptb) == 10 and all(len(p.prefix.split()) == 5 for p in ptb)
  # The prefix and continuation are consecutive words of one document.
  documents = ["word " * 3 + "= heading line\n", " ".join(f"w{i}" for i in range(200)) + "\n"]
  made = prompts.make_prompts("wikitext2", documents, 0)
  assert len(made) == 1
  assert made[0].prefix.split() == [f"w{i}" for i in range(20)]
  assert made[0].continuation.split() == [f"w{i}" for i in range(20, 100)]


def test_prompt_errors():
  with pytest.raises(ValueError, match="no prompt lengths known"):
    prompts.make_prompts("my_corpus", ["text"])
  with pytest.raises(ValueError, match="long enough"):
    prompts.make_prompts("ptb", ["too short"])
