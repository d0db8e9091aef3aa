"""End to end: what the ``smoke`` CLI shows on a (non-TTY) terminal, and what it logs.

Before this change a smoke run printed, on standard error, ~74 Ray lines such as::

    2026-12-04 17:26:53,083	INFO worker.py:2038 -- Started a local Ray instance.
    2026-12-04 17:26:57,389	INFO logging_progress.py:225 -- Total Progress: 0/?
    [2026-12-04 17:27:14,184 E 14682 14682] core_worker.cc:2465: Actor with class name: ...

and on standard output Tune's experiment banner ("Configuration for experiment", "View
detailed results here"). Now the terminal holds one line per phase with plain progress lines
(the output is a pipe), and Ray's and Tune's log is in ``RUN_DIR/driver.log``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli_env, run_sweep

# Ray's Python log lines ("<date> <time>,<ms>\tINFO <file>.py:<line> -- ...") and its C++ ones
# ("[<date> <time>,<ms> I|W|E <pid> <tid>] <file>.cc:<line>: ...")
RAY_PY_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\s+(INFO|WARNING|ERROR) \S+\.py:\d+ -- "
)
RAY_CC_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [IWE] \d+ \d+\] \S+\.cc:\d+")
TUNE_BANNER = ("Configuration for experiment", "View detailed results here")


def _ray_lines(text: str) -> list[str]:
    return [
        line for line in text.splitlines() if RAY_PY_LINE.match(line) or RAY_CC_LINE.match(line)
    ]


@pytest.fixture(scope="module")
def runs(
    smoke_run: tuple[Path, subprocess.CompletedProcess], smoke_cache: Path
) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """``quiet``: the session's smoke run (cold cache, report); ``verbose``: the same study
    with ``--verbose --no-report`` in the same cache, so it finds its preparation cached."""
    quiet_dir, _ = smoke_run
    run_dir = quiet_dir.parent / "verbose"
    env = cli_env(smoke_cache)
    proc = run_sweep("smoke", "--verbose", "--no-report", out=run_dir, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"quiet": smoke_run, "verbose": (run_dir, proc)}


@pytest.mark.slow
def test_terminal_shows_phases_not_ray_logs(runs) -> None:
    run_dir, proc = runs["quiet"]
    terminal = proc.stdout + proc.stderr
    assert _ray_lines(terminal) == []
    assert "Started a local Ray instance" not in terminal
    assert not any(b in terminal for b in TUNE_BANNER)
    lines = proc.stdout.splitlines()
    for phase in ("[data]", "[teacher]", "[importance]", "[sweep]", "[progress]", "[latency]",
                  "[report]"):  # fmt: skip
        assert any(line.startswith(phase) for line in lines), phase
    # the teacher's steps and the trials reached their end, each shown as plain lines
    teacher = [line for line in lines if re.match(r"\[teacher\]\s+\d+% ", line)]
    assert teacher and re.match(r"\[teacher\]\s+100% 5/5 steps", teacher[-1]), teacher
    assert len(teacher) <= 11  # at most one line per 10 % (smoke: 5 steps, one line each)
    sweep = [line for line in lines if line.startswith("[progress]")]
    assert re.match(r"\[progress\]\s+100% 4/4 trials", sweep[-1]), sweep  # 2 configs × 2 seeds
    assert "4 ok; best valid_accuracy (max)" in sweep[-1]
    importance = [line for line in lines if re.match(r"\[importance\]\s+\d+% ", line)]
    # smoke: 2 calibration batches × 2 methods (fisher, ablation)
    assert re.match(r"\[importance\]\s+100% 4/4 batch×method", importance[-1]), importance
    assert lines[-1] == f"Run directory: {run_dir}"
    assert proc.stderr.strip() == ""


@pytest.mark.slow
def test_driver_log_holds_what_the_terminal_left_out(runs) -> None:
    run_dir, proc = runs["quiet"]
    log = (run_dir / "driver.log").read_text()
    kept = _ray_lines(log)
    assert any("Started a local Ray instance" in line for line in kept), log[:2000]
    assert any("tune.py" in line for line in kept)  # Tune's own INFO lines
    assert "trials:" in log and "best valid_accuracy (max)" in log  # the per-trial table
    assert f"Ray and Tune log: {run_dir / 'driver.log'}" in proc.stdout


@pytest.mark.slow
def test_verbose_shows_the_ray_log_live(runs) -> None:
    run_dir, proc = runs["verbose"]
    live = _ray_lines(proc.stderr)
    assert any("Started a local Ray instance" in line for line in live), proc.stderr[-2000:]
    # everything shown live is also in the file
    log = (run_dir / "driver.log").read_text().splitlines()
    assert set(live) <= set(log)
    # the second run reused the first one's preparation: data, teacher and importance
    assert re.search(r"^\[data\] womens-ecommerce: .* \(cached, \d+\.\d s\)$", proc.stdout, re.M)
    assert "[teacher] cached" in proc.stdout
    assert re.search(r"^\[importance\] cached \(cache key [0-9a-f]{16}\)$", proc.stdout, re.M)
    assert not re.search(r"^\[importance\]\s+\d+% ", proc.stdout, re.M)  # nothing scored
    man = json.loads((run_dir / "manifest.json").read_text())
    first = json.loads((runs["quiet"][0] / "manifest.json").read_text())
    for piece in ("data", "importance"):
        assert first["cache"][piece]["cached"] is False, piece  # the smoke run's cold cache
        assert man["cache"][piece] == {"key": first["cache"][piece]["key"], "cached": True}
    assert man["teacher"]["cached"] is True and first["teacher"]["cached"] is False
    assert proc.stdout.splitlines()[-1] == f"Run directory: {run_dir}"
