"""Ctrl-C, through the real CLI (issue 33): SIGINT to the driver while trials run stops the
sweep, writes what finished, marks the run interrupted in the manifest and the report, prints
the ``--resume`` command and exits 130; that command then finishes the run with every
configuration × seed exactly once. SIGINT before the sweep (during preparation) is one line
and exit 130, not a KeyboardInterrupt traceback.

Before this change the first case carried on through latency and report and exited 0 with
"stopped early" in the report; the second printed a 32-line traceback.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, cli_env, run_sweep

# one trial at a time, so the interrupt finds finished trials and unfinished ones
ARGS = ["smoke", "search.max_concurrent_trials=1"]
HANG_S = 900  # a guard against a hang, not a speed expectation


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    sink = log.open("w")
    cmd = [sys.executable, "-m", "engine.sweep", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)


def _wait_for(cond, driver: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + HANG_S
    while not cond():
        assert driver.poll() is None, f"the study ended before {what}: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {HANG_S} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_ctrl_c_during_trials_stops_records_and_resumes(tmp_path: Path, smoke_cache: Path) -> None:
    out = tmp_path / "run"
    env = cli_env(smoke_cache)  # the smoke study's preparation, cached: this is about the sweep
    log = tmp_path / "first.log"
    driver = _start([*ARGS, "--out", str(out)], env, log)
    try:
        _wait_for(lambda: len(list((out / "trials").glob("*.json"))) >= 1, driver, log, "a trial")
        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=HANG_S) == 130, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    text = log.read_text()
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert lines[-1] == f"Run directory: {out}"
    (said,) = [line for line in lines if line.startswith("interrupted: ")]
    command = said.split("continue with: ", 1)[1]
    assert command == shlex.join(
        ["python", "-m", "engine.sweep", *ARGS, "--out", str(out), "--resume"]
    )

    manifest = json.loads((out / "manifest.json").read_text())
    stop = manifest["interrupted"]
    assert stop["planned"] == 2 and stop["finished"] == 1 and stop["resume"] == command
    assert said.startswith("interrupted: 1 of 2 trials finished; ")
    df = pd.read_parquet(out / "results.parquet")
    trials = df[(df.trial_id != "teacher") & (df.status != "reference")]
    done = trials[trials.status == "ok"]
    assert len(done) == stop["finished"]  # what finished is written, each with its figures
    assert done.accuracy.notna().all() and done.gflops.notna().all()
    assert set(trials.status) <= {"ok", "interrupted"}  # none called "stopped early"
    assert (trials.status == "interrupted").sum() == manifest["trials"].get("interrupted", 0)
    assert (df[df.status != "reference"].latency_phase == "none").all()  # waits for --resume
    report = (out / "report.md").read_text()
    assert "This run was interrupted (Ctrl-C): 1 of 2 trials finished" in report
    assert command in report

    # the printed command finishes the run: every configuration × seed exactly once
    again = run_sweep(*shlex.split(command)[3:], env=env, timeout=HANG_S)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "interrupted" not in again.stdout
    df = pd.read_parquet(out / "results.parquet")
    trials = df[(df.trial_id != "teacher") & (df.status != "reference")]
    assert (trials.status == "ok").all(), trials[["trial_id", "status", "error"]]
    pairs = sorted(zip(trials["pipeline.truncate.strategy"], trials.seed, strict=True))
    assert pairs == [("fisher", 0), ("uniform", 0)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert "interrupted" not in manifest and manifest["latency"]["timed"] == 3
    # the trials that finished before Ctrl-C were not trained again
    assert set(done.trial_id) <= set(trials.trial_id)
    again_done = trials.set_index("trial_id").loc[list(done.trial_id)]
    assert (again_done.wall_s.to_numpy() == done.set_index("trial_id").wall_s.to_numpy()).all()


@pytest.mark.slow
def test_ctrl_c_during_preparation_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    log = tmp_path / "log"
    # a cold cache of its own, so the teacher's fine-tuning is there to interrupt
    driver = _start([*ARGS, "--out", str(out)], cli_env(tmp_path / "cache"), log)
    try:
        _wait_for(lambda: "[teacher] fine-tuning" in log.read_text(), driver, log, "fine-tuning")
        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=300) == 130, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    (said,) = [line for line in text.splitlines() if line.startswith("interrupted")]
    again = shlex.join(["python", "-m", "engine.sweep", *ARGS, "--out", str(out)])
    assert said == (
        "interrupted before the sweep started; nothing to resume. Run the same command again "
        f"(what was prepared is cached): {again}"
    )
    assert not (out / "manifest.json").exists()
