"""Files handed to emo_jax from outside (weights, configs, tokenizers): a file that does not
parse is an error naming it, never a parser's traceback from deep inside a library.

Parsers raise many types for a truncated or garbled file (``SafetensorError``, the tokenizers
library's bare ``Exception``, ``JSONDecodeError``, ``struct.error``...); :func:`parsing` turns
each into one :class:`DamagedFileError`. Weights are also checked for non-finite values after
loading (:func:`check_finite`): a garbled float is often NaN or infinite. A garbled byte that
still decodes to a finite number cannot be told from a real weight -- these formats carry no
checksums -- which is why emo_jax's own checkpoints record CRC-32s (``emo_jax.checkpointing``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np


class DamagedFileError(ValueError):
  """A file that cannot be parsed, or holds impossible values."""


@contextlib.contextmanager
def parsing(path: str, what: str) -> Iterator[None]:
  """Re-raises any parser failure inside the block as :class:`DamagedFileError` naming
  ``path`` (``what``: e.g. "safetensors file"). Missing files stay ``FileNotFoundError``."""
  try:
    yield
  except (DamagedFileError, FileNotFoundError, ImportError):
    raise
  except Exception as e:  # Every parser has its own exception types.
    raise DamagedFileError(
      f"{path} is not a readable {what} (truncated or damaged?): {type(e).__name__}: {e}"
    ) from e


def read_json(path: str, what: str = "JSON file") -> Any:
  with parsing(path, what), open(path, encoding="utf-8") as f:
    return json.load(f)


def check_finite(path: str, tensors: Mapping[str, np.ndarray]) -> None:
  """Raises :class:`DamagedFileError` naming the first tensor with a NaN or an infinity."""
  for name, value in tensors.items():
    if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
      raise DamagedFileError(
        f"tensor {name!r} in {path} has non-finite values (a damaged "
        "file, or weights that diverged before they were saved)."
      )
