"""Data: where corpora live (``paths``), reading them (``corpora``: the upstream files directly;
``tfds_builders``: TensorFlow Datasets built from the same files or downloads), tokenizers
(``tokenizer``) and the packed, resumable batch iterators (``input_pipeline``).

:func:`read_split` is the front door: the documents of one split of a run's ``config.data``,
from whichever source it names.
"""

from __future__ import annotations

from emo_jax.data import corpora


def read_split(data_config, split: str) -> list[str]:
  """The documents of one split of a run's ``config.data``: upstream files or TFDS.

  ``data.corpus`` may join corpora with ``+`` (``'wikitext2+ptb'``): their documents are
  concatenated in that order (the training iterator shuffles blocks anyway).
  """
  manual_dir = data_config.manual_dir or None
  if data_config.source not in ("files", "tfds"):
    raise ValueError(f"data.source must be 'files' or 'tfds', got {data_config.source!r}.")
  documents = []
  for corpus in data_config.corpus.split("+"):
    if data_config.source == "tfds":
      from emo_jax.data import tfds_builders  # Imports TF.

      documents += tfds_builders.load_documents(
        corpus, split, data_config.tfds_dir or None, manual_dir
      )
    else:
      documents += corpora.read_documents(corpus, split, manual_dir, data_config.text_field)
  return documents
