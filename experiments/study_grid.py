"""What the EMO-vs-MLE studies are and where their files live: settings, grid, paths.

Shared by the driver (``study.py``: commands, running, archiving), the report
(``study_report.py``) and the scripts built on the same layout (``data_scale.py``,
``study_gpu.py``). A point is ``(corpus, objective, seed)``; its workdir is
``<root>/<corpus>/<objective>/seed<seed>`` whether ``root`` is a live run's or an archive.
"""

from __future__ import annotations

import dataclasses
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPORA = ("wikitext2_raw_carved", "ag_news", "tiny_shakespeare")
# Objective name -> its loss overrides. Everything else is identical across objectives.
OBJECTIVES = {
  "mle": ["--config.loss.name=mle"],
  "emo": ["--config.loss.name=emo", "--config.loss.weighting=mle"],
  "emo_demd": ["--config.loss.name=emo", "--config.loss.weighting=demd"],
  "tailr": ["--config.loss.name=tailr"],
  "mixce": ["--config.loss.name=mixce"],
}
SEEDS = (0, 1, 2)
# The untouched ready-made base's row in a study without a base stage: one evaluation per
# corpus (its workdir is <root>/<corpus>/base/seed0), no fine-tuning, no paired test.
BASE = "base"


@dataclasses.dataclass(frozen=True)
class Setting:
  """Where a study's fine-tuning starts and with which config, and what else each point's
  weights are evaluated on before its workdir may go (:data:`DECODING`, :data:`FEWSHOT`)."""

  finetune_config: str
  base_config: str | None  # Pretrained here by the "base" stage; None: a ready-made base.
  pretrained: str | None  # The ready-made base (any model source) when base_config is None.
  default_root: str  # Under workdirs/.
  point_evaluations: bool = False  # The decoding and few-shot stages.
  archive: str | None = None  # Where finished points are archived, under experiments/results/.
  variant: str = ""  # The configs' variant: "smoke" (``--smoke``) runs every stage tiny.
  fewshot_flags: tuple[str, ...] = ()  # Extra experiments/fewshot.py flags (``--smoke``).


@dataclasses.dataclass(frozen=True)
class PointEvaluation:
  """An evaluation that needs a fine-tuned point's weights, run on some of the grid."""

  corpora: tuple[str, ...]
  objectives: tuple[str, ...]  # BASE included: the untouched base gets it too.


# Issue #17's decoding comparison: the main evaluation samples at temperature 1; these
# temperatures are sampled again from the exported best model, each into its own workdir.
# Every objective: a T = 1 MAUVE lead over MLE (EMO's, emo_demd's, TaiLr's on WikiText) may be
# a sharper sampler, which a lower temperature gives MLE too.
DECODING = PointEvaluation(("wikitext2_raw_carved",), ("mle", "emo", "emo_demd", "tailr", "mixce"))
TEMPERATURES = (0.7, 0.85, 1.15)
# Issue #17's few-shot downstream: the base and the WikiText-2-tuned MLE and EMO models.
FEWSHOT = PointEvaluation(("wikitext2_raw_carved",), (BASE, "mle", "emo", "emo_demd"))


SETTINGS = {
  # Issue #8: a 16M GPT-2 pretrained here, then fine-tuned (experiments/RESULTS.md).
  "cpu": Setting("study_finetune.py", "study_base.py", None, "study"),
  # Issue #17: the packaged SmolLM2-135M, the paper's continual fine-tuning setting.
  "smollm2": Setting(
    "smollm2_study.py",
    None,
    "smollm2-135m",
    "study_smollm2",
    point_evaluations=True,
    archive="smollm2",
  ),
}


def setting_spec(setting: str | Setting) -> Setting:
  """A :class:`Setting` from its name in :data:`SETTINGS`, or as given (``main`` builds one
  for ``--smoke`` / ``--pretrained``)."""
  return setting if isinstance(setting, Setting) else SETTINGS[setting]


def with_options(setting: str, smoke: bool = False, pretrained: str | None = None) -> Setting:
  """``setting`` at smoke size (the configs' ``:smoke`` variant, 4 few-shot queries per
  task) and/or from another ready-made base (any model source; the evaluation's DEMD cost is
  that base's head too)."""
  spec = SETTINGS[setting]
  if pretrained:
    if spec.base_config is not None:
      raise ValueError(
        f"study setting {setting!r} pretrains its own base: --pretrained is for "
        "settings that start from a ready-made one."
      )
    spec = dataclasses.replace(spec, pretrained=pretrained)
  if smoke:
    spec = dataclasses.replace(spec, variant="smoke", fewshot_flags=("--max_queries", "4"))
  return spec


def base_model(setting: Setting, root: str) -> str:
  """The model every grid point starts from."""
  return setting.pretrained or os.path.join(root, "base", "hf_export")


def run_dir(root, corpus, objective, seed):
  return os.path.join(root, corpus, objective, f"seed{seed}")


def decoding_dir(root, corpus, objective, seed, temperature):
  return os.path.join(run_dir(root, corpus, objective, seed), "decoding", f"T{temperature:.2f}")


# A point's few-shot scores (experiments/fewshot.py's output), in its workdir.
FEWSHOT_FILE = "fewshot.json"
# Written last into an archived point's directory: the point is archived once it exists.
ARCHIVED = "point.json"
