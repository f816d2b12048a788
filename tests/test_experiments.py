"""The experiment scripts run, and what they print is true."""

import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))

import emo_loss_walkthrough as walkthrough  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="module")
def results():
  return walkthrough.compute()


def test_walkthrough_claims(results):
  rows = {row["mass on"]: row for row in results["rows"]}
  # CE reads only p(target): identical in every row.
  np.testing.assert_allclose([r["CE"] for r in rows.values()], -np.log(0.4), rtol=1e-5)
  # DEMD: mass on near-synonyms costs less than mass on unrelated words.
  assert max(rows["large"]["DEMD"], rows["huge"]["DEMD"]) < min(rows["dog"]["DEMD"],
                                                                  rows["car"]["DEMD"])
  # DEMD is the exact EMD of the linear program.
  for row in rows.values():
    assert row["DEMD"] == pytest.approx(row["EMD (LP)"], abs=1e-5)
  # EMO pushes the far word down harder than CE (relative to its probability) and spares
  # the near ones; MixCE/TaiLr gradients are multiples of CE's.
  grads = results["gradients"]
  car, large = walkthrough.WORDS.index("car"), walkthrough.WORDS.index("large")
  ce, emo = grads["CE"], grads["EMO (mle weighting)"]
  assert emo[car] / ce[car] > emo[large] / ce[large]
  for name in ("MixCE (r=0.5)", "TaiLr (γ=0.5)"):
    ratio = grads[name] / ce
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)


def test_walkthrough_script_renders_markdown():
  out = subprocess.run([sys.executable, os.path.join(REPO, "experiments",
                                                     "emo_loss_walkthrough.py")],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.startswith("# EMO's loss on a toy vocabulary")
  assert "| car |" in out.stdout and "exact EMD" in out.stdout
