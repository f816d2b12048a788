"""Study v2 (issue #17): one grid point of the SmolLM2-135M continual fine-tuning study.

``configs/smollm2_finetune.py`` (the paper's recipe on SmolLM2: block 256, the frozen
pretrained head as the cost, EMO from step 0, lr 3e-4 from the MLE probe) at the study's
budget, with what every point's evaluation needs. ``experiments/study.py --setting smollm2``
sets the corpus, the seed and the objective; everything else is identical across objectives.

Budget: 60 steps of 8 x 256 tokens (123k tokens; 16 min with its validations at the measured
~13 s a step on 2 cores), validation every 10 steps on 32 blocks, the best checkpoint kept and exported (the
few-shot scorer reads the export). Evaluation: test perplexity on the first 64 blocks of 256
tokens (16k tokens), 500 MAUVE prompts (fewer where a corpus has fewer), 80 new tokens each,
32 rows per call (decoding streams the weights once per step for the whole batch: 500 prompts
took 205 s, 195 tokens/s, on 2 cores; each row's sample depends only on its index, not on the
batch size).
"""

from configs import default, smollm2_finetune


def get_config(variant: str = ""):
  config = smollm2_finetune.get_config()
  config.train.num_steps = 60
  config.train.log_every = 5
  config.train.eval_every = 10
  config.train.save_every = 10
  config.train.num_samples = 0  # The evaluation's generations replace the demo samples.
  config.train.compare_with_base = False  # The base has its own row in the report.
  config.train.export_hf = True

  config.eval.split = "test"
  config.eval.max_blocks = 64
  config.eval.cost_model = "smollm2-135m"  # Every row's mean DEMD under the training cost.
  config.eval.num_prompts = 500
  config.eval.batch_size = 32
  return default.sized(config, variant)
