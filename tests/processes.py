"""The processes a test started, found and ended by what their command lines name.

Tests that start their own Ray (a head with ``--temp-dir``, a ``Cluster``, a CLI driver) end
exactly those processes, never another Ray on the machine: ``ray stop`` would take every
Ray of this user down. A marker is a string the command line contains (the test's temp dir,
a GCS address); descendants of a match count too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

__all__ = ["alive_under", "free_port", "kill_all", "procs_under"]


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def procs_under(*markers: str) -> list[int]:
    """Pids whose command line names any of ``markers``, plus all their descendants (never
    this process)."""
    parent: dict[int, int] = {}
    hits: set[int] = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (d / "stat").read_text()
        except OSError:
            continue
        pid = int(d.name)
        parent[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        if any(m in cmd for m in markers):
            hits.add(pid)
    out = set(hits)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in out and pid not in out:
                out.add(pid)
                grew = True
    out.discard(os.getpid())
    return sorted(out)


def kill_all(*markers: str) -> None:
    """SIGKILL every process :func:`procs_under` finds."""
    for pid in procs_under(*markers):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def alive_under(*markers: str, wait_s: float = 30.0) -> list[int]:
    """Pids under ``markers`` still running (not zombies) once ``wait_s`` has passed or none
    is left: SIGKILL is asynchronous, a process lingers until the kernel has torn it down."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = []
        for pid in procs_under(*markers):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(pid)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)
