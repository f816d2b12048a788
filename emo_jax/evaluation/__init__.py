"""Evaluation pieces ``emo_jax.evaluate`` (``--mode eval`` / ``--mode score``) puts together:
the MAUVE prompt sets (``prompts``), token-level measures (``token_metrics``: perplexity,
distribution measures), text measures (``text_metrics``: MAUVE, ROUGE, repetition) and MAUVE's
featurizers (``featurizers``)."""
