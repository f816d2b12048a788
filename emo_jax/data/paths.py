"""Where local corpora live: ``EMO_JAX_DATA`` or an explicit ``manual_dir``, never the repo.

The folder is laid out like the project's ``shared/data``: one sub-folder per corpus with the
original file names (``wikitext-2/wiki.train.tokens``, ``tiny_shakespeare/input.txt``, ...).
"""

from __future__ import annotations

import os

ENV_VAR = "EMO_JAX_DATA"


def configured_root(manual_dir: str | None = None) -> str | None:
  """``manual_dir`` if given, else ``$EMO_JAX_DATA``, else None (readers that can download
  instead, such as the TFDS builders, take None as "online")."""
  return manual_dir or os.environ.get(ENV_VAR) or None


def data_root(manual_dir: str | None = None) -> str:
  """``manual_dir`` if given, else ``$EMO_JAX_DATA``; an error says how to set either."""
  root = configured_root(manual_dir)
  if not root:
    raise FileNotFoundError(
      f"no local data folder: set {ENV_VAR}=<dir laid out like shared/data> or pass "
      "--config.data.manual_dir=<dir>."
    )
  if not os.path.isdir(root):
    raise FileNotFoundError(f"data folder {root!r} (from manual_dir or {ENV_VAR}) does not exist.")
  return root


def corpus_file(corpus: str, filename: str, manual_dir: str | None = None) -> str:
  """Path of one original file of a corpus, checked to exist."""
  path = os.path.join(data_root(manual_dir), corpus, filename)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"missing {path}: expected {corpus}/{filename} under the data "
      f"folder ({ENV_VAR} or data.manual_dir)."
    )
  return path
