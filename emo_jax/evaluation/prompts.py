"""MAUVE prompt sets: (prefix, human continuation) pairs cut from a corpus' test documents.

The paper's protocol: take documents of the test split, drop short ones (< 100 characters)
and WikiText headings (lines starting with ``=``), split each kept document into a prefix of
``prefix_words`` whitespace words and the human continuation of the next
``continuation_words`` words, and keep the first ``num_prompts``. The model continues each
prefix (the paper forces 80 new tokens) and MAUVE compares its continuations with the human
ones. Lengths per corpus follow the paper's code: WikiText 20/80, PTB 5/25, AG News 10/30,
WritingPrompts 35/80, WebText 20/80; Tiny Shakespeare (not in the paper) uses 10/30.

"Enough words": a document needs ``prefix_words`` plus at least half of
``continuation_words`` words (``min_continuation_words``), which keeps 1547 WikiText-2 test
paragraphs (1085 with the full 80) and 2396 PTB sentences.
"""

from __future__ import annotations

import dataclasses

from emo_jax.data import corpora


@dataclasses.dataclass(frozen=True)
class PromptLengths:
  prefix_words: int
  continuation_words: int


PROMPT_LENGTHS: dict[str, PromptLengths] = {
  "wikitext2": PromptLengths(20, 80),
  "wikitext2_raw": PromptLengths(20, 80),
  "wikitext2_raw_carved": PromptLengths(20, 80),
  "wikitext103": PromptLengths(20, 80),
  "ptb": PromptLengths(5, 25),
  "ag_news": PromptLengths(10, 30),
  "writingprompts": PromptLengths(35, 80),
  "webtext": PromptLengths(20, 80),
  "tiny_shakespeare": PromptLengths(10, 30),
}


# Users' own corpora (``files:...``) unless eval.prefix_words / continuation_words say
# otherwise: WebText's lengths, the paper's open-domain setting.
DEFAULT_LENGTHS = PromptLengths(20, 80)


def prompt_lengths(
  corpus: str, prefix_words: int | None = None, continuation_words: int | None = None
) -> PromptLengths:
  """The lengths for ``corpus`` (:data:`PROMPT_LENGTHS`, else :data:`DEFAULT_LENGTHS`), with
  either number replaced where given."""
  known = PROMPT_LENGTHS.get(corpus)
  if (
    known is None
    and not corpus.startswith(corpora.LOCAL_PREFIX)
    and (prefix_words is None or continuation_words is None)
  ):
    raise ValueError(
      f"no prompt lengths known for corpus {corpus!r}: set "
      "eval.prefix_words and eval.continuation_words (known corpora: "
      f"{sorted(PROMPT_LENGTHS)})."
    )
  base = known or DEFAULT_LENGTHS
  return PromptLengths(
    base.prefix_words if prefix_words is None else prefix_words,
    base.continuation_words if continuation_words is None else continuation_words,
  )


@dataclasses.dataclass(frozen=True)
class Prompt:
  prefix: str
  continuation: str  # The human continuation.


def candidate_texts(corpus: str, documents: list[str], lengths: PromptLengths) -> list[str]:
  """The units prompts are cut from: WikiText paragraphs without headings; Tiny
  Shakespeare's single test document as consecutive windows of prefix + continuation words;
  users' own files (``files:...``, where a .txt file is one long document) each document as
  consecutive windows, its last partial window included; otherwise each document."""
  window = lengths.prefix_words + lengths.continuation_words
  if corpus.startswith("wikitext"):
    return [
      line.strip()
      for doc in documents
      for line in doc.split("\n")
      if line.strip() and not line.strip().startswith("=")
    ]
  if corpus == "tiny_shakespeare":
    words = " ".join(documents).split()
    return [" ".join(words[i : i + window]) for i in range(0, len(words) - window + 1, window)]
  if corpus.startswith(corpora.LOCAL_PREFIX):
    windows = []
    for document in documents:
      words = document.split()
      windows += [" ".join(words[i : i + window]) for i in range(0, len(words), window)]
    return windows
  return documents


def make_prompts(
  corpus: str,
  documents: list[str],
  num_prompts: int = 0,
  *,
  lengths: PromptLengths | None = None,
  min_chars: int = 100,
  min_continuation_words: int | None = None,
) -> list[Prompt]:
  """The first ``num_prompts`` (0 = all) prompts of ``documents`` (see the module doc)."""
  if lengths is None:
    lengths = prompt_lengths(corpus)
  if min_continuation_words is None:
    min_continuation_words = -(-lengths.continuation_words // 2)
  prompts = []
  for text in candidate_texts(corpus, documents, lengths):
    words = text.split()
    if len(text) < min_chars or len(words) < lengths.prefix_words + min_continuation_words:
      continue
    end = lengths.prefix_words + lengths.continuation_words
    prompts.append(
      Prompt(" ".join(words[: lengths.prefix_words]), " ".join(words[lengths.prefix_words : end]))
    )
    if num_prompts and len(prompts) == num_prompts:
      break
  if not prompts:
    raise ValueError(
      f"no document of {corpus!r} is long enough for a prompt "
      f"({lengths.prefix_words}+{min_continuation_words} words, "
      f"{min_chars} characters)."
    )
  return prompts


def load_prompts(
  corpus: str, split: str = "test", num_prompts: int = 0, manual_dir: str | None = None, **kwargs
) -> list[Prompt]:
  """:func:`make_prompts` over ``corpus``/``split`` read by :mod:`emo_jax.data.corpora`."""
  return make_prompts(
    corpus, corpora.read_documents(corpus, split, manual_dir), num_prompts, **kwargs
  )
