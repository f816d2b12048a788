"""The fused (chunked, gradient-in-forward) objectives against the reference losses."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emo_jax import fused_losses, losses

from fake_devices import run_with_devices

# Odd sizes on purpose: neither the tokens nor the vocabulary divide the chunk size.
SHAPE, VOCAB, WIDTH, COST_DIM, CHUNK = (3, 13), 53, 16, 7, 8


def make_inputs(seed=0, dtype=np.float32, shape=SHAPE, vocab=VOCAB, width=WIDTH):
  rng = np.random.default_rng(seed)
  hidden = rng.standard_normal((*shape, width)).astype(dtype)
  head = (0.4 * rng.standard_normal((vocab, width))).astype(dtype)
  bias = (0.5 * rng.standard_normal(vocab)).astype(dtype)
  labels = rng.integers(0, vocab, size=shape).astype(np.int32)
  labels[0, :3] = -100  # Ignored positions.
  weights = rng.random(shape).astype(np.float32)
  weights[1, 4] = 0.0
  cost = rng.standard_normal((vocab, COST_DIM)).astype(dtype)
  return dict(hidden=hidden, head=head, bias=bias, labels=labels, weights=weights, cost=cost)


EMO_OPTIONS = [
  dict(weighting="mle"),
  dict(weighting="demd"),
  dict(weighting="mle", max_weight=3.0),
  dict(weighting="demd", max_weight=3.0, detach_target_prob=True),
  dict(weighting="mle", detach_target_prob=True),
]

# (id, fused fn(hidden, head, labels, cost, **kw), per-token reference fn(logits, labels, cost))
OBJECTIVES = [
  (
    "cross_entropy",
    lambda h, w, t, e, **kw: fused_losses.fused_cross_entropy(h, w, t, **kw),
    lambda z, t, e: losses.cross_entropy(z, t),
  ),
  (
    "mixce",
    lambda h, w, t, e, **kw: fused_losses.fused_mixce(h, w, t, mixing_ratio=0.3, **kw),
    lambda z, t, e: losses.mixce(z, t, 0.3),
  ),
  (
    "tailr",
    lambda h, w, t, e, **kw: fused_losses.fused_tailr(h, w, t, gamma=0.7, **kw),
    lambda z, t, e: losses.tailr(z, t, 0.7),
  ),
] + [
  (
    "emo(" + ",".join(f"{k}={v}" for k, v in o.items()) + ")",
    functools.partial(fused_losses.fused_emo, **o),
    functools.partial(losses.emo, **o),
  )
  for o in EMO_OPTIONS
]
IDS = [name for name, _, _ in OBJECTIVES]


def reference_loss(reference, x, use_bias, use_weights, reduction):
  def loss(hidden, head, bias):
    logits = jnp.einsum("...d,vd->...v", hidden, head, precision="highest")
    if use_bias:
      logits = logits + bias
    weights = jnp.where(x["labels"] >= 0, x["weights"] if use_weights else 1.0, 0.0)
    per_token = reference(logits, x["labels"], x["cost"])
    if reduction == "sum":
      return jnp.sum(weights * per_token)
    return losses.masked_mean(per_token, weights)

  return loss


def fused_loss(fused, x, use_bias, use_weights, reduction, chunk_size=CHUNK):
  def loss(hidden, head, bias):
    return fused(
      hidden,
      head,
      x["labels"],
      x["cost"],
      bias=bias if use_bias else None,
      weights=x["weights"] if use_weights else None,
      chunk_size=chunk_size,
      reduction=reduction,
    )[0]

  return loss


@pytest.mark.parametrize("name,fused,reference", OBJECTIVES, ids=IDS)
@pytest.mark.parametrize(
  "use_bias,use_weights,reduction",
  [(True, True, "mean"), (False, False, "mean"), (True, False, "sum")],
)
def test_value_and_gradients_equal_reference(
  name, fused, reference, use_bias, use_weights, reduction
):
  x = make_inputs(1)
  args = (x["hidden"], x["head"], x["bias"])
  expected, expected_grads = jax.value_and_grad(
    reference_loss(reference, x, use_bias, use_weights, reduction), argnums=(0, 1, 2)
  )(*args)
  value, grads = jax.jit(
    jax.value_and_grad(fused_loss(fused, x, use_bias, use_weights, reduction), argnums=(0, 1, 2))
  )(*args)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  for got, want, what in zip(grads, expected_grads, ("hidden", "head", "bias")):
    scale = np.abs(want).max()
    np.testing.assert_allclose(got / scale, want / scale, atol=1e-5, err_msg=what)
  # Without differentiation the primal path (no gradient work) gives the same value.
  np.testing.assert_allclose(
    fused_loss(fused, x, use_bias, use_weights, reduction)(*args), expected, rtol=1e-5
  )


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_fused_cross_entropy_equals_tokamax(reduction):
  """The same value and gradients as openxla's tokamax ``linear_softmax_cross_entropy_loss``
  (its XLA backend, the one that runs off TPU), an independent fused linear + CE."""
  import tokamax
  from absl import flags

  if not flags.FLAGS.is_parsed():  # tokamax reads its absl flags from sys.argv (pytest's).
    flags.FLAGS.mark_as_parsed()
  rng = np.random.default_rng(7)
  hidden = jnp.asarray(rng.standard_normal((300, 32)), jnp.float32)  # [N, d]
  head = jnp.asarray(0.2 * rng.standard_normal((1000, 32)), jnp.float32)  # [V, d]
  targets = jnp.asarray(rng.integers(0, 1000, 300), jnp.int32)
  ours = jax.value_and_grad(
    lambda h, w: fused_losses.fused_cross_entropy(
      h, w, targets, reduction=reduction, chunk_size=64
    )[0],
    argnums=(0, 1),
  )(hidden, head)
  theirs = jax.value_and_grad(
    lambda h, w: tokamax.linear_softmax_cross_entropy_loss(
      h, targets, w.T, reduction=reduction, implementation="xla"
    ),
    argnums=(0, 1),
  )(hidden, head)
  np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)
  for got, want in zip(ours[1], theirs[1]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 5, 39, 1000])
def test_chunk_size_does_not_change_the_result(chunk_size):
  x = make_inputs(2)
  args = (x["hidden"], x["head"], x["bias"])
  fused = OBJECTIVES[-2][1]
  base = jax.value_and_grad(
    fused_loss(fused, x, True, True, "mean", chunk_size=CHUNK), argnums=(0, 1)
  )(*args)
  other = jax.value_and_grad(
    fused_loss(fused, x, True, True, "mean", chunk_size=chunk_size), argnums=(0, 1)
  )(*args)
  for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(other)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_aux_outputs_are_per_token_ce_and_demd():
  x = make_inputs(3)
  _loss, aux = fused_losses.fused_emo(
    x["hidden"], x["head"], x["labels"], x["cost"], bias=x["bias"], chunk_size=CHUNK
  )
  logits = jnp.einsum("...d,vd->...v", x["hidden"], x["head"]) + x["bias"]
  np.testing.assert_allclose(
    aux["ce"], losses.cross_entropy(logits, x["labels"]), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    aux["demd"], losses.demd(logits, x["labels"], x["cost"]), rtol=1e-5, atol=1e-6
  )
  assert (
    aux["ce"].shape == SHAPE
    and "demd" not in fused_losses.fused_cross_entropy(x["hidden"], x["head"], x["labels"])[1]
  )


def test_bfloat16_inputs_accumulate_in_float32():
  x = make_inputs(4)
  low = {
    k: (v.astype(jnp.bfloat16) if v.dtype == np.float32 and k != "weights" else v)
    for k, v in x.items()
  }
  loss_fn = fused_loss(OBJECTIVES[3][1], low, True, True, "mean")
  value, grads = jax.value_and_grad(loss_fn, argnums=(0, 1, 2))(
    low["hidden"], low["head"], low["bias"]
  )
  assert value.dtype == jnp.float32
  assert all(g.dtype == jnp.bfloat16 for g in grads)
  reference = reference_loss(OBJECTIVES[3][2], x, True, True, "mean")
  upcast = [jnp.asarray(low[k], jnp.float32) for k in ("hidden", "head", "bias")]
  expected, expected_grads = jax.value_and_grad(reference, argnums=(0, 1, 2))(*upcast)
  # Same bf16-rounded inputs: only the bf16 matmul inputs of the backward differ.
  np.testing.assert_allclose(value, expected, rtol=1e-3)
  for got, want in zip(grads, expected_grads):
    scale = np.abs(want).max()
    np.testing.assert_allclose(np.asarray(got, np.float32) / scale, want / scale, atol=2e-2)


def test_bfloat16_activations_with_float32_head_multiply_in_bfloat16():
  """bf16 training: activations bf16, the head a float32 parameter. Every matmul with the
  head must take bf16 operands (accumulating in f32), as the naive path's cast does; the
  head's gradient stays float32."""
  x = make_inputs(6)
  hidden = jnp.asarray(x["hidden"], jnp.bfloat16)
  loss_fn = lambda hidden, head: fused_losses.fused_emo(
    hidden, head, x["labels"], x["cost"], weights=x["weights"], chunk_size=CHUNK
  )[0]
  grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
  hlo = grad_fn.lower(hidden, x["head"]).as_text()
  # Operand types of each matmul: "... : (tensor<AxB>, tensor<CxD>) -> tensor<...>".
  operands = [
    line.rsplit(" : (", 1)[1].split(") ->")[0] for line in hlo.splitlines() if "dot_general" in line
  ]
  head_operands = [o for o in operands if f"tensor<{VOCAB}x{WIDTH}x" in o]
  assert len(head_operands) >= 2, operands  # The logits and d_hidden matmuls at least.
  assert all(f"tensor<{VOCAB}x{WIDTH}xf32>" not in o for o in head_operands), head_operands
  value, (d_hidden, d_head) = grad_fn(hidden, x["head"])
  assert (d_hidden.dtype, d_head.dtype) == (jnp.bfloat16, jnp.float32)

  # The naive path (losses.emo on logits of the bf16-cast head) gives the same numbers.
  def naive(hidden, head):
    logits = jnp.einsum(
      "...d,vd->...v", hidden, head.astype(hidden.dtype), preferred_element_type=jnp.float32
    )
    per_token = losses.emo(logits, x["labels"], x["cost"])
    weights = x["weights"] * (x["labels"] >= 0)
    return jnp.sum(per_token * weights) / jnp.sum(weights)

  expected, (_, expected_d_head) = jax.value_and_grad(naive, argnums=(0, 1))(hidden, x["head"])
  np.testing.assert_allclose(value, expected, rtol=1e-4)
  scale = np.abs(expected_d_head).max()
  np.testing.assert_allclose(d_head / scale, expected_d_head / scale, atol=2e-2)


