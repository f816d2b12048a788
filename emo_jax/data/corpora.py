"""The paper's corpora read from local copies of their original files, as documents.

Each reader returns the documents (strings) of one split. Files are found under the data
folder (``EMO_JAX_DATA`` or ``data.manual_dir``, see :mod:`emo_jax.data.paths`) with the
upstream names. Splits follow the upstream releases; where a split is missing locally the
carve-out is deterministic and documented on the reader.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
from collections.abc import Callable

from emo_jax.data.paths import corpus_file

SPLITS = ("train", "validation", "test")


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}.")


def tiny_shakespeare(split: str, manual_dir: str | None = None) -> list[str]:
  """One document per split, cut by characters 90/5/5 exactly as TFDS ``tiny_shakespeare``."""
  _check_split(split)
  with open(corpus_file("tiny_shakespeare", "input.txt", manual_dir), encoding="utf-8") as f:
    text = f.read()
  train_end = int(len(text) * 0.9)
  valid_end = train_end + (len(text) - train_end) // 2
  return [
    {"train": text[:train_end], "validation": text[train_end:valid_end], "test": text[valid_end:]}[
      split
    ]
  ]


def wikitext_documents(lines: list[str]) -> list[str]:
  """Articles: a top-level heading line `` = Title = `` starts a new document."""
  documents, current = [], []
  for line in lines:
    stripped = line.strip()
    is_title = (
      stripped.startswith("= ") and stripped.endswith(" =") and not stripped.startswith("= =")
    )
    if is_title and current:
      documents.append("".join(current))
      current = []
    current.append(line)
  if current:
    documents.append("".join(current))
  return [d for d in documents if d.strip()]


def wikitext2(split: str, manual_dir: str | None = None) -> list[str]:
  """WikiText-2 v1 (tokenized release, ``<unk>`` for rare words), one article per document."""
  _check_split(split)
  name = {
    "train": "wiki.train.tokens",
    "validation": "wiki.valid.tokens",
    "test": "wiki.test.tokens",
  }[split]
  with open(corpus_file("wikitext-2", name, manual_dir), encoding="utf-8") as f:
    return wikitext_documents(f.readlines())


def wikitext2_raw(split: str, manual_dir: str | None = None) -> list[str]:
  """WikiText-2 raw. Only validation and test exist locally: the paper's CPU-scale study
  fine-tunes on ``validation`` and tests on ``test``; ``train`` raises with that advice."""
  _check_split(split)
  if split == "train":
    raise FileNotFoundError(
      "wikitext-2-raw has no local train split (wiki.train.raw is not in the data folder);"
      " use split 'validation' for training, or corpus 'wikitext2' (tokenized) train."
    )
  name = {"validation": "wiki.valid.raw", "test": "wiki.test.raw"}[split]
  with open(corpus_file("wikitext-2-raw", name, manual_dir), encoding="utf-8") as f:
    return wikitext_documents(f.readlines())


def wikitext2_raw_carved(split: str, manual_dir: str | None = None) -> list[str]:
  """WikiText-2 raw for fine-tuning with only the local validation/test files (the paper
  fine-tunes on WikiText-2 and tests on its test split): ``train`` = the validation file's
  articles except every 10th, ``validation`` = every 10th (for best-checkpoint selection),
  ``test`` = the test file, untouched."""
  _check_split(split)
  if split == "test":
    return wikitext2_raw("test", manual_dir)
  articles = wikitext2_raw("validation", manual_dir)
  keep_for_validation = split == "validation"
  return [a for i, a in enumerate(articles) if (i % 10 == 9) == keep_for_validation]


def ptb(split: str, manual_dir: str | None = None) -> list[str]:
  """Penn Treebank (Mikolov): one sentence per line, each line a document."""
  _check_split(split)
  name = {"train": "ptb.train.txt", "validation": "ptb.valid.txt", "test": "ptb.test.txt"}[split]
  with open(corpus_file("ptb", name, manual_dir), encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip()]


def ag_news_split_of(title: str, description: str) -> str:
  """Deterministic 80/10/10 carve-out of AG News' ``test.csv`` (the only local file):
  a row's split is fixed by the SHA-256 of its text, so it never depends on row order."""
  bucket = hashlib.sha256(f"{title}\n{description}".encode()).digest()[0] % 10
  return "train" if bucket < 8 else ("validation" if bucket == 8 else "test")


def ag_news_text(title: str, description: str) -> str:
  """One AG News document: ``"title. description"``, with the CSV's escaped ``\\n`` line
  breaks restored (the direct reader and the TFDS source both build documents this way)."""
  return f"{title.strip()}. {description.strip()}".replace("\\n", "\n")


AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")  # classes.txt, labels 1-4.


def ag_news_examples(split: str, manual_dir: str | None = None) -> list[tuple[str, int]]:
  """``(text, label)`` pairs of AG News: ``"title. description"`` and the 0-based index into
  :data:`AG_NEWS_CLASSES`, from ``test.csv`` split by :func:`ag_news_split_of` (train.csv is
  not available offline)."""
  _check_split(split)
  examples = []
  with open(corpus_file("ag_news", "test.csv", manual_dir), encoding="utf-8", newline="") as f:
    for row in csv.reader(f):
      if len(row) != 3:
        raise ValueError(f"ag_news/test.csv: expected 3 columns, got {len(row)}: {row[:2]}")
      label, title, description = row
      if ag_news_split_of(title, description) == split:
        examples.append((ag_news_text(title, description), int(label) - 1))
  return examples


def ag_news(split: str, manual_dir: str | None = None) -> list[str]:
  """AG News articles (the texts of :func:`ag_news_examples`) as documents."""
  return [text for text, _ in ag_news_examples(split, manual_dir)]


def sst2_examples(split: str, manual_dir: str | None = None) -> list[tuple[str, int]]:
  """``(sentence, label)`` pairs of SST-2 (1 = positive), lower-cased and PTB-tokenized as in
  GLUE: ``train`` / ``validation`` = GLUE train re-split (train.tsv / dev.tsv), ``test`` =
  GLUE's labelled validation set (test.tsv); see the data folder's SOURCE.md."""
  _check_split(split)
  name = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}[split]
  path = corpus_file("sst2", name, manual_dir)
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    if reader.fieldnames != ["sentence", "label"]:
      raise ValueError(
        f"{path}: expected the header 'sentence<TAB>label', got {reader.fieldnames}."
      )
    return [(row["sentence"].strip(), int(row["label"])) for row in reader]


LOCAL_PREFIX = "files:"


def local_files(pattern: str, split: str, text_field: str = "text") -> list[str]:
  """Users' own data: the files matching ``pattern`` with ``{split}`` filled in (a glob).

  By extension: ``.txt`` -- each file is one document; ``.jsonl`` -- one document per line,
  the ``text_field`` of each JSON object; ``.csv`` -- a header row, then one document per
  row, the ``text_field`` column. Files are read in sorted order.
  """
  _check_split(split)
  files = sorted(glob.glob(pattern.format(split=split)))
  if not files:
    raise FileNotFoundError(
      f"no file matches {pattern.format(split=split)!r} (corpus "
      f"pattern {pattern!r}, split {split!r})."
    )
  documents = []
  for path in files:
    extension = os.path.splitext(path)[1]
    with open(path, encoding="utf-8", newline="" if extension == ".csv" else None) as f:
      if extension in (".txt", ".text"):
        documents.append(f.read())
      elif extension == ".jsonl":
        for number, line in enumerate(f, 1):
          if line.strip():
            record = json.loads(line)
            if text_field not in record:
              raise ValueError(f"{path}:{number}: no field {text_field!r} (data.text_field).")
            documents.append(record[text_field])
      elif extension == ".csv":
        reader = csv.DictReader(f)
        if text_field not in (reader.fieldnames or []):
          raise ValueError(
            f"{path}: no column {text_field!r} (data.text_field) in the header {reader.fieldnames}."
          )
        documents += [row[text_field] for row in reader]
      else:
        raise ValueError(f"{path}: unsupported extension {extension!r} (.txt, .jsonl, .csv).")
  return [d for d in documents if d.strip()]


READERS: dict[str, Callable[..., list[str]]] = {
  "tiny_shakespeare": tiny_shakespeare,
  "wikitext2": wikitext2,
  "wikitext2_raw": wikitext2_raw,
  "wikitext2_raw_carved": wikitext2_raw_carved,
  "ptb": ptb,
  "ag_news": ag_news,
}


def read_documents(
  corpus: str, split: str, manual_dir: str | None = None, text_field: str = "text"
) -> list[str]:
  """Documents of a named corpus, or of local files with ``corpus='files:<pattern>'``."""
  if corpus.startswith(LOCAL_PREFIX):
    documents = local_files(corpus[len(LOCAL_PREFIX) :], split, text_field)
  elif corpus not in READERS:
    raise ValueError(
      f"unknown corpus {corpus!r}; known: {sorted(READERS)} or "
      f"'{LOCAL_PREFIX}<pattern with {{split}}>'."
    )
  else:
    documents = READERS[corpus](split, manual_dir)
  if not documents:
    raise ValueError(f"corpus {corpus!r} split {split!r} is empty.")
  return documents
