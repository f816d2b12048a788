"""What every model family owes the causal-LM protocol, checked on tiny random models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emo_jax import cost_embeddings as cost_lib
from emo_jax import fused_losses, losses, models, sampling
from emo_jax.models import layers

FAMILIES = ["gpt2", "llama"]
VOCAB = 101


def tiny(family, **overrides):
  return models.from_config(family, "tiny", vocab_size=VOCAB, max_length=40, **overrides)


def random_ids(shape, seed=0, vocab=VOCAB):
  return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
  model = tiny(request.param)
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  # Non-trivial norms so that no parameter hides behind a 1 or a 0.
  params = jax.tree.map(
    lambda p: p + 0.1 * jax.random.normal(jax.random.key(p.size), p.shape) if p.ndim == 1 else p,
    params,
  )
  return model, params


def test_models_implement_the_protocol(family_model):
  model, _ = family_model
  assert isinstance(model, models.CausalLM)
  assert (model.vocab_size, model.max_length) == (VOCAB, 40)
  assert model.family in models.FAMILIES and model.hidden_size == 64


def test_hidden_states_and_head_give_the_logits(family_model):
  model, params = family_model
  ids = random_ids((2, 8), seed=6)
  hidden, head = models.hidden_states_and_head(model, params, ids)
  assert hidden.shape == (2, 8, model.hidden_size) and head.shape == (VOCAB, model.hidden_size)
  np.testing.assert_allclose(hidden @ head.T, model.apply({"params": params}, ids), atol=1e-5)


@pytest.mark.slow
def test_kv_cache_decoding_equals_full_forward(family_model):
  model, params = family_model
  ids = random_ids((2, 14), seed=5)
  full = model.apply({"params": params}, ids)  # [B, T, V]
  cache = model.init(jax.random.key(0), jnp.zeros((2, 20), jnp.int32), decode=True)["cache"]
  decode = jax.jit(
    lambda cache, ids, positions: model.apply(
      {"params": params, "cache": cache},
      ids,
      position_ids=positions,
      decode=True,
      mutable=["cache"],
    )
  )
  prefill = 5
  positions = np.broadcast_to(np.arange(14), (2, 14))
  logits, state = decode(cache, ids[:, :prefill], positions[:, :prefill])
  steps = [logits]
  for t in range(prefill, 14):
    logits, state = decode(state["cache"], ids[:, t : t + 1], positions[:, t : t + 1])
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5, rtol=1e-5)


def test_llama_cache_holds_only_the_key_value_heads():
  model = tiny("llama")
  cache = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((3, 20), jnp.int32), decode=True)["cache"]
  )
  config = model.config
  assert config.kv_heads < config.num_attention_heads  # The tiny preset is GQA.
  assert cache["layers_0"]["self_attn"]["cached_key"].shape == (
    3,
    config.kv_heads,
    20,
    config.head_width,
  )


@pytest.mark.slow
def test_left_padded_prompt_samples_like_the_unpadded_one(family_model):
  model, params = family_model
  prompt = list(random_ids((6,), seed=11))
  alone = sampling.sample(
    model, params, *sampling.left_pad([prompt]), jax.random.key(3), max_new_tokens=5, greedy=True
  )
  padded = sampling.sample(
    model,
    params,
    *sampling.left_pad([prompt, prompt[:2]], pad_id=7, length=9),
    jax.random.key(3),
    max_new_tokens=5,
    greedy=True,
  )
  np.testing.assert_array_equal(padded[0], alone[0])


def test_every_parameter_has_logical_axis_names(family_model):
  model, _ = family_model
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  boxes = jax.tree.leaves(abstract["params"], is_leaf=lambda x: hasattr(x, "names"))
  assert boxes and all(hasattr(box, "names") and len(box.names) == box.value.ndim for box in boxes)
  known = {"vocab", "embed", "mlp", "qkv", "positions", "norm"}
  assert {name for box in boxes for name in box.names} <= known


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.slow
def test_remat_changes_memory_not_results(family):
  plain, remat = tiny(family), tiny(family, remat=True)
  ids = random_ids((2, 8), seed=10)
  params = plain.init(jax.random.key(0), ids)["params"]
  loss = lambda model: jax.jit(
    jax.value_and_grad(
      lambda p: losses.masked_mean(
        losses.cross_entropy(model.apply({"params": p}, ids)[:, :-1], ids[:, 1:])
      )
    )
  )(params)
  (value_plain, grads_plain), (value_remat, grads_remat) = loss(plain), loss(remat)
  np.testing.assert_allclose(value_remat, value_plain, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_remat), jax.tree.leaves(grads_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

  def checkpoint_count(model):
    jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, ids).sum())(params)
    return str(jaxpr).count("remat2[")  # The jaxpr name of jax.checkpoint regions.

  assert checkpoint_count(plain) == 0
  assert checkpoint_count(remat) == 2  # One rematerialised region per block of the preset.


def test_sequence_longer_than_max_length_is_an_error(family_model):
  model, _ = family_model
  with pytest.raises(ValueError, match="sequence length 41 exceeds max_length=40"):
    model.init(jax.random.key(0), jnp.zeros((1, 41), jnp.int32))


@pytest.mark.slow
def test_fused_emo_on_the_bias_free_llama_head_equals_the_reference():
  model = tiny("llama", tie_word_embeddings=False)
  ids = random_ids((2, 9), seed=12)
  params = nn.meta.unbox(model.init(jax.random.key(1), ids)["params"])
  cost = cost_lib.make_cost_collection(model, params, cost_lib.FROZEN_HEAD)["cost"]["embeddings"]
  targets, weights = ids[:, 1:], np.ones((2, 8), np.float32)

  def fused(params):
    hidden, head = models.hidden_states_and_head(model, params, ids[:, :-1])
    return fused_losses.fused_emo(hidden, head, targets, cost, weights=weights)[0]

  def reference(params):
    logits = model.apply({"params": params}, ids[:, :-1])
    return losses.masked_mean(losses.emo(logits, targets, cost))

  value, grads = jax.value_and_grad(fused)(params)
  want_value, want_grads = jax.value_and_grad(reference)(params)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  assert float(jnp.abs(grads["lm_head"]).max()) > 0
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_rotary_tables_rotate_pairs_by_position_times_frequency():
  """A NumPy transcription of RoPE's rotate-half form: channel i pairs with i + D/2."""
  positions = np.array([[0, 3, 7]])
  x = np.random.default_rng(0).standard_normal((1, 3, 2, 8)).astype(np.float32)
  cos, sin = layers.rotary_tables(jnp.asarray(positions), 8, theta=100.0)
  got = np.asarray(layers.apply_rotary(jnp.asarray(x), cos, sin))
  frequencies = 100.0 ** (-np.arange(4) / 4)
  want = np.empty_like(x)
  for t, position in enumerate(positions[0]):
    angle = position * frequencies  # [4]
    first, second = x[0, t, :, :4], x[0, t, :, 4:]
    want[0, t, :, :4] = first * np.cos(angle) - second * np.sin(angle)
    want[0, t, :, 4:] = second * np.cos(angle) + first * np.sin(angle)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_unknown_family_or_preset_is_an_error():
  with pytest.raises(ValueError, match="unknown model family 'mamba'"):
    models.from_config("mamba", "tiny")
  with pytest.raises(ValueError, match="unknown LLaMA preset 'huge'"):
    models.from_config("llama", "huge")
