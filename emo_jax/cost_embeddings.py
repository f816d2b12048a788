"""The ``cost`` variable collection: frozen token embeddings that define EMO's transport cost.

EMO's cost between tokens ``i`` and ``j`` is ``1 - cos(e_i, e_j)`` for fixed embeddings
``E [V, d_c]``. They live in their own Flax collection, ``variables["cost"]["embeddings"]``,
beside ``params``: checkpoints store them, the optimizer never sees them, and gradients are
never taken with respect to them.

Sources:

* ``"frozen_head"`` (the paper's default): a copy of the LM head taken when the pretrained
  model is loaded -- or, when training from scratch, when MLE warm-up ends.
* ``"adaptive"``: no copy; the loss reads the *current* head under stop-gradient (no extra
  memory; the cost drifts with training).
* an explicit ``[V, d_c]`` array, e.g. another model's embeddings (``d_c`` may differ from
  the model width).

Stored embeddings are **row-normalised float32** (``ê_i``): the normalisation is done once
here rather than in every step, and normalising again is a no-op, so the losses accept them
as they are.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from emo_jax import losses
from emo_jax.models import causal_lm

COLLECTION = "cost"
FROZEN_HEAD, ADAPTIVE = "frozen_head", "adaptive"


def head_matrix(model, params) -> jax.Array:
  """The model's ``[V, d]`` output matrix, read through the model (never by path)."""
  return causal_lm.output_embeddings(model, params)


def make_cost_collection(model, params, source: str | np.ndarray | jax.Array) -> dict:
  """``{"cost": {"embeddings": Ê}}`` for a source, or ``{}`` for ``"adaptive"``."""
  if isinstance(source, str):
    if source == ADAPTIVE:
      return {}
    if source != FROZEN_HEAD:
      raise ValueError(
        f"cost embeddings source must be {FROZEN_HEAD!r}, {ADAPTIVE!r} or an array; got {source!r}."
      )
    embeddings = head_matrix(model, params)
  else:
    embeddings = jnp.asarray(source)
  vocab_size = model.vocab_size
  losses.check_cost_embeddings(embeddings, vocab_size)
  return {
    COLLECTION: {
      "embeddings": losses.normalize_cost_embeddings(jax.lax.stop_gradient(embeddings)).astype(
        jnp.float32
      )
    }
  }


def cost_or_head(cost: jax.Array | None, head: jax.Array) -> jax.Array:
  """``cost`` if there is one, else ("adaptive") the current head under stop-gradient."""
  return jax.lax.stop_gradient(head) if cost is None else cost


def resolve(model, variables: dict[str, Any]) -> jax.Array:
  """The cost embeddings a loss should use for ``variables`` (see :func:`cost_or_head`)."""
  if COLLECTION in variables:
    return variables[COLLECTION]["embeddings"]
  return cost_or_head(None, head_matrix(model, variables["params"]))
