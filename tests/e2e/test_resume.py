"""Reliability, through the real CLI: SIGKILL the driver mid-study, rerun with ``--resume``, and
get exactly one row per configuration × seed; a configuration that raises at run time is
recorded as failed with its error while the others finish.

The study runs on a dedicated Ray head (its own port and ``--temp-dir``), so the test can end
every process it started — and only those — by matching that temp dir (never ``ray stop``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pandas as pd
import pytest

from tests.conftest import REPO, cli_env, run_sweep
from tests.processes import alive_under, free_port, kill_all

RAY = Path(sys.executable).parent / "ray"
T = TypeVar("T")

OVERRIDES = [
    # keep_layers 9 > the teacher's 6 layers: valid config, raises in the truncate stage
    "search.space={pipeline.truncate.keep_layers: [2, 9]}",
    "repeats=[0, 1]",
    "search.max_concurrent_trials=1",
]
EXPECTED = {(k, s) for k in (2, 9) for s in (0, 1)}


# A guard against a hang, not a speed expectation: every wait below is on a condition (a
# trial's result on disk, the experiment snapshot, the driver's exit), and this bound only
# turns a run that never gets there into a failure. On the shared 2-core machine at load
# ~30 the first study took 10 min to reach its sweep (teacher fine-tuning alone 294 s).
HANG_S = 1800


def _final_results(trial_dir: Path) -> list[dict]:
    """Final (not intermediate) results a trial reported: rows carrying a ``status``. A last
    line the driver is still writing (no newline yet) is not a result yet."""
    f = trial_dir / "result.json"
    if not f.exists():
        return []
    text = f.read_text()
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines.pop()  # partial
    rows = [json.loads(line) for line in lines if line]
    return [r for r in rows if "status" in r]


def _final_rows(trial_dir: Path) -> int:
    return len(_final_results(trial_dir))


def _trial_id(trial_dir: Path) -> str:
    """``run_trial_0931b_00000_0_seed=...`` → ``0931b_00000``."""
    return "_".join(trial_dir.name.split("_")[2:4])


def _snapshot_status(exp_dir: Path) -> dict[str, str]:
    """Trial id → status in the newest experiment snapshot ({} while none is readable)."""
    snaps = sorted(exp_dir.glob("experiment_state-*.json"))
    if not snaps:
        return {}
    try:
        state = json.loads(snaps[-1].read_text())
    except (OSError, ValueError):  # being replaced (Tune writes a temporary file, renames)
        return {}
    trials = (json.loads(entry[0]) for entry in state.get("trial_data", []))
    return {t["trial_id"]: t["status"] for t in trials}


def _wait(cond: Callable[[], T], driver: subprocess.Popen, what: str) -> T | None:
    """Poll ``cond()`` until it is truthy (returned) or the driver exits (None)."""
    deadline = time.monotonic() + HANG_S
    while driver.poll() is None:
        if value := cond():
            return value
        assert time.monotonic() < deadline, f"no {what} after {HANG_S} s: a hang"
        time.sleep(0.2)
    return None


def _trained_once(trial_dir: Path, ledger: Path) -> bool:
    """The trial ran its pipeline once: every final result is the row it recorded in the
    ledger when it finished (same ``wall_s``), and at most one of them is not a replay.

    Usually the first is the trained one and later ones are replays by a rerun that found
    the row in the ledger. A trial that finished just as the driver was killed — its row in
    the ledger, its report never written by the dead driver — has only replays: also once.
    """
    rows = _final_results(trial_dir)
    recorded = json.loads((ledger / f"{_trial_id(trial_dir)}.json").read_text())
    assert rows, trial_dir.name
    trained = [r for r in rows if not r.get("replayed")]
    return len(trained) <= 1 and all(r["wall_s"] == recorded["wall_s"] for r in rows)


def _forgotten_once(trial_dir: Path, ledger: Path, trials: pd.DataFrame) -> None:
    """A trial directory the resumed experiment does not know: the trial was created after
    Tune's last snapshot and ran before the driver died (its row is in the ledger, its report
    never reached ``result.json``). The resumed searcher made its configuration × seed again
    under a new id, and that trial replayed this one's row instead of training."""
    gone = _trial_id(trial_dir)
    assert not _final_results(trial_dir), trial_dir.name
    recorded = json.loads((ledger / f"{gone}.json").read_text())
    assert "replayed_from" in trials, f"{gone} finished but no trial replayed it"
    (heir,) = trials[trials.replayed_from.eq(gone)].itertuples()
    assert heir.replayed == True  # noqa: E712 (numpy bool)
    assert heir.wall_s == recorded["wall_s"] and heir.seed == recorded["seed"]
    assert heir.config_id == recorded["config_id"]


