"""Shared test setup: the local data folder and a quiet, CPU-only TensorFlow."""

import os

import pytest

# TensorFlow (tf.data / TFDS) must never grab an accelerator that JAX wants.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_DEFAULT_DATA = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..",
                                              "shared", "data"))
os.environ.setdefault("EMO_JAX_DATA", _DEFAULT_DATA)


@pytest.fixture(scope="session")
def data_dir():
  root = os.environ["EMO_JAX_DATA"]
  assert os.path.isdir(root), (
      f"tests need the local corpora: set EMO_JAX_DATA (tried {root}).")
  return root
