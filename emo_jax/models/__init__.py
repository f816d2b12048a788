"""Causal LMs behind one protocol (:class:`CausalLM`) and one loader.

* :func:`from_pretrained` -- ``(model, params)`` from a packaged name (``smollm2-135m``), a
  ``.gguf`` file, an HF directory (``gpt2`` or ``llama``) or a hub name;
* :func:`save_pretrained` -- an HF directory transformers loads;
* :func:`from_config` -- a from-scratch model of a family (``gpt2``, ``llama``) and preset.

Families: :mod:`emo_jax.models.gpt2`, :mod:`emo_jax.models.llama`; shared layers in
:mod:`emo_jax.models.layers`.
"""

from emo_jax.models.causal_lm import CausalLM, hidden_states_and_head, output_embeddings
from emo_jax.models.loader import (
  FAMILIES,
  PACKAGED_MODELS,
  build,
  from_config,
  from_model_config,
  from_pretrained,
  pretrained_architecture,
  resolve_source,
  save_pretrained,
)

__all__ = [
  "FAMILIES",
  "PACKAGED_MODELS",
  "CausalLM",
  "build",
  "from_config",
  "from_model_config",
  "from_pretrained",
  "hidden_states_and_head",
  "output_embeddings",
  "pretrained_architecture",
  "resolve_source",
  "save_pretrained",
]