def _mark_running(exp_dir: Path, trial_id: str) -> None:
    """Rewrite the newest experiment snapshot as if taken after ``trial_id`` reported its
    final result but before Tune marked it finished: the state a driver killed in that
    window leaves behind (the test above hits it only by chance)."""
    snap = max(exp_dir.glob("experiment_state-*.json"))
    state = json.loads(snap.read_text())
    hits = 0
    for entry in state["trial_data"]:
        trial = json.loads(entry[0])
        if trial["trial_id"] == trial_id:
            assert trial["status"] == "TERMINATED"
            trial["status"] = "RUNNING"
            entry[0] = json.dumps(trial, indent=2)
            hits += 1
    assert hits == 1
    snap.write_text(json.dumps(state))


@pytest.mark.slow
def test_kill_driver_then_resume_completes_exactly_once(tmp_path: Path, smoke_cache: Path) -> None:
    temp_dir = Path(tempfile.gettempdir()) / f"rs{uuid.uuid4().hex[:8]}"
    port = free_port()
    out = tmp_path / "run"
    # the smoke study's preparation, found cached: this test is about the sweep's resume
    env = cli_env(smoke_cache, PYTHONPATH=str(REPO), TUNE_GLOBAL_CHECKPOINT_S="1")
    head = [
        str(RAY),
        "start",
        "--head",
        f"--port={port}",
        f"--temp-dir={temp_dir}",
        "--num-cpus=2",
        "--include-dashboard=false",
        f"--object-store-memory={300 * 2**20}",
        "--disable-usage-stats",
    ]
    args = ["smoke", *OVERRIDES, "--out", str(out), "--no-report", "--address", f"127.0.0.1:{port}"]
    cli = [sys.executable, "-m", "engine.sweep", *args]
    try:
        subprocess.run(head, env=env, check=True, capture_output=True, timeout=600)
        log1 = (tmp_path / "first.log").open("w")
        driver = subprocess.Popen(cli, cwd=REPO, env=env, stdout=log1, stderr=subprocess.STDOUT)

        def two_finished() -> list[Path]:
            done = [d for d in (out / "tune").glob("run_trial*") if _final_rows(d)]
            return done if len(done) >= 2 else []

        finished = _wait(two_finished, driver, "two finished trials")
        assert finished, (tmp_path / "first.log").read_text()[-3000:]
        # kill once the experiment snapshot (every 1 s here) records them as finished, so
        # --resume must not run them again (a fixed sleep did not always cover it under load)
        ids = {_trial_id(d) for d in finished}
        recorded = _wait(
            lambda: all(_snapshot_status(out / "tune").get(i) == "TERMINATED" for i in ids),
            driver,
            "snapshot of the finished trials",
        )
        assert recorded, "the study ended before it could be interrupted"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
        log1.close()
        assert driver.returncode == -signal.SIGKILL, "the study ended before the kill"
        before = {d.name for d in (out / "tune").glob("run_trial*") if _final_rows(d)}
        assert not (out / "results.parquet").exists()

        second = run_sweep(*args, "--resume", env=env, timeout=HANG_S)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert "[sweep] resuming" in second.stdout
        _check_study(out, before)

        # The kill's at-least-once windows, made certain. (1) A finished trial that the
        # snapshot still calls running is not trained again but replays its recorded row.
        # (2) A trial that finished after the last snapshot is unknown to the restored
        # experiment, whose searcher makes its configuration × seed again under a new id:
        # planted here as the other ok trial's row moved to an id the experiment never had,
        # that trial marked running — it must replay the moved row, not train.
        df = pd.read_parquet(out / "results.parquet")
        ok, other = df[(df.trial_id != "teacher") & (df.status == "ok")].iloc[:2].itertuples()
        weights = Path(ok.model_dir) / "model.safetensors"
        other_weights = Path(other.model_dir) / "model.safetensors"
        stamp, other_stamp = weights.stat().st_mtime_ns, other_weights.stat().st_mtime_ns
        _mark_running(out / "tune", ok.trial_id)
        _mark_running(out / "tune", other.trial_id)
        gone = f"{other.trial_id.split('_')[0]}_99999"
        (out / "trials" / f"{other.trial_id}.json").rename(out / "trials" / f"{gone}.json")
        third = run_sweep(*args, "--resume", env=env, timeout=HANG_S)
        assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
        assert "finished after the last snapshot" in third.stdout
        _check_study(out, before)
        again = pd.read_parquet(out / "results.parquet").set_index("trial_id")
        assert again.loc[other.trial_id, "replayed"] == True  # noqa: E712 (numpy bool)
        assert again.loc[other.trial_id, "replayed_from"] == gone
        assert again.loc[other.trial_id, "wall_s"] == other.wall_s
        assert again.loc[other.trial_id, "accuracy"] == other.accuracy
        assert other_weights.stat().st_mtime_ns == other_stamp  # not rebuilt
        assert again.loc[ok.trial_id, "replayed"] == True  # noqa: E712 (numpy bool)
        assert again.loc[ok.trial_id, "wall_s"] == ok.wall_s
        assert again.loc[ok.trial_id, "accuracy"] == ok.accuracy
        # the replayed row keeps its recorded in-trial latency; the phase times its student
        assert again.loc[ok.trial_id, "latency_in_trial_ms_p50"] == ok.latency_in_trial_ms_p50
        assert again.loc[ok.trial_id, "latency_phase"] == "serial"
        # the third run replayed only the trials marked running (the second may have replayed
        # one that finished as the driver died: see _trained_once)
        replayed = _replayed(pd.read_parquet(out / "results.parquet"))
        assert replayed == _replayed(df) | {ok.trial_id, other.trial_id}
        assert weights.stat().st_mtime_ns == stamp  # the student was not rebuilt
        (trial_dir,) = (out / "tune").glob(f"run_trial_{ok.trial_id}_*")
        assert _final_rows(trial_dir) == 2
    finally:
        kill_all(str(temp_dir))
    assert not alive_under(str(temp_dir))


