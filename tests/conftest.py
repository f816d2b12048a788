"""Shared test setup: the local data folder and a quiet, CPU-only TensorFlow."""

import atexit
import os
import shutil
import tempfile

import pytest

# TensorFlow (tf.data / TFDS) must never grab an accelerator that JAX wants.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# One persistent compilation cache for the whole test session, the main.py subprocesses
# included (they inherit the environment): the resume tests start the same tiny training
# program five times, and compiling it is about half of each run on this machine.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
    prefix="emo_jax_test_compilation_cache_"
  )
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# XLA's CPU backend with its cheap optimisation level: the suite's programs are tiny, so
# compiling them is most of its time (measured on test_models.py + test_fused_losses.py,
# while a study run shared the 2 cores: 174 s -> 125 s).
# Every numeric check compares against a reference at the tolerance the test states, so a
# result that depended on the optimisation level would still fail; real runs and the
# benchmark scripts use XLA's defaults. XLA_FLAGS set by the caller replace these.
os.environ.setdefault(
  "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

_DEFAULT_DATA = os.path.normpath(
  os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
)
os.environ.setdefault("EMO_JAX_DATA", _DEFAULT_DATA)


@pytest.fixture(scope="session")
def data_dir():
  root = os.environ["EMO_JAX_DATA"]
  assert os.path.isdir(root), f"tests need the local corpora: set EMO_JAX_DATA (tried {root})."
  return root
