"""Study on an accelerator: fine-tune ``configs/study_gpu_base.py``'s model (issue #8).

Budget, learning rate, schedule, data order, validation cadence and prompts are those of
``configs/study_finetune.py``; what changes is where the time goes on a GPU host:
bfloat16 activations, no periodic checkpoint but the final one, no HF export of each run,
generation in larger batches, and no MAUVE featurizer on the device
(``eval.text_metrics=False``): ``experiments/study_gpu.py score`` adds MAUVE, ROUGE and
repetition later from each run's ``generations.jsonl``.
"""

from configs import default, study_finetune


def get_config(variant: str = ""):
  config = study_finetune.get_config()
  config.model.pretrained = "workdirs/study_gpu/base/hf_export"  # study_gpu.py sets the root.
  config.model.dtype = "bfloat16"
  config.train.save_every = 100  # = num_steps: the final state only.
  config.train.export_hf = False  # eval reads the best checkpoint in the workdir.
  config.eval.text_metrics = False
  config.eval.batch_size = 200  # 1000 prompts in 5 compiled calls.
  return default.sized(config, variant)
