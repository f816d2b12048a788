"""KV-cache sampling against the full forward pass, the filters' defining properties, and
the sampling distribution against the model's softmax."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from emo_jax import sampling
from emo_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel

from fake_devices import run_with_devices

VOCAB = 37
# Prompts of different lengths: left padding must not change any row's continuation.
PROMPTS = [[5, 9, 2, 30, 11], [7], [3, 3, 8]]


@pytest.fixture(scope="module")
def tiny():
  model = GPT2LMHeadModel(GPT2Config.preset("tiny", vocab_size=VOCAB, n_positions=24))
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  # Sharpen the random model so greedy/top-k choices are far from ties.
  params = jax.tree.map(lambda p: p * 3.0 if p.ndim == 2 else p, params)
  return model, params


@functools.partial(jax.jit, static_argnums=0)
def _full_forward(model, params, padded):
  return model.apply({"params": params}, padded)  # [1, max_length, V]


def full_forward_logits(model, params, tokens):
  """Next-token logits after ``tokens`` from a cache-free forward pass of the row alone.

  Right padding to max_length changes nothing before it (causal attention) and compiles the
  forward pass once for every length.
  """
  padded = np.zeros((1, model.max_length), np.int32)
  padded[0, : len(tokens)] = tokens
  return _full_forward(model, params, padded)[0, len(tokens) - 1]


def test_greedy_equals_stepwise_argmax_of_the_full_forward_pass(tiny):
  model, params = tiny
  ids, mask = sampling.left_pad(PROMPTS)
  out = np.asarray(
    sampling.sample(model, params, ids, mask, jax.random.key(0), max_new_tokens=6, greedy=True)
  )
  for prompt, generated in zip(PROMPTS, out):
    tokens = list(prompt)
    for token in generated:
      expected = int(jnp.argmax(full_forward_logits(model, params, tokens)))
      assert token == expected
      tokens.append(expected)


@pytest.mark.parametrize("top_k", [1, 3])
def test_top_k_never_emits_a_token_outside_the_top_k(tiny, top_k):
  model, params = tiny
  ids, mask = sampling.left_pad(PROMPTS * 4)
  out = np.asarray(
    sampling.sample(model, params, ids, mask, jax.random.key(1), max_new_tokens=5, top_k=top_k)
  )
  for prompt, generated in zip(PROMPTS * 4, out):
    tokens = list(prompt)
    for token in generated:
      top = np.argsort(-np.asarray(full_forward_logits(model, params, tokens)))[:top_k]
      assert token in top
      tokens.append(int(token))


def test_filters_keep_exactly_their_defined_sets():
  logits = jax.random.normal(jax.random.key(2), (16, 50)) * 2.0  # [B, V]
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  # top-k: the k largest.
  kept = np.isfinite(np.asarray(sampling.filter_logits(logits, top_k=5)))
  np.testing.assert_array_equal(kept, probs >= np.sort(probs, axis=-1)[:, -5:-4])
  # top-p: the smallest most-probable set whose mass reaches p.
  for top_p in (0.3, 0.9):
    kept = np.isfinite(np.asarray(sampling.filter_logits(logits, top_p=top_p)))
    for row in range(len(probs)):
      mass = probs[row][kept[row]].sum()
      assert mass >= top_p
      assert mass - probs[row][kept[row]].min() < top_p  # Minimal: drop one, fall short.
      assert probs[row][kept[row]].min() >= probs[row][~kept[row]].max(initial=0.0)
  # typical: ordered by |surprisal - entropy|, the smallest such set reaching the mass.
  kept = np.isfinite(np.asarray(sampling.filter_logits(logits, typical_p=0.5)))
  entropy = -(probs * np.log(probs)).sum(-1, keepdims=True)
  distance = np.abs(-np.log(probs) - entropy)
  for row in range(len(probs)):
    assert probs[row][kept[row]].sum() >= 0.5
    assert distance[row][kept[row]].max() <= distance[row][~kept[row]].min(initial=np.inf)
  # Unfiltered: nothing removed, only the temperature applies.
  np.testing.assert_allclose(sampling.filter_logits(logits, temperature=2.0), logits / 2.0)


def test_same_seed_same_samples_and_rows_independent_of_batching(tiny):
  model, params = tiny
  prompts = PROMPTS * 3
  run = lambda seed, batch_size: sampling.generate(
    model,
    params,
    prompts,
    jax.random.key(seed),
    max_new_tokens=6,
    batch_size=batch_size,
    progress=False,
  )
  first = run(0, 3)
  assert first == run(0, 3)
  assert first == run(0, 4)  # Row keys fold in the global row index.
  assert first != run(1, 3)


@pytest.mark.slow
def test_generation_sharded_over_eight_devices_equals_one_device():
  output = run_with_devices("""
    import jax, jax.numpy as jnp
    from emo_jax import sampling, sharding
    from emo_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config.preset("tiny", vocab_size=37, n_positions=24))
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    prompts = [[5, 9, 2, 30, 11], [7], [3, 3, 8]] * 5
    run = lambda mesh: sampling.generate(model, params, prompts, jax.random.key(0),
                                         max_new_tokens=6, batch_size=8, mesh=mesh,
                                         progress=False)
    assert run(sharding.make_mesh(8, 1)) == run(None)
    print("sharded generation ok")
  """)
  assert "sharded generation ok" in output


def test_eos_stops_a_row_and_pads_with_eos(tiny):
  model, params = tiny
  ids, mask = sampling.left_pad(PROMPTS * 8)
  out = np.asarray(
    sampling.sample(model, params, ids, mask, jax.random.key(3), max_new_tokens=12, eos_id=4)
  )
  stopped = 0
  for row in out:
    row = row.tolist()
    if 4 in row:
      stopped += 1
      assert all(t == 4 for t in row[row.index(4) :])
      assert sampling.trim_at_eos(row, 4) == row[: row.index(4)]
  assert stopped > 0  # With 24 rows x 12 steps over 37 tokens some row hits id 4.


def _chi_square_p_value(counts, probs):
  """Goodness of fit, tokens with expected count < 5 merged into one bin (validity)."""
  expected = probs * counts.sum()
  small = expected < 5
  observed = np.append(counts[~small], counts[small].sum())
  expected = np.append(expected[~small], expected[small].sum())
  keep = expected > 0
  return stats.chisquare(
    observed[keep], expected[keep] * observed[keep].sum() / expected[keep].sum()
  )[1]


def test_sampling_frequencies_match_the_softmax(tiny):
  """8000 first tokens (fixed seed) against the model's softmax: chi-square."""
  model, params = tiny
  prompt = [5, 9, 2]
  ids, mask = sampling.left_pad([prompt] * 8000)
  tokens = np.asarray(
    sampling.sample(model, params, ids, mask, jax.random.key(4), max_new_tokens=1)
  )[:, 0]
  counts = np.bincount(tokens, minlength=VOCAB)
  logits = full_forward_logits(model, params, prompt)
  probs = np.asarray(jax.nn.softmax(logits), np.float64)
  assert _chi_square_p_value(counts, probs) > 1e-3
  # The test has power: the same draws reject the softmax at temperature 1.5.
  hotter = np.asarray(jax.nn.softmax(logits / 1.5), np.float64)
  assert _chi_square_p_value(counts, hotter) < 1e-4


def test_prompt_plus_new_tokens_beyond_max_length_is_an_error(tiny):
  model, params = tiny
  ids, mask = sampling.left_pad([[1] * 20])
  with pytest.raises(ValueError, match="exceeds max_length=24"):
    sampling.sample(model, params, ids, mask, jax.random.key(0), max_new_tokens=5)
