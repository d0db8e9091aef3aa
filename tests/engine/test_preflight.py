"""The checks before Ray starts (issue 33): an address where nothing answers, GPUs asked of a
machine without one, and a run directory another sweep is writing are each one line and exit
2 within seconds, before the run directory or Ray; a killed holder leaves no stale lock."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.preflight import LOCK_FILE, address_problem, gpu_problem, lock_run_dir
from tests.conftest import REPO


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends


def test_an_address_where_nothing_answers_is_refused_in_seconds(tmp_path: Path, capsys) -> None:
    from engine.sweep import main

    with socket.socket() as server:  # something answering: no problem
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert address_problem(f"127.0.0.1:{server.getsockname()[1]}") is None
        assert address_problem(f"ray://127.0.0.1:{server.getsockname()[1]}") is None
    for left_to_ray in (None, "auto", "head-node", "localhost:notaport"):
        assert address_problem(left_to_ray) is None
    port = _closed_port()
    out = tmp_path / "run"
    t0 = time.monotonic()
    assert main(["smoke", "--address", f"127.0.0.1:{port}", "--out", str(out)]) == 2
    assert time.monotonic() - t0 < 30
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --address 127.0.0.1:{port}: nothing answers there (")
    assert not out.exists()  # before the run directory, before Ray


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpus_asked_of_a_machine_without_one_are_refused(tmp_path: Path, capsys) -> None:
    from engine.config import load_study
    from engine.sweep import main

    out = tmp_path / "run"
    args = ["smoke", "resources.gpus=1", "importance.gpus_per_actor=0.5", "--out", str(out)]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        "error: resources.gpus=1 and importance.gpus_per_actor=0.5: torch sees no GPU"
    )
    assert not out.exists()
    assert main([*args, "--dry-run"]) == 0  # a dry run plans a GPU study anywhere
    on_cpu = load_study("smoke", [])
    assert gpu_problem(on_cpu, None) is None
    assert gpu_problem(load_study("smoke", ["resources.gpus=0.25"]), "10.0.0.1:6379") is None


_HOLDER = """
import sys, time
from pathlib import Path
from engine.preflight import lock_run_dir
lock, problem = lock_run_dir(Path(sys.argv[1]))
assert lock is not None, problem
print("held", flush=True)
time.sleep(600)
"""


def test_a_run_directory_being_written_is_refused_and_a_dead_holder_frees_it(
    tmp_path: Path, capsys
) -> None:
    from engine.sweep import main

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert (run / LOCK_FILE).read_text().strip() == str(holder.pid)
        assert main(["smoke", "--out", str(run)]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line == (
            f"error: {run} is being written by another sweep (its lock {run / LOCK_FILE} is "
            "held); wait for it to finish, or use another --out"
        )
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # nothing else written
        lock, problem = lock_run_dir(run)
        assert lock is None and problem is not None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    lock, problem = lock_run_dir(run)  # the killed holder's lock went with it
    assert problem is None and lock is not None
    lock.release()
