"""Few-shot classification by language-model loss (OpenICL's perplexity inferencer).

A prompt is ``k`` labelled demonstrations and the query, each rendered by the task's template,
joined by blank lines; every label is verbalised (``" positive"``) and the label whose
continuation has the lowest mean token loss after the prompt is the prediction::

    Review: a gorgeous , witty , seductive movie .        <- demonstration
    Sentiment: positive
                                                          <- (k demonstrations)
    Review: the plot is nothing but boilerplate clichés . <- query
    Sentiment: {negative | positive}                      <- scored continuations

The demonstrations are one fixed set per task (balanced over the labels, drawn with
``demonstration_seed`` from the train split, in a shuffled order), the same for every query
and every model, so models are compared on identical prompts. That makes the demonstrations a
shared prefix: :func:`label_losses` runs it through the model once, keeps its KV cache, and
per batch of queries runs only the query tokens and then all labels' tokens at once on copies
of that cache. The result equals scoring every ``prefix + query + label`` sequence from scratch
(``tests/test_fewshot.py`` checks it against that reference for both families).

Accuracy is reported with a Wilson 95% interval and two models are compared on the same
queries with an exact McNemar test (``scipy.stats.binomtest`` on the discordant pairs).

Beside that score (the protocol's), :func:`evaluate_task` reports a contextually calibrated
one (Zhao et al. 2021, "Calibrate Before Use"): the same prompt with content-free queries
(:data:`CONTENT_FREE`) measures the label prior the prompt and model carry, and each query's
label probabilities are divided by it (:func:`calibrated_predictions`). A model whose
accuracy falls because one label takes most queries gets much of it back; one that lost the
task does not.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emo_jax.data import corpora
from emo_jax.models import causal_lm


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  template: str  # With ``{text}``; the label word follows it after a space.
  label_words: tuple[str, ...]  # Index = label.
  read: Callable[..., list[tuple[str, int]]]  # (split, manual_dir) -> [(text, label)].
  min_demonstration_words: int = 0  # Demonstrations: whole sentences, not GLUE's phrases.

  def render(self, text: str, label: int | None = None) -> str:
    prompt = self.template.format(text=text)
    return prompt if label is None else f"{prompt} {self.label_words[label]}"


TASKS = {
  "sst2": Task(
    "sst2",
    "Review: {text}\nSentiment:",
    ("negative", "positive"),
    corpora.sst2_examples,
    min_demonstration_words=8,
  ),
  # Chosen on the carved validation split (SmolLM2-135M base, the default 8 demonstrations,
  # 160 queries) among three: "Article: ... Topic: world|sports|business|technology" 0.288
  # and its capitalised words 0.206 (both predicted "business" for 92-100% of queries),
  # this one 0.519.
  "ag_news": Task(
    "ag_news",
    "News: {text}\nCategory:",
    ("World", "Sports", "Business", "Science"),
    corpora.ag_news_examples,
  ),
}
SEPARATOR = "\n\n"
# Zhao et al. (2021)'s content-free inputs: the label prior is their mean label distribution.
CONTENT_FREE = ("N/A", "", "[MASK]")


def choose_demonstrations(
  task: Task, pool: Sequence[tuple[str, int]], k: int, seed: int = 0
) -> list[tuple[str, int]]:
  """``k`` demonstrations from ``pool``, as balanced over the labels as ``k`` allows, in a
  seeded random order (a label-sorted prompt would bias the last label)."""
  rng = np.random.default_rng(seed)
  labels = len(task.label_words)
  eligible = [
    [
      i
      for i, (text, label) in enumerate(pool)
      if label == wanted and len(text.split()) >= task.min_demonstration_words
    ]
    for wanted in range(labels)
  ]
  chosen = []
  for label in range(labels):
    count = k // labels + (label < k % labels)
    if len(eligible[label]) < count:
      raise ValueError(
        f"{task.name}: only {len(eligible[label])} eligible demonstrations of "
        f"label {task.label_words[label]!r}, {count} needed."
      )
    chosen += [pool[i] for i in rng.choice(eligible[label], count, replace=False)]
  return [chosen[i] for i in rng.permutation(len(chosen))]


def demonstration_prefix(task: Task, demonstrations: Sequence[tuple[str, int]]) -> str:
  """The text before each query: the rendered demonstrations joined by the separator."""
  return SEPARATOR.join(task.render(text, label) for text, label in demonstrations)


def query_text(task: Task, text: str) -> str:
  """What follows the prefix: the separator, then the query's template without a label.

  The pieces meet where a byte-level BPE pre-tokenizer always splits (a label word, then
  whitespace; a colon, then " label"), so tokenizing prefix, query and label apart gives
  exactly the ids of the whole prompt (``tests/test_fewshot.py`` checks it)."""
  return SEPARATOR + task.render(text)


# ----------------------------------------------------------------------------------------
# Scoring with a shared prefix.
# ----------------------------------------------------------------------------------------


def _decode(model, params, cache, ids, key_mask, positions, last_only: bool = False):
  """One decode call: float32 logits (of the last position only, if ``last_only``) and the
  updated cache. The head multiplies only the positions whose logits are used."""

  def hidden_and_head(module):
    hidden = module.hidden_states(ids, key_mask, positions, True, True)  # [B, T, d]
    return hidden, module.output_embeddings()

  (hidden, head), state = model.apply(
    {"params": params, "cache": cache}, method=hidden_and_head, mutable=["cache"]
  )
  if last_only:
    hidden = hidden[:, -1:]
  return causal_lm.head_logits(hidden, head), state["cache"]


@functools.partial(jax.jit, static_argnames=("model", "total_length"))
def prefill(model, params, prefix_ids, *, total_length: int):
  """The KV cache (batch 1) after ``prefix_ids [P]``, sized for ``total_length`` tokens."""
  cache = causal_lm.empty_cache(model, 1, total_length)
  prefix_length = prefix_ids.shape[0]
  key_mask = jnp.ones((1, total_length), jnp.int32)  # Unfilled slots: the cache masks them.
  _, cache = _decode(
    model,
    params,
    cache,
    prefix_ids[None],
    key_mask,
    jnp.arange(prefix_length)[None],
    last_only=True,
  )
  return cache


@functools.partial(jax.jit, static_argnames=("model", "prefix_length", "total_length"))
def label_losses(
  model,
  params,
  prefix_cache,
  query_ids,
  query_mask,
  label_ids,
  label_mask,
  *,
  prefix_length: int,
  total_length: int,
) -> jax.Array:
  """``[B, L]`` mean token loss of each label's tokens after ``prefix + query``.

  Args:
    model, params: a causal LM (:class:`emo_jax.models.CausalLM`) and its parameters.
    prefix_cache: :func:`prefill`'s cache of the shared prefix (``prefix_length`` tokens,
      at least one), sized ``total_length >= prefix_length + Q + T`` (one cache serves
      batches of shorter queries too).
    query_ids, query_mask: ``[B, Q]`` queries, left-padded (1 = real token, at least one).
    label_ids, label_mask: ``[L, T]`` label continuations, right-padded.
  """
  batch, query_length = query_ids.shape
  labels, label_length = label_ids.shape
  cache = causal_lm.repeat_cache_rows(prefix_cache, batch)
  # Key slots: prefix (real), query (left padding masked), labels (real once written), and
  # the slots this batch does not reach.
  unused = total_length - prefix_length - query_length - label_length
  key_mask = jnp.concatenate(
    [
      jnp.ones((batch, prefix_length), jnp.int32),
      query_mask,
      jnp.ones((batch, label_length), jnp.int32),
      jnp.zeros((batch, unused), jnp.int32),
    ],
    axis=1,
  )
  query_positions = prefix_length + jnp.maximum(jnp.cumsum(query_mask, axis=1) - 1, 0)
  last_logits, cache = _decode(
    model, params, cache, query_ids, key_mask, query_positions, last_only=True
  )  # [B, 1, V]
  # Label token 0 is predicted by the query's last position, token j by label token j - 1:
  # only labels' first T - 1 tokens go through the model (none for one-token labels).
  predicting = jnp.repeat(last_logits, labels, axis=0)  # [B*L, 1, V]
  tokens = jnp.tile(label_ids, (batch, 1))  # [B*L, T]
  if label_length > 1:
    start = query_positions[:, -1] + 1  # [B]
    positions = jnp.repeat(start, labels)[:, None] + jnp.arange(label_length - 1)
    label_logits, _ = _decode(
      model,
      params,
      causal_lm.repeat_cache_rows(cache, labels),  # Row b * L + l.
      tokens[:, :-1],
      jnp.repeat(key_mask, labels, axis=0),
      positions,
    )  # [B*L, T-1, V]
    predicting = jnp.concatenate([predicting, label_logits], axis=1)  # [B*L, T, V]
  log_probs = jax.nn.log_softmax(predicting, axis=-1)  # [B*L, T, V]
  token_loss = -jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]  # [B*L, T]
  weights = jnp.tile(label_mask, (batch, 1)).astype(jnp.float32)
  mean_loss = jnp.sum(token_loss * weights, axis=1) / jnp.sum(weights, axis=1)  # [B*L]
  return mean_loss.reshape(batch, labels)


def classify(
  model,
  params,
  tokenizer,
  task: Task,
  demonstrations: Sequence[tuple[str, int]],
  queries: Sequence[str],
  batch_size: int = 8,
) -> np.ndarray:
  """``[N, L]`` label losses of every query; the prediction is the row's argmin."""
  return label_losses_of_ids(
    model,
    params,
    tokenizer.encode(demonstration_prefix(task, demonstrations)),
    tokenizer.encode_batch([query_text(task, q) for q in queries]),
    tokenizer.encode_batch([" " + word for word in task.label_words]),
    batch_size=batch_size,
    pad_id=tokenizer.pad_id or 0,
    name=task.name,
  )