def test_no_tokens_to_learn_from_gives_zero_and_zero_gradients():
  x = make_inputs(5)
  labels = np.full(SHAPE, -100, np.int32)
  value, grads = jax.value_and_grad(
    lambda h, w: fused_losses.fused_emo(h, w, labels, x["cost"], chunk_size=CHUNK)[0],
    argnums=(0, 1),
  )(x["hidden"], x["head"])
  assert value == 0.0
  for g in grads:
    np.testing.assert_array_equal(g, 0.0)


def _temp_bytes(fn, *shapes):
  compiled = jax.jit(jax.grad(fn, argnums=(0, 1))).lower(*shapes).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_compiled_gradient_never_holds_an_n_by_v_buffer():
  vocab, width, chunk = 8192, 64, 128

  def shapes(tokens):
    return (
      jax.ShapeDtypeStruct((tokens, width), jnp.float32),
      jax.ShapeDtypeStruct((vocab, width), jnp.float32),
      jax.ShapeDtypeStruct((tokens,), jnp.int32),
      jax.ShapeDtypeStruct((vocab, width), jnp.float32),
    )

  naive = lambda h, w, t, e: losses.masked_mean(losses.emo(h @ w.T, t, e), t >= 0)
  fused = lambda h, w, t, e: fused_losses.fused_emo(h, w, t, e, chunk_size=chunk)[0]
  tokens = 8192
  logits_bytes = tokens * vocab * 4
  assert _temp_bytes(naive, *shapes(tokens)) >= logits_bytes  # The test can see [N, V].
  fused_bytes = _temp_bytes(fused, *shapes(tokens))
  assert fused_bytes < logits_bytes / 8, fused_bytes / logits_bytes
  # Flat in the number of tokens: 4x the tokens, (almost) the same scratch memory.
  assert fused_bytes / _temp_bytes(fused, *shapes(tokens // 4)) < 1.5


def test_errors_name_the_problem():
  x = make_inputs(6)
  with pytest.raises(ValueError, match="must share d"):
    fused_losses.fused_emo(x["hidden"], x["head"].T, x["labels"], x["cost"])
  with pytest.raises(ValueError, match=r"cost-embedding vocab \(52 rows\) != logits vocab"):
    fused_losses.fused_emo(x["hidden"], x["head"], x["labels"], x["cost"][:-1])
  with pytest.raises(TypeError, match="labels must be integer"):
    fused_losses.fused_cross_entropy(x["hidden"], x["head"], x["weights"])
  with pytest.raises(ValueError, match="weights shape"):
    fused_losses.fused_cross_entropy(x["hidden"], x["head"], x["labels"], weights=x["weights"][0])
  bad = x["labels"].copy()
  bad[2, 2] = VOCAB
  with pytest.raises(ValueError, match=r"label out of range: labels\[2, 2\] = 53"):
    fused_losses.fused_tailr(x["hidden"], x["head"], bad)
  value = jax.jit(lambda t: fused_losses.fused_cross_entropy(x["hidden"], x["head"], t)[0])(bad)
  assert np.isnan(value)


@pytest.mark.slow
def test_sharded_over_data_and_fsdp_equals_single_device():
  output = run_with_devices("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from emo_jax import fused_losses
    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((8, 24, 32)).astype(np.float32)   # [batch, length, d]
    head = (0.3 * rng.standard_normal((96, 32))).astype(np.float32)  # [V, d]
    labels = rng.integers(0, 96, (8, 24)).astype(np.int32)
    cost = rng.standard_normal((96, 12)).astype(np.float32)

    def loss(h, w):
      return fused_losses.fused_emo(h, w, labels, cost, weighting="demd", chunk_size=40)[0]

    grad_fn = jax.value_and_grad(loss, argnums=(0, 1))
    expected = jax.jit(grad_fn)(hidden, head)
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    h_sharded = jax.device_put(hidden, NamedSharding(mesh, P("data", None, None)))
    w_sharded = jax.device_put(head, NamedSharding(mesh, P("fsdp", None)))
    got = jax.jit(grad_fn)(h_sharded, w_sharded)
    assert len(got[1][0].sharding.device_set) == 8
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    print("sharded ok")
  """)
  assert "sharded ok" in output
