"""Where a corpus's files are: one resolver for every corpus.

A ``data.path`` (or a corpus's ``default_path``, relative to the repository root) is looked
for under the current directory first (``~`` expanded), then under the repository root; a
glob pattern is matched the same way. Every reader (the file corpora through
:func:`engine.data.read.resolve_files`, ``hf`` for a local dataset folder) and the study
validation (:func:`engine.data.check.problems`) go through these functions, so a path
means the same thing everywhere and a missing one gets the same message.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

__all__ = ["REPO_ROOT", "glob_files", "is_pattern", "locate", "not_found"]

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def is_pattern(raw: str) -> bool:
    """Whether ``raw`` is a glob pattern (``*``, ``?`` or ``[``)."""
    return any(ch in raw for ch in "*?[")


def locate(raw: str) -> Path | None:
    """``raw`` as it exists under the current directory, else under the repository root;
    None when neither has it (an absolute path is only looked for as is)."""
    path = Path(raw).expanduser()
    if path.exists():
        return path
    if path.is_absolute():
        return None
    under_repo = REPO_ROOT / raw
    return under_repo if under_repo.exists() else None


def glob_files(raw: str) -> list[Path]:
    """The files a glob pattern matches, sorted: under the current directory, else (for a
    relative pattern that matches nothing there) under the repository root."""
    found = sorted(glob.glob(os.path.expanduser(raw)))
    if not found and not Path(raw).is_absolute():
        found = sorted(glob.glob(str(REPO_ROOT / raw)))
    return [Path(f) for f in found if Path(f).is_file()]


def not_found(raw: str) -> str:
    """The one message for a path that :func:`locate` does not find."""
    places = sorted({str(Path.cwd()), str(REPO_ROOT)})
    return f"{raw}: no such file or directory (looked in {' and '.join(places)})"
