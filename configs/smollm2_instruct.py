"""Instruction tuning with EMO (the official code's third scenario) on SmolLM2-135M.

Data: the local Alpaca sample (``alpaca/alpaca_5000.json``, carved 90/5/5 by a hash of each
record's instruction and input; empty outputs dropped; ``emo_jax.data.instructions``). Each
record is SmolLM2's chat template (one user turn: the instruction, then the input after a blank
line) + the response + EOS (``<|im_end|>``); the loss is on the response and the EOS only, and
examples are packed into rows of 512 positions whose attention never crosses an example.
``--config.data.prompt_template=alpaca`` uses Stanford Alpaca's prompt instead.

Objective: the official instruction-tuning loss, its "emo 1 adaptive" variant -- the cost is
the *current* head under stop-gradient (``loss.cost_source='adaptive'``), the ``gt_q`` trick
(``loss.detach_target_prob=True``: DEMD' = DEMD + sg(p_t) in the weight), the weighting
½[CE + sg(CE/DEMD)·DEMD]. ``--config.loss.name=mle`` (or ``mixce`` / ``tailr``) switches it.

LoRA by default: rank 16, α 32 on every projection of every layer (attention and SwiGLU), the
base frozen; ``--config.lora.rank=0`` is full fine-tuning. The learning rate (3e-4, the
SmolLM2 continual fine-tuning probe's best) has not been probed for LoRA or for instruction
data.

Sized for a 2-core CPU: 4 rows of 512 positions a step (about 2,000 positions, as the LM
fine-tuning's 8 x 256), 60 steps, validation (response-token perplexity) every 10 steps on
the first 32 validation rows, the best checkpoint merged and exported. ``--mode eval`` scores
the held-out test instructions (``emo_jax.evaluate.evaluate_instructions``).
"""

from configs import default, smollm2_finetune


def get_config(variant: str = ""):
  config = smollm2_finetune.get_config()
  config.data.corpus = "alpaca"
  config.data.prompt_template = "chat"
  config.data.block_size = 512
  config.data.max_eval_blocks = 32

  config.loss.name = "emo"
  config.loss.weighting = "mle"
  config.loss.cost_source = "adaptive"
  config.loss.detach_target_prob = True
  config.loss.max_weight = None

  config.lora.rank = 16
  config.lora.alpha = 32.0
  config.lora.dropout = 0.05
  config.lora.targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"

  config.train.batch_size = 4
  config.train.num_steps = 60
  config.train.log_every = 5
  config.train.eval_every = 10
  config.train.save_every = 10
  config.train.num_samples = 3
  config.train.sample_tokens = 64
  config.train.compare_with_base = True

  # --mode eval: every held-out test instruction (245), responses up to EOS or 128 tokens,
  # sampled (unbiased) and greedy; mean DEMD under the base's head for every objective.
  config.eval.split = "test"
  config.eval.num_prompts = 500
  config.eval.max_new_tokens = 128
  config.eval.batch_size = 32
  config.eval.cost_model = "smollm2-135m"
  config = default.sized(config, variant)
  if variant == "smoke":
    # A chat prompt alone is ~40 tokens (SmolLM2's default system turn included): the smoke
    # rows must still hold whole examples.
    config.data.block_size = 160
  return config