def label_losses_of_ids(
  model,
  params,
  prefix_ids: Sequence[int],
  query_ids: Sequence[Sequence[int]],
  label_ids: Sequence[Sequence[int]],
  *,
  batch_size: int = 8,
  pad_id: int = 0,
  name: str = "few-shot",
) -> np.ndarray:
  """:func:`label_losses` over any number of tokenized queries, ``batch_size`` at a time."""
  if not prefix_ids:
    raise ValueError("few-shot scoring needs at least one prefix token (k >= 1).")
  label_length = max(len(t) for t in label_ids)
  longest_query = _query_bucket(max(len(q) for q in query_ids))
  total = len(prefix_ids) + longest_query + label_length
  if total > model.max_length:
    raise ValueError(
      f"{name}: {len(prefix_ids)} prefix + {longest_query} query + "
      f"{label_length} label tokens exceed the model's max_length "
      f"({model.max_length}); use fewer demonstrations."
    )
  labels = np.zeros((len(label_ids), label_length), np.int32)
  label_mask = np.zeros_like(labels)
  for row, ids in enumerate(label_ids):
    labels[row, : len(ids)], label_mask[row, : len(ids)] = ids, 1
  cache = prefill(model, params, jnp.asarray(prefix_ids, jnp.int32), total_length=total)
  # Queries in order of length, each batch padded to its own bucket: few compiled shapes, and
  # short queries do not pay for the longest one.
  order = np.argsort([len(q) for q in query_ids], kind="stable")
  losses = np.zeros((len(query_ids), len(label_ids)), np.float32)
  for start in range(0, len(order), batch_size):
    rows = order[start : start + batch_size]
    chunk = [query_ids[i] for i in rows]
    chunk += [chunk[-1]] * (batch_size - len(rows))  # Padding rows keep the batch shape.
    query_length = _query_bucket(max(len(q) for q in chunk))
    ids = np.full((batch_size, query_length), pad_id, np.int32)
    mask = np.zeros_like(ids)
    for row, query in enumerate(chunk):
      ids[row, query_length - len(query) :], mask[row, query_length - len(query) :] = query, 1
    out = label_losses(
      model,
      params,
      cache,
      ids,
      mask,
      labels,
      label_mask,
      prefix_length=len(prefix_ids),
      total_length=total,
    )
    losses[rows] = np.asarray(out)[: len(rows)]
  return losses