def _replayed(df: pd.DataFrame) -> set[str]:
    """Trial ids whose row is a replay from the ledger (no column when none is)."""
    if "replayed" not in df:
        return set()
    return set(df.loc[df["replayed"].eq(True), "trial_id"])


def _check_study(out: Path, before: set[str]) -> None:
    """Exactly one row per configuration × seed, failures recorded, nothing trained twice."""
    df = pd.read_parquet(out / "results.parquet")
    assert df[df.status == "reference"].trial_id.tolist() == ["majority"]  # once, not per run
    trials = df[(df.trial_id != "teacher") & (df.status != "reference")]
    pairs = [
        (int(k), int(s))
        for k, s in zip(trials["pipeline.truncate.keep_layers"], trials.seed, strict=True)
    ]
    assert sorted(pairs) == sorted(EXPECTED)  # every configuration × seed exactly once
    assert trials.trial_id.is_unique
    # the trials finished before the kill were not run again (trained once each)
    known = set(trials.trial_id)
    for d in (out / "tune").glob("run_trial*"):
        if _trial_id(d) in known:
            assert _trained_once(d, out / "trials"), d.name
        else:
            _forgotten_once(d, out / "trials", trials)
    assert before <= {d.name for d in (out / "tune").glob("run_trial*")}
    # a raising configuration is a failed row with its error; the others are ok
    bad = trials[trials["pipeline.truncate.keep_layers"] == 9]
    assert (bad.status == "failed").all()
    assert bad.error.str.contains("keep_layers=9 exceeds the model's 6 layers").all()
    good = trials[trials["pipeline.truncate.keep_layers"] != 9]
    assert (good.status == "ok").all(), good.error.tolist()
    assert (good.student_layers == good["pipeline.truncate.keep_layers"]).all()
    # the latency phase after the (resumed) sweep timed every saved student; failures say why
    assert (good.latency_phase == "serial").all() and good.latency_ms_p50.notna().all()
    assert (bad.latency_phase == "none").all() and bad.latency_ms_p50.isna().all()
    assert bad.latency_reason.str.startswith("trial failed").all()
    man = json.loads((out / "manifest.json").read_text())
    assert man["latency"]["timed"] == 3  # the teacher and the two ok students
    assert man["trials"] == {"total": 4, "ok": 2, "failed": 2, "stopped": 0}
