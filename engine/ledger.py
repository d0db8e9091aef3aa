"""Finished-trial ledger: each trial's final row on disk before Tune hears of it.

Tune snapshots the experiment (which trials are finished) every few seconds, and a trial's
final result reaches its ``result.json`` before the snapshot that marks the trial finished.
A driver killed between the two leaves a trial that finished but is recorded as running, and
``--resume`` would train it again (Tune is at-least-once there). The trainable closes that
window itself: it writes its final row to ``<run_dir>/trials/<trial_id>.json`` (atomically)
before reporting it, and a trial that finds its row there reports it again, marked
``replayed``, instead of training. Trial ids are unique per Tune experiment, so a fresh study
in the same directory never meets another study's rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sweepcore.atomic import write_atomic

__all__ = ["LEDGER_DIR", "finished_row", "record_finished"]

LEDGER_DIR = "trials"


def _path(run_dir: str | Path, trial_id: str) -> Path:
    return Path(run_dir, LEDGER_DIR, f"{trial_id}.json")


def _plain(v: Any) -> Any:
    """JSON-safe form of a row value (numpy scalars and arrays to Python ones)."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"cannot record a {type(v).__name__} in the trial ledger")


def record_finished(run_dir: str | Path, trial_id: str, row: dict[str, Any]) -> Path:
    """Write ``row`` as the trial's final row; returns the file. Atomic: a reader sees the whole
    row or none (write to a temporary file, then rename)."""
    path = _path(run_dir, trial_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(row, default=_plain, allow_nan=True, sort_keys=True))
    return path


def finished_row(run_dir: str | Path, trial_id: str) -> dict[str, Any] | None:
    """The final row a trial recorded, or None when it has not finished."""
    path = _path(run_dir, trial_id)
    if not path.exists():
        return None
    return json.loads(path.read_text())
