"""Corpora readers on the real local files, packing, batching, resume and process sharding."""

import numpy as np
import pytest

from emo_jax.data import corpora, input_pipeline
from emo_jax.data.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
  return load_tokenizer()


# ----------------------------------------------------------------------------------------
# Corpora: the published counts of each split.
# ----------------------------------------------------------------------------------------


def test_tiny_shakespeare_splits_match_tfds(data_dir):
  sizes = [len(corpora.tiny_shakespeare(s, data_dir)[0]) for s in corpora.SPLITS]
  assert sizes == [1003854, 55770, 55770]
  assert corpora.tiny_shakespeare("train", data_dir)[0].startswith("First Citizen:")


def test_wikitext2_articles_match_the_document_level_release(data_dir):
  # EleutherAI/wikitext_document_level splits at the same top-level headings:
  # 629 / 60 / 62 pages (shared/data/wikitext-2-raw/SOURCE.md lists 60 and 62).
  counts = [len(corpora.wikitext2(s, data_dir)) for s in corpora.SPLITS]
  assert counts == [629, 60, 62]
  raw = corpora.wikitext2_raw("test", data_dir)
  assert len(raw) == 62 and raw[0].lstrip().startswith("= Robert Boulter =")
  with pytest.raises(FileNotFoundError, match="no local train split"):
    corpora.wikitext2_raw("train", data_dir)


def test_ptb_lines(data_dir):
  assert [len(corpora.ptb(s, data_dir)) for s in corpora.SPLITS] == [42068, 3370, 3761]


def test_ag_news_carve_out_is_disjoint_and_complete(data_dir):
  splits = {s: corpora.ag_news(s, data_dir) for s in corpora.SPLITS}
  assert sum(len(v) for v in splits.values()) == 7600
  assert set(splits["train"]).isdisjoint(splits["test"])
  assert 0.75 < len(splits["train"]) / 7600 < 0.85
  assert 600 < len(splits["validation"]) < 920 and 600 < len(splits["test"]) < 920


def test_missing_files_name_the_expected_path(tmp_path):
  (tmp_path / "ptb").mkdir()
  with pytest.raises(FileNotFoundError, match=r"ptb/ptb\.valid\.txt"):
    corpora.ptb("validation", str(tmp_path))
  with pytest.raises(ValueError, match="unknown corpus"):
    corpora.read_documents("c4", "train", str(tmp_path))


def test_empty_split_is_an_error(tmp_path):
  (tmp_path / "ptb").mkdir()
  (tmp_path / "ptb" / "ptb.test.txt").write_text("\n \n")
  with pytest.raises(ValueError, match="'ptb' split 'test' is empty"):
    corpora.read_documents("ptb", "test", str(tmp_path))


# ----------------------------------------------------------------------------------------
# Packing.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 7, 64])
def test_packing_loses_and_duplicates_nothing(block_size):
  rng = np.random.default_rng(block_size)
  documents = [rng.integers(0, 1000, rng.integers(0, 40)).tolist() for _ in range(23)]
  blocks = input_pipeline.pack_documents(documents, eos_id=50256, block_size=block_size)
  stream = np.concatenate([np.append(d, 50256) for d in documents]).astype(np.int32)
  batch = input_pipeline.blocks_to_batch(blocks)
  real = batch["weights"].reshape(-1) > 0
  # Every stream token after the first is a target exactly once, in order ...
  np.testing.assert_array_equal(batch["targets"].reshape(-1)[real], stream[1:])
  # ... and is predicted from the token just before it.
  np.testing.assert_array_equal(batch["inputs"].reshape(-1)[real], stream[:-1])
  # Weights are zero only on padding, and padding only ends the last block.
  assert (batch["targets"].reshape(-1)[~real] == -1).all()
  assert real[: len(stream) - 1].all() and not real[len(stream) - 1 :].any()


def test_real_text_round_trips_through_blocks(tokenizer, data_dir):
  documents = corpora.ptb("test", data_dir)[:50]
  blocks = input_pipeline.tokenize_and_pack(documents, tokenizer, 32)
  tokens = np.concatenate([blocks[:, :-1].reshape(-1), blocks[-1:, -1]])
  text = tokenizer.decode([int(t) for t in tokens if t >= 0])
  assert text == "<|endoftext|>".join(documents) + "<|endoftext|>"


