"""Finished-trial ledger: each trial's final row on disk before Tune hears of it.

Tune snapshots the experiment (which trials are finished) every few seconds, and a trial's
final result reaches its ``result.json`` before the snapshot that marks the trial finished.
A driver killed between the two leaves a trial that finished but is recorded as running, and
``--resume`` would train it again (Tune is at-least-once there). The trainable closes that
window itself: it writes its final row to ``<run_dir>/trials/<trial_id>.json`` (atomically)
before reporting it, and a trial that finds its row there reports it again, marked
``replayed``, instead of training. Trial ids are unique per Tune experiment, so a fresh study
in the same directory never meets another study's rows.

Each start of a trial (the first, a retry after its worker or node died, a rerun after
``--resume``) also appends one line to ``<run_dir>/trials/<trial_id>.attempts.jsonl``
(:func:`record_attempt`): the Ray node it ran on, when, and whether Tune handed it a
checkpoint. The trial's final row carries them as ``attempts`` and ``node_history``
(:func:`attempts`), so a run directory says which trials were retried and where each attempt
ran. Like the rows, the file must sit on storage every node shares for the history to be whole.

One more window: a trial created *after* Tune's last snapshot of the experiment that finishes
before the driver dies is in the ledger but unknown to the experiment ``--resume`` restores;
Tune's searcher, restored from the same snapshot, creates its configuration again under a new
trial id. :func:`unknown_finished` finds those rows (the driver passes them to the trainable),
and the new trial replays the row of the same configuration × seed, marked ``replayed`` with
``replayed_from`` the id it finished under, instead of training it a second time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from sweepcore.atomic import write_atomic

__all__ = [
    "LEDGER_DIR",
    "attempts",
    "config_id",
    "finished_row",
    "record_attempt",
    "record_finished",
    "replay_key",
    "unknown_finished",
]

LEDGER_DIR = "trials"


def _path(run_dir: str | Path, trial_id: str) -> Path:
    return Path(run_dir, LEDGER_DIR, f"{trial_id}.json")


def _attempts_path(run_dir: str | Path, trial_id: str) -> Path:
    return Path(run_dir, LEDGER_DIR, f"{trial_id}.attempts.jsonl")


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


def record_attempt(run_dir: str | Path, trial_id: str, attempt: dict[str, Any]) -> Path:
    """Append one start of the trial (``{"node_id", "started_at", "from_checkpoint"}`` from
    :func:`engine.trial.run_trial`) to its attempts file; returns the file. One short line in
    one ``O_APPEND`` write: attempts of a trial run one after another, and a reader sees whole
    lines."""
    path = _attempts_path(run_dir, trial_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(attempt, default=_plain, allow_nan=True, sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return path


def attempts(run_dir: str | Path, trial_id: str) -> list[dict[str, Any]]:
    """The trial's recorded starts, oldest first (an empty list when none was recorded); a
    line cut short by a crash mid-write is skipped."""
    path = _attempts_path(run_dir, trial_id)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def config_id(values: dict[str, Any]) -> str:
    """A configuration's id (the ``config_id`` column): a hash of its searched values."""
    blob = json.dumps(values, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def replay_key(config: str, seed: int) -> str:
    """The key of a configuration × seed among :func:`unknown_finished`'s rows."""
    return f"{config}/{int(seed)}"


def unknown_finished(run_dir: str | Path, known: set[str]) -> dict[str, dict[str, Any]]:
    """Final rows in the ledger of trials whose ids are not in ``known`` (the trials of the
    experiment being restored), by :func:`replay_key`; each row gains ``replayed_from``, the
    id it finished under. Rows without a ``config_id`` (written before it was recorded) are
    left out; of two rows with one key the first by id is kept."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(run_dir, LEDGER_DIR).glob("*.json")):
        trial_id = path.stem
        if trial_id in known:
            continue
        try:
            row = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if "config_id" not in row or row.get("seed") is None:
            continue
        out.setdefault(
            replay_key(row["config_id"], row["seed"]), {**row, "replayed_from": trial_id}
        )
    return out
