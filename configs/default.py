"""The embedded default: a tiny GPT-2 on Tiny Shakespeare, MLE warm-up then EMO.

Runs offline in a few minutes on a laptop CPU (``EMO_JAX_DATA`` or ``data.manual_dir`` must
point at a folder laid out like ``shared/data``) and visibly learns: validation perplexity
drops from the vocabulary size (~50k) to a few hundred. With no pretrained model to take the
cost embeddings from, the head is trained with MLE for ``loss.mle_warmup_steps`` and then
snapshotted into the ``cost`` collection -- the known recipe for EMO from scratch.

Every field is documented; variants (``configs/*.py``) import this file and change fields.
Override from the command line: ``--config.train.num_steps=100 --config.loss.name=mle``.

Every config file takes one optional argument, given after a colon:
``--config configs/<name>.py:smoke`` is the same config at smoke size (every code path --
training, warm-up switch, evaluation, checkpoints, resume, samples, export -- in seconds on
a CPU; the tests and ``--smoke`` drivers use it). See ``sized``.
"""

import ml_collections
from ml_collections import config_dict

VARIANTS = ("", "smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Parameter init, dropout and data order all derive from it.

  # ---- Model ---------------------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  # Pretrained model: a packaged name ('smollm2-135m'), a .gguf file, an HF directory (GPT-2
  # or LLaMA) or a hub name (online); '' trains `family` / `preset` from scratch.
  config.model.pretrained = ""
  config.model.family = "gpt2"  # From scratch: gpt2 | llama.
  # The family's preset: gpt2: tiny | small-cpu | gpt2 | gpt2-medium | ...; llama: tiny |
  # smollm2-135m. The vocabulary is the tokenizer's.
  config.model.preset = "tiny"
  config.model.max_length = 128  # Longest input of a from-scratch model (>= block_size).
  # Dropout rate (GPT-2: embedding / attention / residual; LLaMA: attention weights).
  config.model.dropout = 0.0
  config.model.dtype = "float32"  # Activation dtype ('bfloat16' on accelerators).
  config.model.param_dtype = "float32"  # Parameters and optimizer state stay float32.
  config.model.remat = False  # Rematerialise each block in the backward pass.

  # ---- Data ----------------------------------------------------------------------------
  config.data = ml_collections.ConfigDict()
  # Corpus: tiny_shakespeare | wikitext2 | wikitext2_raw | ptb | ag_news (plus, with source
  # 'tfds', wikitext103 | wikitext103_raw | writingprompts | webtext | ag_news_subset), or
  # your own files: 'files:/path/to/{split}.jsonl' (.txt / .jsonl / .csv, see text_field),
  # or an instruction corpus, 'alpaca' (prompt-masked SFT rows; see prompt_template).
  config.data.corpus = "tiny_shakespeare"
  # 'files': read the upstream files directly (emo_jax.data.corpora); 'tfds': build and read the
  # TFDS datasets of emo_jax.data.tfds_builders (downloads online; offline from manual_dir).
  config.data.source = "files"
  config.data.tfds_dir = ""  # TFDS data_dir for source 'tfds'; '' = TFDS's default.
  config.data.text_field = "text"  # Field/column holding the text in .jsonl / .csv files.
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.manual_dir = ""  # Folder laid out like shared/data; '' reads $EMO_JAX_DATA.
  # Tokenizer: any model source ('gpt2' = the packaged GPT-2 BPE, 'smollm2-135m', a .gguf, an
  # HF directory); '' = the pretrained model's own, or GPT-2's BPE from scratch.
  config.data.tokenizer = ""
  config.data.block_size = 64  # Tokens per training example (the paper uses 256).
  config.data.max_eval_blocks = 256  # Cap on validation blocks per evaluation (0 = all).
  # Train on a fixed random subset of whole blocks (rows) holding at least this many target
  # tokens (0 = the whole split); a smaller budget's subset lies inside a larger one's, for
  # data-scale curves. The subset depends on train_subset_seed only, not on the run's seed.
  config.data.max_train_tokens = 0
  config.data.train_subset_seed = 0
  # Instruction corpora ('alpaca'): the prompt before each response -- 'chat' (the
  # tokenizer's chat template, one user turn) or 'alpaca' (Stanford Alpaca's template).
  config.data.prompt_template = "chat"

  # ---- Objective -----------------------------------------------------------------------
  config.loss = ml_collections.ConfigDict()
  config.loss.name = "emo"  # mle | emo | mixce | tailr
  config.loss.weighting = "mle"  # EMO: 'mle' = ½[CE + sg(CE/DEMD)·DEMD]; 'demd' = emo2.
  # EMO: clamp the stop-gradient ratio (None = no clamp). 3.0 is the PyPI EMOLoss recipe;
  # from scratch it matters: right after warm-up CE/DEMD ≈ 6 amplifies the DEMD gradient of
  # a barely trained head (see mle_warmup_steps).
  config.loss.max_weight = config_dict.placeholder(float)  # Nullable float ...
  config.loss.max_weight = 3.0  # ... set to 3.0; --config.loss.max_weight=None disables.
  config.loss.detach_target_prob = False  # EMO: DEMD' = DEMD + sg(p_t) in the weight.
  config.loss.mixing_ratio = 0.5  # MixCE's r.
  config.loss.gamma = 0.5  # TaiLr's γ.
  # Cost embeddings: 'frozen_head' (copy of the head at load / at the end of warm-up) or
  # 'adaptive' (the current head under stop-gradient).
  config.loss.cost_source = "frozen_head"
  # Steps of plain MLE before `name` takes over. Measured on this default:
  # warm-up 100 without the clamp raised validation perplexity after the switch
  # (405 -> 592 by step 400); warm-up 200 with max_weight 3 kept it falling (247 -> 213).
  config.loss.mle_warmup_steps = 200
  config.loss.fused = True  # Chunked loss from hidden states (no [N, V] logits buffer).
  # Longest chunk of the fused loss, in tokens; None = the library's default (512, EMO 341).
  config.loss.chunk_size = config_dict.placeholder(int)

  # ---- LoRA (low-rank adapters; emo_jax.models.lora) ----------------------------------
  config.lora = ml_collections.ConfigDict()
  config.lora.rank = 0  # Adapter rank r; 0 = full fine-tuning (no adapters).
  config.lora.alpha = 16.0  # The adapters' update is scaled by alpha / rank.
  config.lora.dropout = 0.0  # Dropout on the adapters' input (training only).
  # Dense layers to adapt, comma-separated module names or path suffixes (LLaMA: q_proj,
  # k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; GPT-2: c_attn, attn/c_proj,
  # c_fc, mlp/c_proj). The base weights are frozen and absent from the optimizer state.
  config.lora.targets = "q_proj,k_proj,v_proj,o_proj"

  # ---- Optimizer -----------------------------------------------------------------------
  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 3e-3  # Peak learning rate.
  config.optim.schedule = "cosine"  # constant | linear | cosine decay after warm-up.
  config.optim.warmup_steps = 30  # Linear learning-rate warm-up.
  config.optim.weight_decay = 0.01  # AdamW decay on matrices only (no biases/LayerNorm).
  config.optim.b1 = 0.9
  config.optim.b2 = 0.98
  config.optim.eps = 1e-8
  config.optim.grad_clip_norm = 1.0  # Global-norm clipping (0 disables).

  # ---- Training loop -------------------------------------------------------------------
  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 16  # Global batch, in blocks, over all devices and hosts.
  config.train.grad_accum_steps = 1  # Micro-batches per step (same result as one batch).
  config.train.num_steps = 400  # Optimizer steps (ignored when num_epochs > 0).
  config.train.num_epochs = 0  # Passes over the training blocks; 0 = use num_steps.
  config.train.log_every = 20  # Steps between training-metric logs.
  config.train.eval_every = 100  # Steps between validation passes (and best checkpoints).
  config.train.save_every = 100  # Steps between periodic checkpoints.
  config.train.keep_checkpoints = 2  # Periodic checkpoints kept (the best is kept apart).
  config.train.nan_policy = "stop"  # 'stop': raise at a non-finite loss; 'skip': drop step.
  config.train.export_hf = True  # Write the best model as an HF directory at the end.
  config.train.num_samples = 3  # Continuations printed at the end (0 = none).
  config.train.sample_tokens = 40  # New tokens per sample.
  # Before the first step, record the untouched model's validation perplexity and samples
  # (base.json), and print them next to the trained model's at the end.
  config.train.compare_with_base = False
  # TensorBoard event files under workdir/tensorboard (metrics.jsonl is always written).
  config.train.tensorboard = True

  # ---- Evaluation (--mode eval) --------------------------------------------------------
  config.eval = ml_collections.ConfigDict()
  # Model to evaluate (any model.pretrained source); '' = the best checkpoint of --workdir.
  config.eval.model = ""
  config.eval.split = "test"  # Split for perplexity and for the MAUVE prompts.
  config.eval.max_blocks = 0  # Cap on perplexity blocks (0 = the whole split).
  # Cost for the mean DEMD of the model's predictions on those blocks (any model source: its
  # L2-normalised head), e.g. the pretrained base a fine-tuned run trained with, so every
  # objective is measured under one cost; '' = the evaluated model's own head.
  config.eval.cost_model = ""
  config.eval.num_prompts = 64  # MAUVE prompts, first N usable documents (paper: 4000-5000).
  # Words of each prompt's prefix and of its human continuation; None = the corpus's lengths
  # (emo_jax.evaluation.prompts: WikiText 20/80, PTB 5/25, AG News 10/30, ...; own 'files:' corpora
  # 20/80 as WebText).
  config.eval.prefix_words = config_dict.placeholder(int)
  config.eval.continuation_words = config_dict.placeholder(int)
  config.eval.max_new_tokens = 80  # Tokens generated per prompt (the paper forces 80).
  config.eval.batch_size = 32  # Prompts per compiled generation call.
  # Decoding: temperature 1 and no filters = unbiased (ancestral) sampling, the paper's main
  # setting. top_k 0 / top_p 1 / typical_p 1 disable a filter; greedy overrides them all.
  config.eval.temperature = 1.0
  config.eval.top_k = 0
  config.eval.top_p = 1.0
  config.eval.typical_p = 1.0
  config.eval.greedy = False
  # MAUVE features: 'minilm' (offline sentence encoder; needs requirements-dev.txt) or a model
  # (an HF directory -- gpt2-large is the paper's choice --, a .gguf, 'smollm2-135m'): its
  # last-token hidden state. Fixed across the runs you compare.
  config.eval.featurizer = "minilm"
  config.eval.mauve_runs = 5  # k-means seeds; mean ± std reported.
  config.eval.mauve_scaling = 5.0  # MAUVE's c.
  # False: perplexity and generations.jsonl only; `--mode score` adds MAUVE/ROUGE/repetition
  # later (e.g. on a CPU host with the featurizer, after generating on an accelerator).
  config.eval.text_metrics = True
  # Reference ("oracle") model (any model source) for the oracle perplexity of generations
  # and the distribution measures (forward/reverse CE, TVD, reverse KL); '' skips them.
  config.eval.reference_model = ""
  config.eval.num_examples = 3  # Continuations printed next to the human ones.

  # ---- Devices -------------------------------------------------------------------------
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # Data-parallel axis size (-1 = the devices fsdp leaves).
  config.mesh.fsdp = 1  # Parameter-sharding axis size.
  # Multi-process runs (one process per host, or several per host on CPU):
  # jax.distributed.initialize() before anything touches a device. Fields left None are
  # auto-detected by JAX on clusters it knows (Cloud TPU, SLURM, Open MPI, ...).
  config.distributed = ml_collections.ConfigDict()
  config.distributed.enabled = False
  config.distributed.coordinator_address = config_dict.placeholder(str)  # 'host:port'.
  config.distributed.num_processes = config_dict.placeholder(int)
  config.distributed.process_id = config_dict.placeholder(int)
  return sized(config, variant)


def sized(config: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
  """``config`` at the size ``variant`` names; every config file's ``get_config`` ends here.

  ``""``: unchanged. ``"smoke"``: a from-scratch model becomes the tiny preset; 12 steps of
  4 blocks of 16 tokens, a validation pass and a checkpoint every 4 steps, the EMO warm-up
  (when the config has one) switching at step 4, one short sample, small evaluation sizes,
  no TensorBoard. Objective, optimizer kind, data source and a pretrained model are kept,
  so a config's own code paths are the ones exercised.
  """
  if variant not in VARIANTS:
    raise ValueError(
      f"unknown config variant {variant!r}: expected one of "
      f"{', '.join(repr(v) for v in VARIANTS)} (configs/<name>.py:<variant>)."
    )
  if variant != "smoke":
    return config
  if not config.model.pretrained:
    config.model.preset = "tiny"
    config.model.max_length = 32
  config.data.block_size = 16
  config.data.max_eval_blocks = 8
  config.train.batch_size = 4
  config.train.grad_accum_steps = 1
  config.train.num_epochs = 0
  config.train.num_steps = 12
  config.train.log_every = 1
  config.train.eval_every = 4
  config.train.save_every = 4
  config.train.num_samples = min(config.train.num_samples, 1)
  config.train.sample_tokens = 4
  config.train.tensorboard = False
  if config.loss.mle_warmup_steps:
    config.loss.mle_warmup_steps = 4
  config.loss.chunk_size = 32
  config.optim.warmup_steps = 2
  config.eval.max_blocks = 8
  config.eval.num_prompts = 8
  config.eval.batch_size = 4
  config.eval.max_new_tokens = 8
  return config
