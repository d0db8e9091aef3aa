"""End to end: the real CLI runs the ``smoke`` study on local Ray and writes every output."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from engine.config import load_study
from sweepcore.rundir import SCHEMA_VERSION
from tests.conftest import REPO, SMOKE_RUN, cli_env, run_sweep

# smoke_run: the session's one smoke run (tests/conftest.py)


@pytest.mark.slow
def test_smoke_writes_every_output(smoke_run) -> None:
    out, proc = smoke_run
    for name in (
        "results.parquet",
        "importance.parquet",
        "manifest.json",
        "report.md",
        "report.html",
        "bad_rows.jsonl",
        "study.json",
    ):
        assert (out / name).is_file(), name
    # the study as it started, which --resume must match
    started = load_study(SMOKE_RUN[0], list(SMOKE_RUN[1:])).model_dump(mode="json")
    assert json.loads((out / "study.json").read_text()) == started
    pngs = list(out.glob("*.png"))
    assert any("pareto" in p.name for p in pngs) and all(p.stat().st_size > 1000 for p in pngs)
    assert f"Run directory: {out}" in proc.stdout


@pytest.mark.slow
def test_smoke_results_contract(smoke_run) -> None:
    out, _ = smoke_run
    df = pd.read_parquet(out / "results.parquet")
    for col in (
        "trial_id",
        "seed",
        "status",
        "error",
        "wall_s",
        "device",
        "accuracy",
        "macro_f1",
        "gflops",
        "params",
        "weights_bytes",
        "latency_ms_p50",
        "latency_ms_p95",
        "pipeline.truncate.strategy",
        "pipeline.distill.temperature",
    ):
        assert col in df.columns, col
    teacher = df[df.trial_id == "teacher"]
    reference = df[df.status == "reference"]
    students = df[(df.trial_id != "teacher") & (df.status != "reference")]
    assert len(teacher) == 1
    # the task's baseline is a row too, with the figures the manifest reports for it
    manifest = json.loads((out / "manifest.json").read_text())
    assert reference.trial_id.tolist() == ["majority"]
    for metric, value in manifest["baselines"]["majority"].items():
        assert reference[metric].iloc[0] == pytest.approx(value)
    df = df[df.status != "reference"]
    assert len(students) == 4  # grid of 2 strategies × 2 seeds (conftest.SMOKE_RUN)
    assert set(students["pipeline.truncate.strategy"]) == {"fisher", "uniform"}
    assert (students.status == "ok").all(), students.error.tolist()
    for col in ("accuracy", "macro_f1", "gflops", "params", "latency_ms_p50"):
        assert all(math.isfinite(v) for v in df[col]), col
    assert (students.student_layers == 2).all() and int(teacher.student_layers.iloc[0]) == 6
    # a 2-of-6-layer student costs less than the teacher, by fvcore count on the built model
    assert (students.gflops < teacher.gflops.iloc[0]).all()
    assert (students.params < teacher.params.iloc[0]).all()
    assert (df.latency_ms_p95 >= df.latency_ms_p50).all()
    # latency: every row timed after the sweep under one stated condition (latency phase)
    assert (df.latency_phase == "serial").all(), df[["trial_id", "latency_reason"]]
    assert df.latency_reason.isna().all()
    assert (df.latency_threads == 1).all() and (df.latency_device == "cpu").all()
    for col in ("throughput_per_s", "latency_in_trial_ms_p50", "latency_in_trial_ms_p95"):
        assert df[col].map(math.isfinite).all(), col  # the trials' own figures, labelled
    assert df.throughput_per_s.to_numpy() == pytest.approx(16 / (df.latency_ms_p50 / 1e3))
    # on CPU: float32, no GPU ids, no out-of-memory retries
    assert (df.precision == "fp32").all() and (df.device == "cpu").all()
    assert (students.gpu_ids == "").all() and (students.oom_retries == 0).all()
    assert students.train_micro_batch_size.isna().all()


@pytest.mark.slow
def test_smoke_latency_phase_runs_after_the_trials(smoke_run) -> None:
    """The phase starts once every trial has written its final row, times the saved
    students and the teacher in one task on the whole node, and the report states the
    noise floor from the four identical 2-layer students (fisher and uniform, 2 seeds each)."""
    out, proc = smoke_run
    man = json.loads((out / "manifest.json").read_text())
    lat = man["latency"]
    started = dt.datetime.fromisoformat(lat["started"]).timestamp()
    ledger = list((out / "trials").glob("*.json"))
    assert len(ledger) == 4 and all(p.stat().st_mtime <= started for p in ledger)
    assert lat["finished"] >= lat["started"] and man["timings"]["latency_s"] > 0
    assert (lat["phase"], lat["timed"], lat["untimed"], lat["groups"]) == ("serial", 5, 0, 1)
    assert (lat["batch_size"], lat["warmup"], lat["repeats"], lat["threads"]) == (16, 1, 3, 1)
    assert lat["node_cpus"] >= 1 and lat["devices"] == ["cpu"]
    last_progress = proc.stdout.rindex("[progress]")  # the table printed as trials finish
    assert proc.stdout.index("[latency] timing the teacher and 4 trials") > last_progress
    section = (out / "report.md").read_text().split("## Latency and its noise floor")[1]
    assert "identical architectures (same GFLOPs, parameters and weight bytes)" in section
    assert "1 group(s), 4 models" in section.split("\n## ")[0]


@pytest.mark.slow
def test_smoke_importance_and_manifest(smoke_run) -> None:
    out, _ = smoke_run
    imp = pd.read_parquet(out / "importance.parquet")
    assert set(imp.method) >= {"fisher", "ablation"}
    for _, g in imp.groupby("method"):
        assert sorted(g.layer) == list(range(6))
        assert sorted(g["rank"]) == list(range(6))
    man = json.loads((out / "manifest.json").read_text())
    for key in ("git_commit", "packages", "config", "seeds", "data", "started", "finished"):
        assert key in man, key
    assert man["config"]["name"] == "smoke"
    assert man["schema"] == SCHEMA_VERSION  # the run-directory contract's version
    files = man["data"]["files"]
    assert files and all(len(f["sha256"]) == 64 for f in files)
    assert all(f["rows_kept"] > 0 for f in files)
    assert man["trials"] == {"total": 4, "ok": 4, "failed": 0, "stopped": 0}


@pytest.mark.slow
def test_missing_data_file_is_a_one_line_error(tmp_path: Path) -> None:
    proc = run_sweep(
        "smoke", "data.path=/nonexistent/reviews.csv", "--no-report", out=tmp_path / "run",
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: /nonexistent/reviews.csv: no such file or directory (looked in {REPO})"
    ]


PARETO_TINY = [
    "data.max_length=32",
    "data.train_size=160",
    "data.valid_size=48",
    "data.test_size=96",
    "teacher.epochs=1",
    "teacher.max_steps=5",
    "importance.num_batches=2",
    "importance.batch_size=16",
    "importance.cpus_per_actor=0.5",
    "pipeline.distill.max_steps=6",
    "pipeline.distill.batch_size=16",
    "search.report_every_steps=2",  # 6 steps: reports at 2, 4, 6 + the final row = 4 results
    "search.num_samples=4",
    "measure.latency_repeats=2",
    "measure.warmup=1",
    "measure.batch_size=16",
]


@pytest.mark.slow
def test_pareto_study_with_mo_asha_returns_only_non_dominated(
    tmp_path: Path, smoke_cache: Path
) -> None:
    """The shipped ``pareto`` study (multi-objective Optuna + MO-ASHA) at smoke sizes, whose
    data, teacher and importance are the smoke study's (found in its cache)."""
    out = tmp_path / "run"
    proc = run_sweep("pareto", *PARETO_TINY, out=out, env=cli_env(smoke_cache), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[progress]" in proc.stdout and "best valid_accuracy (max)" in proc.stdout
    assert "[sweep] Pareto set on valid_accuracy (max), gflops (min)" in proc.stdout
    df = pd.read_parquet(out / "results.parquet")
    trials = df[(df.trial_id != "teacher") & (df.status != "reference")]
    assert len(trials) == 4 and set(trials.status) <= {"ok", "stopped"}
    ok, stopped = trials[trials.status == "ok"], trials[trials.status == "stopped"]
    assert len(ok) >= 1
    assert (ok.iterations == 4).all() and (ok.step == 6).all()
    assert (stopped.iterations < 4).all()  # cut at a rung, last intermediate metrics kept
    for col in ("valid_accuracy", "gflops", "wall_s"):
        assert trials[col].map(math.isfinite).all(), col
    assert stopped.accuracy.isna().all()  # no test-set figure for a trial that was cut
    # the Pareto set: exactly the finished trials no other finished trial dominates
    on = set(ok[ok.on_front].trial_id)
    brute = {
        a.trial_id
        for a in ok.itertuples()
        if not any(
            b.valid_accuracy >= a.valid_accuracy
            and b.gflops <= a.gflops
            and (b.valid_accuracy > a.valid_accuracy or b.gflops < a.gflops)
            for b in ok.itertuples()
        )
    }
    assert on == brute and not trials[trials.status != "ok"].on_front.any()
    man = json.loads((out / "manifest.json").read_text())
    assert man["trials"]["total"] == 4 and man["trials"]["stopped"] == len(stopped)
    assert man["teacher"]["cached"] and all(
        man["cache"][p]["cached"] for p in ("data", "importance")
    )
