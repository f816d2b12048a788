"""The Flax GPT-2 against HF transformers (PyTorch) on random-weight checkpoints."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from emo_jax import cost_embeddings as cost_lib
from emo_jax import losses, models
from emo_jax.data.tokenizer import load_tokenizer, packaged_gpt2_files
from emo_jax.models.gpt2 import GPT2Config

from hf_reference import random_ids, torch_logits

HF_CONFIGS = {
  "tied": dict(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4),
  "untied_wide_mlp": dict(
    vocab_size=211,
    n_positions=24,
    n_embd=48,
    n_layer=3,
    n_head=3,
    n_inner=80,
    tie_word_embeddings=False,
  ),
}


def build_hf_model(name, seed=0):
  torch.manual_seed(seed)
  config = transformers.GPT2Config(**HF_CONFIGS[name], attn_implementation="eager")
  model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():  # Non-zero biases and LayerNorm params so nothing hides.
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module", params=list(HF_CONFIGS))
def hf_checkpoint(request, tmp_path_factory):
  model = build_hf_model(request.param)
  directory = str(tmp_path_factory.mktemp(request.param))
  model.save_pretrained(directory)
  return request.param, model, directory


def test_logits_match_transformers(hf_checkpoint):
  _name, hf_model, directory = hf_checkpoint
  model, params = models.from_pretrained(directory)
  variables = {"params": params}
  ids = random_ids(model.vocab_size, (3, 17))
  np.testing.assert_allclose(
    model.apply(variables, ids), torch_logits(hf_model, ids), atol=1e-4, rtol=1e-4
  )


@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_match_transformers_with_padding(hf_checkpoint, side):
  _, hf_model, directory = hf_checkpoint
  model, params = models.from_pretrained(directory)
  variables = {"params": params}
  ids = random_ids(model.vocab_size, (3, 12), seed=1)
  lengths = np.array([12, 7, 3])
  positions = np.arange(12)[None, :]
  mask = (positions < lengths[:, None]) if side == "right" else (positions >= 12 - lengths[:, None])
  mask = mask.astype(np.int32)
  # HF numbers positions 0..T-1 whatever the padding; so do we by default.
  got = np.asarray(model.apply(variables, ids, attention_mask=mask))
  want = torch_logits(hf_model, ids, mask)
  np.testing.assert_allclose(got[mask == 1], want[mask == 1], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_bfloat16_activations_stay_close(hf_checkpoint):
  _, hf_model, directory = hf_checkpoint
  model, params = models.from_pretrained(directory, dtype=jnp.bfloat16)
  variables = {"params": params}
  ids = random_ids(model.vocab_size, (2, 16), seed=2)
  logits = model.apply(variables, ids)
  assert logits.dtype == jnp.float32
  want = torch_logits(hf_model, ids)
  # bfloat16 keeps 8 mantissa bits; through a few layers, logits of size ~1 move by < 0.1.
  np.testing.assert_allclose(logits, want, atol=0.1)
  assert np.abs(np.asarray(logits) - want).mean() < 0.02


def test_export_round_trip_through_transformers(hf_checkpoint, tmp_path):
  _, hf_model, directory = hf_checkpoint
  model, params = models.from_pretrained(directory)
  models.save_pretrained(model, params, str(tmp_path))
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(
    str(tmp_path), attn_implementation="eager"
  ).eval()
  ids = random_ids(model.vocab_size, (2, 11), seed=3)
  np.testing.assert_array_equal(torch_logits(reloaded, ids), torch_logits(hf_model, ids))


def test_pytorch_bin_checkpoint_loads(tmp_path):
  hf_model = build_hf_model("tied", seed=4)
  hf_model.config.save_pretrained(tmp_path)
  torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
  model, params = models.from_pretrained(str(tmp_path))
  variables = {"params": params}
  ids = random_ids(model.vocab_size, (2, 9), seed=4)
  np.testing.assert_allclose(
    model.apply(variables, ids), torch_logits(hf_model, ids), atol=1e-4, rtol=1e-4
  )


# ----------------------------------------------------------------------------------------
# Cost embeddings.
# ----------------------------------------------------------------------------------------


def test_frozen_head_cost_is_the_normalised_head_at_load(hf_checkpoint):
  _, hf_model, directory = hf_checkpoint
  model, params = models.from_pretrained(directory)
  variables = {
    "params": params,
    **cost_lib.make_cost_collection(model, params, cost_lib.FROZEN_HEAD),
  }
  head = hf_model.lm_head.weight.detach().numpy()
  expected = head / np.linalg.norm(head, axis=-1, keepdims=True)
  np.testing.assert_allclose(variables["cost"]["embeddings"], expected, rtol=1e-6, atol=1e-7)
  assert variables["cost"]["embeddings"].dtype == jnp.float32
  # A copy: moving the parameters leaves the cost embeddings where they were.
  moved = jax.tree.map(lambda p: p + 1.0, variables["params"])
  np.testing.assert_array_equal(
    cost_lib.resolve(model, {**variables, "params": moved}), variables["cost"]["embeddings"]
  )


@pytest.mark.slow
def test_adaptive_cost_follows_the_head_without_gradient(hf_checkpoint):
  _, _, directory = hf_checkpoint
  model, params = models.from_pretrained(directory)
  assert cost_lib.make_cost_collection(model, params, cost_lib.ADAPTIVE) == {}
  ids = random_ids(model.vocab_size, (2, 6), seed=7)

  def loss(params, stop):
    cost = (
      cost_lib.resolve(model, {"params": params})
      if stop
      else (models.output_embeddings(model, params))
    )
    logits = model.apply({"params": params}, ids)
    return losses.masked_mean(losses.demd(logits[:, :-1], ids[:, 1:], cost))

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  with_sg = grad(params, True)
  without_sg = grad(params, False)
  head_path = ("lm_head",) if not model.config.tie_word_embeddings else ("wte", "embedding")
  pick = lambda tree: (
    tree[head_path[0]] if len(head_path) == 1 else tree[head_path[0]][head_path[1]]
  )
  assert np.abs(pick(with_sg) - pick(without_sg)).max() > 1e-6


@pytest.mark.slow
def test_separate_cost_embeddings_with_another_width(hf_checkpoint):
  _, _, directory = hf_checkpoint
  vocab = HF_CONFIGS[hf_checkpoint[0]]["vocab_size"]
  other = np.random.default_rng(8).standard_normal((vocab, 7)).astype(np.float32)
  model, params = models.from_pretrained(directory)
  cost = cost_lib.make_cost_collection(model, params, other)["cost"]["embeddings"]
  assert cost.shape == (vocab, 7)
  ids = random_ids(vocab, (2, 6), seed=8)
  value = losses.emo(model.apply({"params": params}, ids)[:, :-1], ids[:, 1:], cost)
  assert value.shape == (2, 5) and np.isfinite(value).all()
  with pytest.raises(ValueError, match="cost-embedding vocab"):
    cost_lib.make_cost_collection(model, params, other[:-1])


# ----------------------------------------------------------------------------------------
# Tokenizer.
# ----------------------------------------------------------------------------------------


def real_paragraph(data_dir):
  with open(os.path.join(data_dir, "wikitext-2-raw", "wiki.valid.raw"), encoding="utf-8") as f:
    lines = [line for line in f if len(line) > 400 and not line.startswith(" =")]
  return lines[0] + lines[1]


def test_tokenizer_matches_transformers_on_real_text(data_dir):
  text = real_paragraph(data_dir) + " Naïve café — 3.14 <|endoftext|>"
  ours = load_tokenizer()
  encoder, merges = packaged_gpt2_files()
  reference = transformers.GPT2TokenizerFast(vocab=encoder, merges=merges)
  ids = ours.encode(text)
  assert len(ids) > 150
  assert ids == reference(text)["input_ids"]
  assert ours.decode(ids) == text
  assert ours.eos_id == 50256 and ours.vocab_size == 50257
  batch = ours.encode_batch([text[:100], text[100:300]])
  assert ours.decode_batch(batch) == [text[:100], text[100:300]]


def test_tokenizer_from_model_directory(tmp_path):
  encoder, merges = packaged_gpt2_files()
  reference = transformers.GPT2TokenizerFast(vocab=encoder, merges=merges)
  reference.save_pretrained(str(tmp_path / "fast"))  # writes tokenizer.json
  (tmp_path / "slow").mkdir()
  (tmp_path / "slow" / "vocab.json").write_text(open(encoder).read())
  (tmp_path / "slow" / "merges.txt").write_text(open(merges).read())
  for sub in ("fast", "slow"):
    assert load_tokenizer(str(tmp_path / sub)).encode(" Hello world") == [18435, 995]


# ----------------------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------------------


def _copy_checkpoint(directory, tmp_path, edit):
  from safetensors.numpy import load_file, save_file

  tensors = load_file(os.path.join(directory, "model.safetensors"))
  edit(tensors)
  tmp_path.mkdir()
  save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  (tmp_path / "config.json").write_text(open(os.path.join(directory, "config.json")).read())
  return str(tmp_path)


def test_checkpoint_errors_name_the_tensor(tmp_path):
  hf_model = build_hf_model("tied")
  directory = str(tmp_path / "good")
  hf_model.save_pretrained(directory)

  def wrong_shape(t):
    t["transformer.h.1.mlp.c_fc.weight"] = t["transformer.h.1.mlp.c_fc.weight"][:, :-1].copy()

  with pytest.raises(ValueError, match=r"h\.1\.mlp\.c_fc\.weight has shape \(32, 127\)"):
    models.from_pretrained(_copy_checkpoint(directory, tmp_path / "a", wrong_shape))

  def missing(t):
    del t["transformer.h.0.ln_2.bias"]

  with pytest.raises(ValueError, match=r"missing from the checkpoint: \['h\.0\.ln_2\.bias'\]"):
    models.from_pretrained(_copy_checkpoint(directory, tmp_path / "b", missing))

  def unknown(t):
    t["transformer.h.0.adapter.weight"] = np.zeros(3, np.float32)

  with pytest.raises(ValueError, match=r"unknown tensors.*h\.0\.adapter\.weight"):
    models.from_pretrained(_copy_checkpoint(directory, tmp_path / "c", unknown))

  with pytest.raises(FileNotFoundError, match="local HF directory"):
    models.from_pretrained("no-such-model-name-offline")
  with pytest.raises(FileNotFoundError, match="no model directory"):
    models.from_pretrained(str(tmp_path / "nowhere"))


def test_tokenizer_vocab_larger_than_model_is_an_error():
  with pytest.raises(ValueError, match=r"tokenizer vocab \(50257.*model's vocab_size \(1000\)"):
    load_tokenizer().check_model_vocab(1000)


def test_hf_config_round_trip():
  config = GPT2Config.preset("gpt2-medium")
  assert GPT2Config.from_hf_dict(json.loads(json.dumps(config.to_hf_dict()))) == config
  with pytest.raises(ValueError, match="not GPT-2"):
    GPT2Config.from_hf_dict({"model_type": "llama"})


def _hf_flax_layout(state_dict):
  """A torch GPT-2 state dict in the layout of HF's (now removed) Flax GPT-2 checkpoints:
  FlaxConv1D kernels are [out, in], embeddings 'embedding', LayerNorm 'scale'/'bias', the
  untied lm_head a Dense kernel [d, V]."""
  import flax

  flat = {}
  for name, tensor in state_dict.items():
    value = tensor.detach().numpy()
    if name.endswith((".attn.bias", ".attn.masked_bias")):
      continue
    *module, leaf = name.split(".")
    if module[-1] in ("wte", "wpe"):
      flat[(*module, "embedding")] = value
    elif module[-1].startswith("ln_"):
      flat[(*module, "scale" if leaf == "weight" else "bias")] = value
    elif leaf == "weight":  # c_attn / c_proj / c_fc Conv1D [in, out], lm_head Linear [V, d].
      flat[(*module, "kernel")] = value.T
    else:
      flat[(*module, leaf)] = value
  return flax.traverse_util.unflatten_dict(flat)


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_flax_msgpack_checkpoint_loads(tmp_path, name):
  import flax

  hf_model = build_hf_model(name, seed=9)
  hf_model.config.save_pretrained(tmp_path)
  state = {
    k: v
    for k, v in hf_model.state_dict().items()
    if not (k == "lm_head.weight" and hf_model.config.tie_word_embeddings)
  }
  (tmp_path / "flax_model.msgpack").write_bytes(
    flax.serialization.msgpack_serialize(_hf_flax_layout(state))
  )
  model, params = models.from_pretrained(str(tmp_path))
  variables = {"params": params}
  ids = random_ids(model.vocab_size, (2, 9), seed=9)
  np.testing.assert_allclose(
    model.apply(variables, ids), torch_logits(hf_model, ids), atol=1e-4, rtol=1e-4
  )