def _query_bucket(length: int) -> int:
  """Padded query length: a power of two from 16 (at most five shapes up to 256 tokens)."""
  return max(16, 1 << (length - 1).bit_length())


# ----------------------------------------------------------------------------------------
# Statistics.
# ----------------------------------------------------------------------------------------


def accuracy_with_interval(correct: Sequence[bool], confidence: float = 0.95) -> dict[str, float]:
  """Accuracy and its Wilson score interval."""
  from scipy import stats

  correct = np.asarray(correct, bool)
  result = stats.binomtest(int(correct.sum()), len(correct))
  interval = result.proportion_ci(confidence_level=confidence, method="wilson")
  return {
    "accuracy": float(correct.mean()),
    "low": float(interval.low),
    "high": float(interval.high),
    "n": len(correct),
  }


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, float]:
  """Exact two-sided McNemar test of two classifiers on the same queries: ``a_only`` /
  ``b_only`` count the queries only A / only B gets right."""
  from scipy import stats

  a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
  if a.shape != b.shape:
    raise ValueError(f"McNemar needs the same queries: {a.shape} vs {b.shape}.")
  a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
  discordant = a_only + b_only
  p_value = (
    1.0 if discordant == 0 else float(stats.binomtest(min(a_only, b_only), discordant, 0.5).pvalue)
  )
  return {"a_only": a_only, "b_only": b_only, "p_value": p_value}


