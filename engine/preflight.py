"""Checks before a study starts Ray: each says in one line why the run cannot go ahead, or
returns None. They run after the study file is validated and before any Ray work, so a
user's mistake costs seconds, not a Ray start-up (``python -m engine.sweep``).

- :func:`uri_problem` — ``--out`` is a URI, not a path;
- :func:`resume_problem` — ``--resume`` of a directory with nothing to continue;
- :func:`preflight` — the run directory cannot be written or lacks free space;
- :func:`address_problem` — ``--address HOST:PORT`` does not answer;
- :func:`gpu_problem` — the study asks for GPUs on a local Ray where torch sees none;
- :func:`lock_run_dir` — another sweep is writing the same run directory.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from engine.checkpoint import LEGACY_FILE, legacy_problem

__all__ = [
    "LOCK_FILE",
    "address_problem",
    "gpu_problem",
    "lock_run_dir",
    "preflight",
    "resume_problem",
    "uri_problem",
]

LOCK_FILE = ".sweep.lock"  # held (flock) by the sweep writing the run directory
ADDRESS_TIMEOUT_S = 10.0


def uri_problem(out: str) -> str | None:
    """Why ``--out`` cannot be used as given: a URI (``Path`` would quietly turn
    ``s3://b/r`` into the local directory ``s3:/b/r``, and the run would land on one disk)."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", out):
        return (
            f"--out {out} is a URI; the run directory must be a path (on a cluster, a shared "
            "NFS/EFS mount at the same path on every node, e.g. /mnt/sweeps/RUN)"
        )
    return None


def resume_problem(run_dir: Path) -> str | None:
    """Why ``--resume`` cannot continue ``run_dir`` (one line), or None: it must hold the
    Tune state of a sweep that started there (``run_dir/tune``)."""
    if not run_dir.is_dir():
        return (
            f"--resume: {run_dir} does not exist, so there is no run to continue "
            "(leave out --resume to start one there)"
        )
    if not (run_dir / "tune").is_dir():
        return (
            f"--resume: {run_dir} holds no sweep to continue (no tune/ folder; "
            "leave out --resume to start one there)"
        )
    old = sorted((run_dir / "tune").glob(f"*/checkpoint_*/{LEGACY_FILE}"))
    if old:
        return f"--resume: {legacy_problem(old[0].parent)}"
    return None


def preflight(run_dir: Path, min_free_mb: int) -> str | None:
    """Why ``run_dir`` cannot take a run (one line), or None when it can.

    The directory is created if missing and a probe file written and removed in it (the
    only test that holds for root and read-only filesystems alike); its filesystem must have
    ``min_free_mb`` MB free. Directories it created are removed again when it fails."""
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".preflight."):
            pass
    except OSError as e:
        _remove_empty(created)
        return f"cannot write the run directory {run_dir}: {e.strerror or e}"
    free_mb = shutil.disk_usage(run_dir).free / 2**20
    if free_mb < min_free_mb:
        _remove_empty(created)
        return (
            f"only {free_mb:.0f} MB free for the run directory {run_dir}; a run needs "
            f"{min_free_mb} MB (--min-free-mb)"
        )
    return None


def _remove_empty(dirs: list[Path]) -> None:
    for d in dirs:  # leaf first
        try:
            d.rmdir()
        except OSError:
            return


def address_problem(address: str | None, timeout_s: float = ADDRESS_TIMEOUT_S) -> str | None:
    """Why ``--address`` cannot be joined: a ``HOST:PORT`` (optionally ``ray://``) where
    nothing accepts a connection within ``timeout_s``. ``auto`` and addresses without a port
    are left to Ray."""
    if not address or address == "auto":
        return None
    where = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", address).split("/")[0]
    host, sep, port = where.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return None
    except OSError as e:
        return (
            f"--address {address}: nothing answers there ({e.strerror or e}); start the "
            "cluster first (ray start --head, or ray up cluster.yaml), or check the address"
        )


def gpu_problem(cfg: Any, address: str | None) -> str | None:
    """Why ``cfg`` cannot run on a local Ray here: it asks for GPUs (``resources.gpus`` or
    ``importance.gpus_per_actor``) and torch sees none, so the tasks would wait for a GPU
    forever. A cluster (``address``) is left to Ray: its nodes have their own GPUs."""
    if address:
        return None
    asked = [
        f"{key}={value:g}"
        for key, value in (
            ("resources.gpus", cfg.resources.gpus),
            ("importance.gpus_per_actor", cfg.importance.gpus_per_actor),
        )
        if value > 0
    ]
    if not asked:
        return None
    import torch

    if torch.cuda.is_available():
        return None
    return (
        f"{' and '.join(asked)}: torch sees no GPU on this machine, and a local Ray would wait "
        "for one forever; set them to 0 to run on CPU, or join a GPU cluster with --address"
    )


def lock_run_dir(run_dir: Path) -> tuple[FileLock | None, str | None]:
    """Hold ``run_dir``'s lock for the sweep that writes it: ``(lock, None)``, or ``(None,
    problem)`` when another sweep holds it. The lock is an OS file lock, released when the
    holder exits, however it exits (a killed driver leaves no stale lock)."""
    lock = FileLock(run_dir / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None, (
            f"{run_dir} is being written by another sweep (its lock {run_dir / LOCK_FILE} is "
            "held); wait for it to finish, or use another --out"
        )
    (run_dir / LOCK_FILE).write_text(f"{os.getpid()}\n")
    return lock, None