# ----------------------------------------------------------------------------------------
# Iteration.
# ----------------------------------------------------------------------------------------


def make_blocks(n=37, length=9):
  return np.arange(n * length, dtype=np.int32).reshape(n, length)


def take(iterator, count):
  return [next(iterator)["inputs"] for _ in range(count)]


def test_same_seed_same_batches_and_epochs_reshuffle():
  a = input_pipeline.TrainIterator(make_blocks(), 4, seed=1)
  b = input_pipeline.TrainIterator(make_blocks(), 4, seed=1)
  first, second = take(a, 9), take(b, 9)
  for x, y in zip(first, second):
    np.testing.assert_array_equal(x, y)
  assert a.get_state() == {"epoch": 1, "position": 0}  # 37 // 4 = 9 batches an epoch.
  epoch_two = take(a, 9)
  assert any(not np.array_equal(x, y) for x, y in zip(first, epoch_two))
  other_seed = take(input_pipeline.TrainIterator(make_blocks(), 4, seed=2), 9)
  assert any(not np.array_equal(x, y) for x, y in zip(first, other_seed))


@pytest.mark.parametrize("stop_after", [0, 5, 9, 13])
def test_resume_from_state_replays_exactly(stop_after):
  reference = input_pipeline.TrainIterator(make_blocks(), 4, seed=3)
  expected = take(reference, 25)
  interrupted = input_pipeline.TrainIterator(make_blocks(), 4, seed=3)
  take(interrupted, stop_after)
  state = interrupted.get_state()
  resumed = input_pipeline.TrainIterator(make_blocks(), 4, seed=3)
  resumed.set_state(state)
  for x, y in zip(take(resumed, 25 - stop_after), expected[stop_after:]):
    np.testing.assert_array_equal(x, y)


def test_processes_see_disjoint_rows_whose_union_is_the_global_batch():
  whole = input_pipeline.TrainIterator(make_blocks(), 6, seed=4)
  parts = [
    input_pipeline.TrainIterator(make_blocks(), 6, seed=4, process_index=p, process_count=2)
    for p in range(2)
  ]
  for _ in range(12):
    global_rows = next(whole)["inputs"]
    local = [next(p)["inputs"] for p in parts]
    np.testing.assert_array_equal(np.concatenate(local), global_rows)
    assert not set(local[0][:, 0]) & set(local[1][:, 0])


def test_eval_batches_cover_every_block_once_and_pad_with_zero_weight():
  blocks = make_blocks(n=10)
  batches = list(input_pipeline.eval_batches(blocks, 4))
  assert len(batches) == 3
  weights = np.concatenate([b["weights"] for b in batches])
  np.testing.assert_array_equal(weights[:10], 1.0)
  np.testing.assert_array_equal(weights[10:], 0.0)
  targets = np.concatenate([b["targets"] for b in batches])[:10]
  np.testing.assert_array_equal(targets, blocks[:, 1:])
  halves = [list(input_pipeline.eval_batches(blocks, 4, p, 2)) for p in range(2)]
  np.testing.assert_array_equal(
    np.concatenate([np.concatenate([h[b]["targets"] for h in halves]) for b in range(3)]),
    np.concatenate([b["targets"] for b in batches]),
  )


@pytest.mark.parametrize("kind", ["blocks", "instruction_rows"])
def test_row_helpers_keep_the_form_and_agree_with_each_other(kind):
  blocks = make_blocks(n=6)
  rows = input_pipeline.blocks_to_batch(blocks) if kind == "instruction_rows" else blocks
  picked = np.array([4, 0, 2])
  selected = input_pipeline.select_rows(rows, picked)
  assert type(selected) is type(rows) and input_pipeline.num_rows(selected) == 3
  # take_rows is select_rows then the batch form; blocks are split, a batch is not re-split.
  expected = input_pipeline.blocks_to_batch(blocks[picked])
  taken = input_pipeline.take_rows(rows, picked)
  assert taken.keys() == expected.keys()
  for key in expected:
    np.testing.assert_array_equal(taken[key], expected[key])
  first = input_pipeline.take_rows(input_pipeline.first_rows(rows, 2), np.arange(2))
  np.testing.assert_array_equal(first["inputs"], blocks[:2, :-1])
  assert input_pipeline.num_rows(input_pipeline.first_rows(rows, 100)) == 6  # Fewer: all rows.


