"""One trial worker process, kept between the trials it runs.

With ``search.reuse_actors`` (the default) Tune hands a finished trial's actor the next trial
of the same resources instead of starting a new process: the worker has imported torch,
transformers and the engine once, and fetches the study's shared inputs (teacher, tokenised
splits, importance) once, here. Between trials it resets what a trial changes in the process —
the global RNG streams, torch's thread count, garbage and cached GPU memory — so that a trial
on a reused worker gives the row a fresh worker would (``tests/engine/test_worker.py``).

The trainable receives a :class:`SharedHandle` (an object reference, a few bytes), not the
inputs themselves: ``tune.with_parameters`` would fetch and deserialise them again for every
trial. The worker keeps one study's inputs at a time (a new handle replaces them).
"""

from __future__ import annotations

import gc
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import engine

__all__ = [
    "SharedHandle",
    "begin_trial",
    "mark_imported",
    "share",
    "shared_inputs",
    "worker_columns",
]


@dataclass(frozen=True)
class SharedHandle:
    """A study's :class:`engine.trial.SharedInputs` in Ray's object store."""

    ref: Any  # ray.ObjectRef

    @property
    def key(self) -> str:
        return self.ref.hex()


def share(shared: Any) -> SharedHandle:
    """Put ``shared`` in the object store once (on the driver)."""
    import ray

    return SharedHandle(ray.put(shared))


@dataclass
class _Worker:
    pid: int
    import_started_at: float  # when this process began importing the engine
    imported_at: float | None = None  # when engine.trial (torch, transformers, ...) was loaded
    trials: int = 0  # trials begun in this process
    fetched: bool = False  # whether the current trial fetched the shared inputs
    shared_key: str | None = None
    shared: Any = None


_WORKER = _Worker(pid=os.getpid(), import_started_at=engine.IMPORT_STARTED_AT)


def mark_imported() -> None:
    """Called once :mod:`engine.trial` and its imports are loaded."""
    if _WORKER.imported_at is None:
        _WORKER.imported_at = time.time()


def shared_inputs(shared: Any) -> Any:
    """The inputs behind ``shared``: fetched on this worker's first trial of the study, kept
    for the next ones. Anything else (a ``SharedInputs`` passed directly) is returned as is."""
    if not isinstance(shared, SharedHandle):
        return shared
    if _WORKER.shared_key != shared.key:
        import ray

        _WORKER.shared, _WORKER.shared_key = None, None  # free the old study's first
        _WORKER.shared = ray.get(shared.ref)
        _WORKER.shared_key = shared.key
        _WORKER.fetched = True
    return _WORKER.shared


def begin_trial(seed: int, threads: int) -> None:
    """Start a trial in a clean process state: the previous trial's objects collected (and
    their cached GPU memory released), torch at ``threads`` threads, and Python's, NumPy's and
    torch's global RNGs seeded with ``seed``."""
    if _WORKER.trials:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    _WORKER.trials += 1
    _WORKER.fetched = False
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def worker_columns() -> dict[str, Any]:
    """The trial row's worker columns: ``worker_pid``; ``worker_trial`` (1 = the first trial
    this process ran, i.e. a fresh worker); ``worker_fetched`` (whether this trial fetched the
    shared inputs rather than finding them on the worker); ``worker_import_s`` (importing the
    engine, torch and transformers: paid by the first trial only, 0 on a reused worker) and
    ``worker_import_started_at`` (Unix seconds) for where the start-up went."""
    first = _WORKER.trials <= 1
    imported = _WORKER.imported_at or _WORKER.import_started_at
    return {
        "worker_pid": _WORKER.pid,
        "worker_trial": _WORKER.trials,
        "worker_fetched": _WORKER.fetched,
        "worker_import_s": float(imported - _WORKER.import_started_at) if first else 0.0,
        "worker_import_started_at": _WORKER.import_started_at,
    }
