"""A teacher's layer-importance scores, cached by content hash.

The key (:func:`importance_key`) hashes the teacher's cache key (its recipe and training
data), the calibration data, the whole ``importance:`` section, the task, the source of the
code that scores layers, and the versions of the libraries it computes with (see
:mod:`engine.cache`). An entry is ``importance/<key>/meta.json``: every method's
:class:`~engine.importance.base.LayerScores` as JSON (floats round-trip exactly; no pickle).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from engine.cache import cache_dir, code_fingerprint, digest, library_versions, plain_json
from engine.importance.base import LayerScores
from engine.teacher import fingerprint
from sweepcore.atomic import write_atomic

__all__ = ["importance_key", "load_scores", "save_scores"]

# the scoring code: the methods and their runner, the layer adapters, the tasks' losses
IMPORTANCE_CODE = ("engine/importance", "engine/models.py", "engine/tasks")
LIBRARIES = ("torch", "transformers", "captum", "numpy", "scipy", "scikit-learn")
_ROWS = ("per_batch", "per_example")  # tuples of tuples; the other sequences are flat


def importance_key(teacher_key: str, train: dict[str, np.ndarray], cfg: Any, task: str) -> str:
    """Cache key of ``cfg``'s scores (:class:`engine.importance.config.ImportanceConfig`) for
    the teacher cached under ``teacher_key``, calibrated on ``train``."""
    payload = {
        "code": code_fingerprint(*IMPORTANCE_CODE),
        "teacher": teacher_key,
        "train": fingerprint(train),
        "importance": cfg.model_dump(mode="json"),
        "task": task,
        "libraries": library_versions(*LIBRARIES),
    }
    return digest(payload)


def save_scores(key: str, scores: dict[str, LayerScores], root: Path | None = None) -> Path:
    """Cache ``scores`` (method → scores, in the order given) under ``key``."""
    d = (root or cache_dir()) / "importance" / key
    methods = [asdict(s) for s in scores.values()]
    write_atomic(d / "meta.json", json.dumps({"methods": methods}, default=plain_json))
    return d


def _scores(fields_: dict[str, Any]) -> LayerScores:
    out = {}
    for name, value in fields_.items():
        if isinstance(value, list):
            value = tuple(tuple(r) for r in value) if name in _ROWS else tuple(value)
        out[name] = value
    return LayerScores(**out)


def load_scores(key: str, root: Path | None = None) -> dict[str, LayerScores] | None:
    """The cached scores under ``key``, or None (absent or damaged: a miss)."""
    try:
        meta = json.loads(((root or cache_dir()) / "importance" / key / "meta.json").read_text())
        scores = [_scores(m) for m in meta["methods"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return {s.method: s for s in scores}
