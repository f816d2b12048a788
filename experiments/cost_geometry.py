"""Does the cost geometry reward spreading mass? DEMD of the base model vs of the uniform
distribution, on each study corpus's training text (issue #8's diagnosis).

    EMO_JAX_DATA=../shared/data python experiments/cost_geometry.py [--blocks 32]

For a one-hot target ``t`` the uniform distribution's DEMD is ``1 - mean_i(ê_i)·ê_t``. Where
it is *below* the base model's own DEMD, DEMD's gradient, on average, points towards
spreading probability over the vocabulary rather than towards the target, and EMO's weight
``CE/DEMD`` (≈ 10 when the base predicts a corpus badly) makes that term dominate.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

import study  # The study's corpora and layout (this script's folder is on sys.path).

sys.path.insert(0, study.REPO)

from configs import study_finetune
from emo_jax import data as data_lib
from emo_jax import losses, models
from emo_jax.data import input_pipeline
from emo_jax.data.tokenizer import tokenizer_for_model


def cost_terms(model, params, blocks) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mean ``(CE, DEMD, uniform DEMD)`` of ``model`` over next-token targets of ``blocks``
  ``[B, L + 1]``, the cost embeddings being the model's own head (EMO's frozen-head default).
  Uniform DEMD is ``1 - mean_i(ê_i)·ê_t``: DEMD of equal logits, in closed form."""
  head = models.output_embeddings(model, params)  # [V, d]
  unit = losses.normalize_cost_embeddings(head)  # [V, d]
  mean_unit = jnp.mean(unit, axis=0)  # [d]
  logits = model.apply({"params": params}, blocks[:, :-1])  # [B, L, V]
  targets = blocks[:, 1:]  # [B, L]
  return (
    jnp.mean(losses.cross_entropy(logits, targets)),
    jnp.mean(losses.demd(logits, targets, head)),
    jnp.mean(1.0 - unit[targets] @ mean_unit),
  )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--base",
    default=os.path.join(study.REPO, "workdirs", "study", "base", "hf_export"),
    help="any model source: an HF directory, a .gguf, 'smollm2-135m'",
  )
  parser.add_argument("--blocks", type=int, default=32, help="random training blocks a corpus")
  args = parser.parse_args(argv)
  model, params = models.from_pretrained(args.base)
  tokenizer = tokenizer_for_model(args.base)
  # params as an argument, not a closure: no [V, d] constant folded into the program.
  terms = jax.jit(lambda params, blocks: cost_terms(model, params, blocks))

  print("| corpus | base CE | base DEMD | uniform DEMD | uniform CE |\n|---|---:|---:|---:|---:|")
  for corpus in study.CORPORA:
    config = study_finetune.get_config()
    config.data.corpus = corpus
    blocks = input_pipeline.tokenize_and_pack(
      data_lib.read_split(config.data, "train"), tokenizer, config.data.block_size, name=corpus
    )
    chosen = np.random.default_rng(0).choice(len(blocks), args.blocks, replace=False)
    ce, demd, uniform = terms(params, jnp.asarray(blocks[np.sort(chosen)]))
    print(f"| {corpus} | {ce:.2f} | {demd:.3f} | {uniform:.3f} | {np.log(model.vocab_size):.2f} |")


if __name__ == "__main__":
  main()
