"""The preparation cache: where a study's data, teacher and importance scores are kept, and how
their keys are made.

A study prepares three things before any trial (:mod:`engine.prepare`): the tokenised splits,
the fine-tuned teacher and the layer-importance scores. Each is stored under
``$COMPRESSION_SWEEPS_CACHE`` (default ``<repo>/.cache``) in a folder of its own
(``data/``, ``teachers/``, ``importance/``), keyed by a hash of everything its value depends
on, so a rerun, a resumed run or another study with the same inputs reuses it:

- the settings (the study's section, as typed);
- the inputs (the corpus files' bytes, the teacher's cache key);
- the code that computes it (the package's source files, :func:`code_fingerprint`), so an
  upgrade or a local edit of that code is a miss, never a stale hit;
- the library versions that can change the result.

An entry is written file by file, each atomically, ``meta.json`` last: an entry without a
readable ``meta.json`` is a miss. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "code_fingerprint", "digest", "library_versions", "plain_json"]

REPO = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """``$COMPRESSION_SWEEPS_CACHE`` or ``<repo>/.cache``."""
    env = os.environ.get("COMPRESSION_SWEEPS_CACHE")
    return Path(env) if env else REPO / ".cache"


def digest(payload: Any) -> str:
    """A 16-hex-digit key for a JSON-able ``payload`` (keys sorted)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def code_fingerprint(*parts: str | Path, root: Path = REPO) -> str:
    """SHA-256 of the Python source under each of ``parts`` (paths relative to ``root``, the
    repository by default: a package folder or one module), file names included."""
    h = hashlib.sha256()
    for part in parts:
        where = root / part
        files = sorted(where.rglob("*.py")) if where.is_dir() else [where]
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0")
            h.update(f.read_bytes() + b"\0")
    return h.hexdigest()


def library_versions(*names: str, missing: str = "") -> dict[str, str]:
    """Installed version of each distribution in ``names`` (``missing`` when not installed)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = missing
    return out


def plain_json(value: Any) -> Any:
    """``json.dumps(default=...)`` for NumPy scalars (statistics and scores hold a few)."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
