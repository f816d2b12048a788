"""TFDS builders: offline builds from the local corpora equal the direct readers; fixtures
for the corpora that are not in shared/data; every error names what is missing."""

import json

import ml_collections
import pytest

from emo_jax import data as data_lib
from emo_jax.data import corpora, tfds_builders


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tensorflow_datasets"))


def test_importing_hides_accelerators_from_tensorflow(monkeypatch):
  import tensorflow as tf

  calls = []
  monkeypatch.setattr(
    tf.config, "set_visible_devices", lambda devices, kind: calls.append((list(devices), kind))
  )
  tfds_builders.hide_accelerators_from_tensorflow()
  assert calls == [([], "GPU"), ([], "TPU")]
  assert tf.config.get_visible_devices("GPU") == []


@pytest.mark.parametrize(
  "corpus, splits, counts",
  [
    ("wikitext2", ("train", "validation", "test"), (629, 60, 62)),
    ("wikitext2_raw", ("validation", "test"), (60, 62)),
    ("ptb", ("train", "validation", "test"), (42068, 3370, 3761)),
    ("tiny_shakespeare", ("train", "validation", "test"), (1, 1, 1)),
  ],
)
@pytest.mark.slow
def test_offline_build_equals_the_direct_reader(corpus, splits, counts, tfds_dir, data_dir):
  for split, count in zip(splits, counts):
    documents = tfds_builders.load_documents(corpus, split, tfds_dir, data_dir)
    assert len(documents) == count
    assert documents == corpora.read_documents(corpus, split, data_dir)


def test_missing_split_file_is_skipped_and_named(tfds_dir, data_dir):
  # wikitext-2-raw has no local train file: the builder keeps validation/test only.
  with pytest.raises(ValueError, match="no 'train' split"):
    tfds_builders.load_documents("wikitext2_raw", "train", tfds_dir, data_dir)


def test_no_manual_file_at_all_names_every_expected_path(tmp_path):
  (tmp_path / "ptb").mkdir()
  (tmp_path / "ptb" / "README").write_text("not a split file")
  with pytest.raises(FileNotFoundError, match="ptb.train.txt.*ptb.valid.txt.*ptb.test.txt"):
    tfds_builders.load_documents("ptb", "test", str(tmp_path / "tfds"), str(tmp_path))


def test_a_manual_file_with_the_wrong_digest_is_rejected(tmp_path):
  (tmp_path / "ptb").mkdir()
  (tmp_path / "ptb" / "ptb.test.txt").write_text(" not the real test set\n")
  with pytest.raises(Exception, match="SHA-256"):
    tfds_builders.load_documents("ptb", "test", str(tmp_path / "tfds"), str(tmp_path))


def test_writing_prompts_and_webtext_build_from_fixture_files(tmp_path):
  stories = tmp_path / "writingPrompts"
  stories.mkdir()
  for short in ("train", "valid", "test"):
    (stories / f"{short}.wp_source").write_text(
      f"[ WP ] A {short} prompt <newline> here\n[ WP ] Second prompt\n"
    )
    (stories / f"{short}.wp_target").write_text(
      f"Once upon a {short} . <newline> The end .\nAnother story .\n"
    )
  documents = tfds_builders.load_documents(
    "writingprompts", "validation", str(tmp_path / "tfds"), str(tmp_path)
  )
  assert documents == ["Once upon a valid .\nThe end .", "Another story ."]
  builder = tfds_builders.build("writingprompts", str(tmp_path / "tfds"), str(tmp_path))
  first = next(iter(builder.as_dataset(split="test", shuffle_files=False)))
  assert first["prompt"].numpy().decode() == "[ WP ] A test prompt\nhere"

  webtext = tmp_path / "webtext"
  webtext.mkdir()
  for short in ("train", "valid", "test"):
    with open(webtext / f"webtext.{short}.jsonl", "w") as f:
      f.writelines(
        json.dumps({"id": i, "ended": True, "length": 3, "text": f"{short} document {i}"}) + "\n"
        for i in range(3)
      )
  assert tfds_builders.load_documents("webtext", "test", str(tmp_path / "tfds"), str(tmp_path)) == [
    f"test document {i}" for i in range(3)
  ]


def test_wikitext103_builds_from_fixture_files(tmp_path):
  folder = tmp_path / "wikitext-103-raw"
  folder.mkdir()
  for short in ("train", "valid", "test"):
    (folder / f"wiki.{short}.raw").write_text(
      f" \n = First {short} = \n \n Text one .\n = = Section = = \n More .\n"
      f" = Second {short} = \n Text two .\n"
    )
  documents = tfds_builders.load_documents(
    "wikitext103_raw", "train", str(tmp_path / "tfds"), str(tmp_path)
  )
  assert len(documents) == 2  # Articles split at top-level titles, not at sections.
  assert documents[0].startswith(" = First train = ") and "= = Section = =" in documents[0]
  assert documents[1].startswith(" = Second train = ")


def test_unknown_corpus_is_an_error():
  with pytest.raises(ValueError, match="no TFDS dataset for corpus 'nope'"):
    tfds_builders.build("nope")


def test_trainer_reads_through_tfds_when_configured(tfds_dir, data_dir):
  data = ml_collections.ConfigDict(
    dict(source="tfds", corpus="ptb", manual_dir=data_dir, tfds_dir=tfds_dir, text_field="text")
  )
  assert data_lib.read_split(data, "validation") == corpora.ptb("validation", data_dir)
  data.source = "hub"
  with pytest.raises(ValueError, match="data.source must be"):
    data_lib.read_split(data, "validation")


def test_trainer_joins_corpora_with_plus(data_dir):
  data = ml_collections.ConfigDict(
    dict(
      source="files", corpus="ptb+wikitext2", manual_dir=data_dir, tfds_dir="", text_field="text"
    )
  )
  assert data_lib.read_split(data, "validation") == (
    corpora.ptb("validation", data_dir) + corpora.wikitext2("validation", data_dir)
  )
