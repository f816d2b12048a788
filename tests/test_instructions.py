"""Instruction data: the Alpaca carve, templates, prompt masking and packed rows whose examples
never see each other."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from emo_jax import models, train
from emo_jax.data import input_pipeline, instructions
from emo_jax.data.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def smollm2_tokenizer():
  return load_tokenizer("smollm2-135m")


def write_alpaca(root, records):
  os.makedirs(root / "alpaca", exist_ok=True)
  with open(root / "alpaca" / "alpaca_5000.json", "w") as f:
    json.dump(records, f)


def test_the_carve_is_disjoint_complete_and_drops_empty_outputs(tmp_path):
  records = [{"instruction": f"Task {i}", "input": "", "output": f"Answer {i}"} for i in range(300)]
  records += [{"instruction": "Say nothing", "input": "x", "output": "  "}]
  write_alpaca(tmp_path, records)
  splits = {s: instructions.read_alpaca(s, str(tmp_path)) for s in ("train", "validation", "test")}
  seen = [r.instruction for recs in splits.values() for r in recs]
  assert sorted(seen) == sorted(f"Task {i}" for i in range(300))  # Empty output dropped.
  assert len(splits["train"]) > 240 and splits["validation"] and splits["test"]
  # The split is a function of the record, not of its position in the file.
  write_alpaca(tmp_path, records[::-1])
  assert {r.instruction for r in instructions.read_alpaca("test", str(tmp_path))} == {
    r.instruction for r in splits["test"]
  }


def test_a_record_without_its_fields_is_named(tmp_path):
  write_alpaca(tmp_path, [{"instruction": "a", "output": "b"}])
  with pytest.raises(ValueError, match=r"record 0 lacks the field\(s\) \['input'\]"):
    instructions.read_alpaca("train", str(tmp_path))


def test_the_real_sample_has_its_documented_counts(data_dir):
  counts = {s: len(instructions.read_alpaca(s, data_dir)) for s in ("train", "validation", "test")}
  assert sum(counts.values()) == 5000 - 2  # SOURCE.md: two records have an empty output.
  assert counts["validation"] > 150 and counts["test"] > 150


@pytest.mark.slow
def test_chat_prompts_equal_transformers_apply_chat_template(smollm2_tokenizer, data_dir):
  import transformers

  from emo_jax.models import loader

  path = loader.resolve_source("smollm2-135m")
  reference = transformers.AutoTokenizer.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path)
  )
  records = instructions.read_alpaca("validation", data_dir)[:6]
  assert any(r.input for r in records) and any(not r.input for r in records)
  for record in records:
    messages = [{"role": "user", "content": record.user_message}]
    ours = instructions.prompt_text(record, "chat", smollm2_tokenizer)
    assert ours == reference.apply_chat_template(
      messages, tokenize=False, add_generation_prompt=True
    )
    # With the answer: the full conversation starts with the prompt and holds the response.
    full = instructions.render_chat(
      smollm2_tokenizer.chat_template,
      [*messages, {"role": "assistant", "content": record.output}],
      add_generation_prompt=False,
    )
    assert full == reference.apply_chat_template(
      [*messages, {"role": "assistant", "content": record.output}], tokenize=False
    )
    assert full == ours + record.output + "<|im_end|>\n"
    # Prompt and response tokenized apart are the tokens of the whole conversation.
    example = instructions.tokenize([record], smollm2_tokenizer, "chat")[0]
    assert example.tokens == reference.encode(full, add_special_tokens=False)[:-1]
    assert example.tokens[-1] == smollm2_tokenizer.eos_id


def test_alpaca_template_and_a_tokenizer_without_a_chat_template(smollm2_tokenizer):
  record = instructions.Record("Add the numbers.", "2 and 3", "5")
  prompt = instructions.prompt_text(record, "alpaca", smollm2_tokenizer)
  assert prompt.endswith("### Input:\n2 and 3\n\n### Response:\n")
  assert "### Input" not in instructions.prompt_text(
    instructions.Record("Say hi.", "", "hi"), "alpaca", smollm2_tokenizer
  )
  gpt2 = load_tokenizer("gpt2")
  with pytest.raises(ValueError, match=r"has none\); use data.prompt_template=.alpaca."):
    instructions.prompt_text(record, "chat", gpt2)


def examples_of(lengths, seed=0, vocab=50):
  """Examples with (prompt, response) lengths; responses end with EOS id 1."""
  rng = np.random.default_rng(seed)
  return [
    instructions.Example(
      rng.integers(2, vocab, p).tolist(), rng.integers(2, vocab, r - 1).tolist() + [1]
    )
    for p, r in lengths
  ]


def test_packing_weights_exactly_the_response_and_eos():
  examples = examples_of([(5, 4), (3, 6), (7, 2), (4, 4)])
  rows, stats = instructions.pack(examples, block_size=16)
  assert stats.examples == 4 and stats.truncated == stats.dropped == 0
  # Rebuild every example from its segment: inputs/targets are its tokens shifted by one,
  # and exactly its response tokens (EOS included) are weighted.
  rebuilt = []
  for r in range(len(rows["inputs"])):
    segments = rows["attention_mask"][r]
    for s in range(1, segments.max() + 1):
      where = segments == s
      tokens = [*rows["inputs"][r][where], rows["targets"][r][where][-1]]
      weighted = rows["targets"][r][where][rows["weights"][r][where] > 0]
      np.testing.assert_array_equal(rows["positions"][r][where], np.arange(where.sum()))
      rebuilt.append((tokens, weighted.tolist()))
  for example, (tokens, weighted) in zip(examples, rebuilt):
    assert tokens == example.tokens
    assert weighted == example.response
  assert len(rebuilt) == len(examples)
  padding = rows["attention_mask"] == 0
  assert np.all(rows["weights"][padding] == 0) and np.all(rows["targets"][padding] == -1)


def test_packing_truncates_long_responses_and_drops_long_prompts():
  rows, stats = instructions.pack(examples_of([(4, 30), (12, 3), (3, 3)]), block_size=10)
  assert (stats.truncated, stats.dropped, stats.examples) == (1, 1, 2)
  assert rows["weights"][0].sum() == 10 - 3  # Targets 3..9 of the cut example are response.


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_packed_row_equals_its_examples_run_alone(family):
  model = models.from_config(family, "tiny", vocab_size=50, max_length=32)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  examples = examples_of([(4, 5), (6, 3), (2, 7)], seed=1)
  rows, _ = instructions.pack(examples, block_size=32)
  assert rows["attention_mask"].max() == 3  # All three share one row.
  packed = model.apply(
    {"params": params},
    jnp.asarray(rows["inputs"]),
    jnp.asarray(rows["attention_mask"]),
    jnp.asarray(rows["positions"]),
  )  # [1, 32, V]
  for s, example in enumerate(examples, start=1):
    alone = model.apply({"params": params}, jnp.asarray([example.tokens[:-1]]))  # [1, n, V]
    where = rows["attention_mask"][0] == s
    np.testing.assert_allclose(packed[0][where], alone[0], atol=1e-5, rtol=1e-5)


def objective_config(name):
  return ml_collections.ConfigDict(
    {
      "name": name,
      "weighting": "mle",
      "max_weight": None,
      "detach_target_prob": True,
      "mixing_ratio": 0.5,
      "gamma": 0.5,
      "fused": True,
      "chunk_size": 16,
    }
  )


@pytest.mark.parametrize("loss_name", ["mle", "emo"])
def test_the_loss_and_gradient_are_those_of_the_response_tokens_alone(loss_name):
  """The packed, masked loss equals the sum over examples of each example's response-token
  loss computed alone; prompt and padding targets can be anything."""
  model = models.from_config("llama", "tiny", vocab_size=50, max_length=32)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  objective = train.make_objective(objective_config(loss_name))
  examples = examples_of([(4, 5), (6, 3), (3, 4), (5, 6)], seed=2)
  rows, _ = instructions.pack(examples, block_size=16)

  def packed_loss(params, rows):
    hidden, head = models.hidden_states_and_head(
      model, params, rows["inputs"], rows["attention_mask"], rows["positions"]
    )
    return objective(hidden, head, rows["targets"], rows["weights"], jax.lax.stop_gradient(head))[0]

  def alone_loss(params):
    total = 0.0
    for example in examples:
      tokens = jnp.asarray([example.tokens])
      hidden, head = models.hidden_states_and_head(model, params, tokens[:, :-1])
      n = len(example.prompt) - 1  # Targets from index n on are the response.
      per_token = objective(
        hidden[:, n:],
        head,
        tokens[:, 1:][:, n:],
        jnp.ones_like(tokens[:, 1:][:, n:], jnp.float32),
        jax.lax.stop_gradient(head),
      )[0]
      total = total + per_token
    return total

  rows = {k: jnp.asarray(v) for k, v in rows.items()}
  want, want_grad = jax.jit(jax.value_and_grad(alone_loss))(params)
  packed_value_and_grad = jax.jit(jax.value_and_grad(packed_loss))
  got, got_grad = packed_value_and_grad(params, rows)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  jax.tree.map(
    lambda g, w: np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-4), got_grad, want_grad
  )
  # Targets at prompt and padding positions (weight 0) change nothing.
  scrambled = dict(rows)
  noise = jax.random.randint(jax.random.key(3), rows["targets"].shape, 0, 50)
  scrambled["targets"] = jnp.where(rows["weights"] > 0, rows["targets"], noise)
  again, again_grad = packed_value_and_grad(params, scrambled)
  assert float(again) == float(got)
  jax.tree.map(np.testing.assert_array_equal, again_grad, got_grad)


def test_instruction_rows_resume_exactly():
  rows, _ = instructions.pack(examples_of([(3, 4)] * 40, seed=4), block_size=8)
  iterator = input_pipeline.TrainIterator(rows, 4, seed=1)
  for _ in range(3):
    next(iterator)
  resumed = input_pipeline.TrainIterator(rows, 4, seed=1)
  resumed.set_state(iterator.get_state())
  for _ in range(iterator.batches_per_epoch + 2):  # Across an epoch boundary.
    a, b = next(iterator), next(resumed)
    assert set(a) == {"inputs", "targets", "weights", "attention_mask", "positions"}
    jax.tree.map(np.testing.assert_array_equal, a, b)
  evaluated = list(input_pipeline.eval_batches(rows, 3))
  assert sum(float(b["weights"].sum()) for b in evaluated) == float(rows["weights"].sum())