def test_too_few_blocks_for_a_batch_is_an_error():
  with pytest.raises(ValueError, match="fewer than one global batch"):
    input_pipeline.TrainIterator(make_blocks(n=3), 4, seed=0)


# ----------------------------------------------------------------------------------------
# Users' own files.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["blocks", "instruction_rows"])
def test_training_subsets_are_nested_minimal_and_seeded(kind):
  rng = np.random.default_rng(0)
  blocks = input_pipeline.pack_documents(
    [rng.integers(0, 50, rng.integers(1, 40)).tolist() for _ in range(60)], eos_id=50, block_size=8
  )
  rows = input_pipeline.blocks_to_batch(blocks) if kind == "instruction_rows" else blocks
  if kind == "instruction_rows":  # Prompt-masked rows: only weighted targets count.
    rows["weights"][:, :3] = 0.0
  per_row = input_pipeline.target_tokens(rows)
  full_row = 8 - 3 if kind == "instruction_rows" else 8
  assert (per_row[:-1] == full_row).all() and 0 < per_row[-1] <= full_row  # Last one padded.

  def kept_rows(budget, seed=0):
    subset = input_pipeline.nested_subset(rows, budget, seed)
    flat = subset["inputs"] if isinstance(subset, dict) else subset
    source = rows["inputs"] if isinstance(rows, dict) else rows
    return {int(np.flatnonzero((source == row).all(axis=1))[0]) for row in flat}, subset

  small, small_subset = kept_rows(40)
  large, _ = kept_rows(120)
  assert small < large  # Nested: the smaller budget's rows are among the larger's.
  assert input_pipeline.target_tokens(small_subset).sum() >= 40
  # Minimal: without its last-drawn row the subset would fall short of the budget.
  order = np.random.default_rng(0).permutation(len(per_row))
  assert per_row[order[: len(small) - 1]].sum() < 40
  assert kept_rows(40, seed=1)[0] != small
  with pytest.raises(ValueError, match="fewer than the 100000 asked for"):
    input_pipeline.nested_subset(rows, 100_000, 0, name="tiny/train")
  with pytest.raises(ValueError, match="max_tokens must be positive"):
    input_pipeline.nested_subset(rows, 0, 0)


def test_local_files_txt_jsonl_csv(tmp_path):
  (tmp_path / "a.train.txt").write_text("first file\n")
  (tmp_path / "b.train.txt").write_text("second file\n")
  assert corpora.read_documents(f"files:{tmp_path}/*.{{split}}.txt", "train") == [
    "first file\n",
    "second file\n",
  ]
  (tmp_path / "valid.jsonl").write_text('{"body": "one"}\n\n{"body": "two"}\n')
  assert corpora.read_documents(
    f"files:{tmp_path}/valid.jsonl", "validation", text_field="body"
  ) == ["one", "two"]
  (tmp_path / "test.csv").write_text('id,text\n1,"a, quoted"\n2,plain\n')
  assert corpora.read_documents(f"files:{tmp_path}/{{split}}.csv", "test") == ["a, quoted", "plain"]


def test_local_files_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no file matches"):
    corpora.read_documents(f"files:{tmp_path}/{{split}}.jsonl", "train")
  (tmp_path / "train.jsonl").write_text('{"body": "x"}\n')
  with pytest.raises(ValueError, match="no field 'text'"):
    corpora.read_documents(f"files:{tmp_path}/{{split}}.jsonl", "train")
  (tmp_path / "train.csv").write_text("body\nx\n")
  with pytest.raises(ValueError, match="no column 'text'"):
    corpora.read_documents(f"files:{tmp_path}/{{split}}.csv", "train")
  (tmp_path / "train.parquet").write_text("x")
  with pytest.raises(ValueError, match="unsupported extension"):
    corpora.read_documents(f"files:{tmp_path}/{{split}}.parquet", "train")


def test_wikitext2_raw_carved_splits_the_validation_file_and_keeps_test(data_dir):
  validation_file = corpora.wikitext2_raw("validation", data_dir)
  train = corpora.wikitext2_raw_carved("train", data_dir)
  validation = corpora.wikitext2_raw_carved("validation", data_dir)
  assert len(train) + len(validation) == len(validation_file) and len(validation) == 6
  assert sorted(train + validation) == sorted(validation_file)
  assert corpora.wikitext2_raw_carved("test", data_dir) == corpora.wikitext2_raw("test", data_dir)
