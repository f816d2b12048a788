"""Study step 1: the MLE base model that every fine-tuning run starts from (issue #8).

Pretrained GPT-2 weights are not available offline, so the study pretrains its own: GPT-2's
architecture and BPE vocabulary (50257), 4 layers x 256 wide (``small-cpu``, 16M parameters),
trained with plain MLE on WikiText-2 train + PTB train. Its LM head later becomes the frozen
cost embeddings of the EMO runs -- the paper's setting (a pretrained model, then continual
fine-tuning).

    EMO_JAX_DATA=../shared/data python main.py --config configs/study_base.py \
        --workdir workdirs/study/base

The best-validation model lands in ``workdirs/study/base/hf_export``. Interrupting and
re-running the command resumes exactly.
"""

from configs import default


def get_config(variant: str = ""):
  config = default.get_config()
  config.model.preset = "small-cpu"
  config.model.max_length = 256  # Fine-tuning blocks (128) plus room for 80-token samples.
  config.model.dropout = 0.0

  config.data.corpus = "wikitext2+ptb"
  config.data.block_size = 128
  config.data.max_eval_blocks = 512

  config.loss.name = "mle"
  config.loss.mle_warmup_steps = 0

  config.optim.learning_rate = 1e-3
  config.optim.schedule = "cosine"
  config.optim.warmup_steps = 200
  config.optim.weight_decay = 0.01

  config.train.batch_size = 32
  config.train.num_epochs = 1  # 3.54M tokens = 875 steps; measured 5.1-5.4 s a step
  # (760-800 tokens/s) on 2 CPU cores: ~75-80 minutes.
  config.train.log_every = 20
  config.train.eval_every = 200
  config.train.save_every = 100
  config.train.num_samples = 3
  config.train.sample_tokens = 60
  return default.sized(config, variant)
