"""Study step 2: fine-tune the study's base model on one target corpus (issue #8).

Every run has the same budget, learning rate and data order (seed) whatever the objective;
only ``loss.*`` changes. The cost embeddings are the base model's LM head, frozen at load.
``experiments/study.py`` launches the grid (corpora x objectives x seeds) and evaluates it;
one point by hand:

    EMO_JAX_DATA=../shared/data python main.py --config configs/study_finetune.py \
        --workdir workdirs/study/ag_news/emo/seed0 \
        --config.data.corpus=ag_news --config.loss.name=emo --config.seed=0

Target corpora the base has not seen: ``wikitext2_raw_carved`` (the local WikiText-2 raw
validation file carved 90/10 into train/validation; tested on the test file), ``ag_news``
(test.csv carved 80/10/10) and ``tiny_shakespeare`` (90/5/5).
"""

from configs import default


def get_config(variant: str = ""):
  config = default.get_config()
  config.model.pretrained = "workdirs/study/base/hf_export"  # configs/study_base.py's output.
  config.model.dropout = 0.0

  config.data.corpus = "wikitext2_raw_carved"
  config.data.block_size = 128
  config.data.max_eval_blocks = 0  # The whole validation split.

  config.loss.name = "emo"
  config.loss.weighting = "mle"
  config.loss.max_weight = None  # The published default: no clamp.
  config.loss.cost_source = "frozen_head"
  config.loss.mle_warmup_steps = 0  # The base model's head is the cost from step 0.

  config.optim.learning_rate = 1e-4
  config.optim.schedule = "linear"
  config.optim.warmup_steps = 0
  config.optim.weight_decay = 0.0

  config.train.batch_size = 16
  # Identical budget for every corpus and objective: 100 steps x 16 x 128 tokens = 205k
  # tokens, 0.7-0.9 of an epoch of each target corpus; ~2.6 s a step on 2 CPU cores.
  config.train.num_steps = 100
  config.train.log_every = 10
  config.train.eval_every = 20  # Best-validation checkpoint, as in the paper.
  config.train.save_every = 50
  config.train.num_samples = 0

  config.eval.split = "test"
  config.eval.num_prompts = 1000  # Fewer where the corpus has fewer usable documents.
  config.eval.featurizer = "minilm"
  config.eval.mauve_runs = 5
  config.eval.batch_size = 64
  return default.sized(config, variant)