@dataclasses.dataclass(frozen=True)
class TaskData:
  """A task's fixed prompt material: read once, scored for any number of models."""

  task: Task
  k: int
  demonstration_seed: int
  demonstrations: list[tuple[str, int]]
  queries: list[tuple[str, int]]


def load_task(
  task_name: str,
  *,
  k: int = 8,
  demonstration_seed: int = 0,
  max_queries: int = 0,
  manual_dir: str | None = None,
) -> TaskData:
  """Demonstrations from the train split; queries the first ``max_queries`` (0 = all) of
  the test split."""
  task = TASKS[task_name]
  demonstrations = choose_demonstrations(
    task, task.read("train", manual_dir), k, demonstration_seed
  )
  queries = task.read("test", manual_dir)
  return TaskData(
    task, k, demonstration_seed, demonstrations, queries[:max_queries] if max_queries else queries
  )


def calibrated_predictions(losses, content_free_losses) -> np.ndarray:
  """``[N]`` contextually calibrated predictions (Zhao et al. 2021, their ``W =
  diag(p_cf)^-1``, ``b = 0``).

  A label's probability is ``exp(-loss)`` normalised over the labels; ``p_cf`` is the mean of
  those distributions over the content-free queries, and the prediction is
  ``argmax_l p(l | x) / p_cf(l)``.

  Args:
    losses: ``[N, L]`` label losses of the queries (:func:`classify`).
    content_free_losses: ``[C, L]`` label losses of the content-free queries, same prompt.
  """
  losses, content_free_losses = np.asarray(losses), np.asarray(content_free_losses)
  if losses.shape[1:] != content_free_losses.shape[1:] or content_free_losses.ndim != 2:
    raise ValueError(
      f"label losses {losses.shape} and content-free losses {content_free_losses.shape} "
      "need the same labels."
    )
  from scipy import special

  log_prior = np.log(np.mean(special.softmax(-content_free_losses, axis=-1), axis=0))  # [L]
  return np.argmax(-losses - log_prior, axis=1)


def evaluate_task(model, params, tokenizer, data: TaskData, batch_size: int = 8) -> dict:
  """Accuracy of one model on one task with its interval, the per-query predictions,
  correctness (for paired tests) and label losses, the demonstrations used, and the same
  for the contextually calibrated predictions (``calibrated``, with the content-free
  queries' label losses)."""
  queries = [q for q, _ in data.queries] + list(CONTENT_FREE)
  losses = classify(
    model, params, tokenizer, data.task, data.demonstrations, queries, batch_size
  )  # [N + C, L]
  losses, content_free_losses = losses[: len(data.queries)], losses[len(data.queries) :]
  gold = np.array([label for _, label in data.queries])
  predictions = losses.argmin(axis=1)
  calibrated = calibrated_predictions(losses, content_free_losses)
  return {
    "task": data.task.name,
    "k": data.k,
    "demonstration_seed": data.demonstration_seed,
    **accuracy_with_interval(predictions == gold),
    "predictions": predictions.tolist(),
    "correct": (predictions == gold).tolist(),
    "losses": losses.tolist(),
    "calibrated": {
      **accuracy_with_interval(calibrated == gold),
      "predictions": calibrated.tolist(),
      "correct": (calibrated == gold).tolist(),
      "content_free": list(CONTENT_FREE),
      "content_free_losses": content_free_losses.tolist(),
    },
    "demonstrations": data.demonstrations,
  }
