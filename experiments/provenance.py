"""Which code made a result: the commit a study point records, and the code version it names.

A point's numbers depend on every tracked file but prose and the study's own outputs, which
are committed while the study runs; so a point records HEAD (``-dirty`` when code differed
from it) and the report groups points by the newest commit at or before that one which
changed code (:func:`code_commit`): result-only commits then name the code they ran on.
"""

from __future__ import annotations

import functools
import subprocess

from study_grid import REPO

# Pathspecs of what is not code: prose, archived results and figures.
NOT_CODE = (":(exclude)*.md", ":(exclude)experiments/results", ":(exclude)experiments/figures")


def _git(repo, *args):
  # No optional locks: the study's result commits may hold the index meanwhile.
  return subprocess.run(
    ["git", "--no-optional-locks", "-C", repo, *args],
    capture_output=True,
    text=True,
    check=False,
  )


def current_commit(repo: str = REPO) -> str:
  """HEAD's commit, with ``-dirty`` appended when a file other than prose and the study's
  outputs differs from it or is new and not ignored (the code that ran is then in no
  commit), ``-unchecked`` when git cannot say; "unknown" outside a git checkout."""
  head = _git(repo, "rev-parse", "HEAD").stdout.strip()
  if not head:
    return "unknown"
  status = _git(repo, "status", "--porcelain", "--", ".", *NOT_CODE)
  if status.returncode != 0:
    return f"{head}-unchecked"
  return f"{head}-dirty" if status.stdout.strip() else head


@functools.cache
def code_commit(commit: str, repo: str = REPO) -> str:
  """The newest commit at or before ``commit`` (as :func:`current_commit` writes it) that
  changed code, with ``commit``'s ``-dirty`` / ``-unchecked`` suffix kept; ``commit``
  itself where git cannot resolve it (unknown, or absent from a shallow clone)."""
  sha, separator, suffix = commit.partition("-")
  found = _git(repo, "log", "-1", "--format=%H", sha, "--", ".", *NOT_CODE)
  code = found.stdout.strip()
  if found.returncode != 0 or not code:
    return commit
  return f"{code}{separator}{suffix}"
