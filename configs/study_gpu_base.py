"""Study on an accelerator: a larger MLE base model (issue #8's GPU table).

Same data, block size, batch and single epoch as ``configs/study_base.py``; only the size
changes: GPT-2 small (12 layers x 768, 124M parameters, the paper's architecture) with
bfloat16 activations (parameters, optimizer state and losses stay float32).
``experiments/study_gpu.py`` runs it, then the fine-tuning grid, in one process.
"""

from configs import default, study_base


def get_config(variant: str = ""):
  config = study_base.get_config()
  config.model.preset = "gpt2"
  config.model.dtype = "bfloat16"
  # GPT-2 small's usual peak rate; study_base's 1e-3 was chosen for the 16M CPU model.
  config.optim.learning_rate = 6e-4
  # A full state is 1.5 GB; the 875-step epoch takes well under a minute on one GPU, so only
  # the best-validation and final checkpoints are written.
  config.train.save_every = 1000
  return default.sized(config, variant)
