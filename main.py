"""Command line: ``python main.py --config configs/default.py --workdir DIR [--mode ...]``.

``--mode train`` trains (or resumes) in the workdir; ``--mode eval`` evaluates the workdir's
best checkpoint, or the HF directory in ``--config.eval.model``, and writes eval.json/eval.md;
``--mode score`` adds MAUVE/ROUGE/repetition to an evaluation run with
``--config.eval.text_metrics=False``, from its generations.jsonl.

Flags only; everything else lives in ``emo_jax``. Override any config field with
``--config.section.field=value``; an unknown field is an error naming it.
"""

from absl import app, flags
from ml_collections import config_flags

from emo_jax import evaluate, run_logging, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and exports.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "score"], "What to run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run_logging.configure_console()
  if FLAGS.mode == "train":
    results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    if results.get("preempted"):  # Saved, not finished: callers must not treat it as done.
      return train.PREEMPTED_EXIT_CODE
  elif FLAGS.mode == "eval":
    evaluate.evaluate_and_report(FLAGS.config, FLAGS.workdir)
  else:
    evaluate.score_generations(FLAGS.config, FLAGS.workdir)
  return 0


if __name__ == "__main__":
  app.run(main)
