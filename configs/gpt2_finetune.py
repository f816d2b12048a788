"""The paper's LM fine-tuning recipe: GPT-2 small on WikiText-2 with EMO (Ren et al., 2024).

GPT-2 from an HF directory or hub name (``--config.model.pretrained=/path/to/gpt2``), block
256, batch 32, AdamW (lr 5e-5, no weight decay), linear decay, 3 epochs, best-validation
checkpoint kept; the cost embeddings are the pretrained LM head, frozen at load. Pick the
objective with ``--config.loss.name={mle,emo,mixce,tailr}`` (and the EMO options).

Offline, WikiText-2 comes from ``$EMO_JAX_DATA/wikitext-2`` (the tokenized release; the raw
train file is not available here). Sized for an accelerator: on a 2-core CPU one epoch of
GPT-2 small takes hours.
"""

from configs import default


def get_config(variant: str = ""):
  config = default.get_config()
  config.model.pretrained = "gpt2"  # Hub name (online) or a local HF directory.
  config.model.dropout = 0.1  # GPT-2's own dropout during fine-tuning.
  config.model.dtype = "bfloat16"  # Activations; parameters and loss stay float32.

  config.data.corpus = "wikitext2"
  config.data.block_size = 256
  config.data.max_eval_blocks = 0  # The whole validation split.

  config.loss.name = "emo"
  config.loss.weighting = "mle"  # The published default: ½[CE + sg(CE/DEMD)·DEMD] ...
  config.loss.max_weight = None  # ... without a clamp.
  config.loss.cost_source = "frozen_head"
  config.loss.mle_warmup_steps = 0  # The pretrained head is the cost from step 0.

  config.optim.learning_rate = 5e-5
  config.optim.schedule = "linear"
  config.optim.warmup_steps = 0
  config.optim.weight_decay = 0.0
  config.optim.b2 = 0.999

  config.train.batch_size = 32
  config.train.num_epochs = 3
  config.train.eval_every = 200
  config.train.save_every = 200
  config.train.num_samples = 4
  config.train.sample_tokens = 80
  return default.sized(config, variant)
