"""The prepared GPU check (``bench/gpu_check.sh``) cannot rot: its dry run (CPU, tiny sizes)
runs every step here and writes real figures; a broken interpreter fails every step with a
reason while the summary is still written; the utilisation statistics match numpy's."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from gpu_check import STATUSES, STEPS, UtilSampler, markdown  # noqa: E402

STEP_NAMES = [s.name for s in STEPS]


def _run(out: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    return subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(out), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _finite_positive(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_real_figures(tmp_path: Path) -> None:
    proc = _run(tmp_path, timeout=1900)
    summary = json.loads((tmp_path / "summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == STEP_NAMES
    assert all(s["status"] in STATUSES for s in steps.values())
    bad = {n: s.get("reason") for n, s in steps.items() if s["status"] != "ok"}
    assert not bad and proc.returncode == 0, (bad, proc.stdout[-3000:], proc.stderr[-3000:])
    assert summary["dry_run"] is True

    env = steps["env"]["result"]
    assert env["cuda_available"] in (True, False) and env["install"]["status"].startswith("skipped")

    pt = steps["pytest_gpu"]["result"]  # the GPU tests exist and are skipped on this CPU
    assert pt["tests"] >= 5 and pt["skipped"] + pt["passed"] == pt["tests"]
    assert {c["test"].split("::")[0] for c in pt["cases"]} >= {"test_quantize", "test_latency"}

    trials = steps["smoke"]["result"]["trials"]
    assert [t["trial_id"] == "teacher" for t in trials].count(True) == 1 and len(trials) == 3
    for t in trials:
        assert t["status"] == "ok" and t["device"] == "cpu" and t["precision"] == "fp32"
        assert _finite_positive(t["gflops"]) and _finite_positive(t["latency_ms_p50"])
        # timed in the sweep's latency phase (saved students reloaded), on the run's device
        assert t["latency_phase"] == "serial" and t["latency_device"] == "cpu"
        assert 0.0 <= t["accuracy"] <= 1.0
    assert all(t["oom_retries"] == 0 for t in trials if t["trial_id"] != "teacher")

    util = steps["gpu_util"]["result"]
    assert util["source"] == "cpu_proc_stat" and util["window"] == "trials"
    assert util["samples"] >= 3 and 0.0 <= util["mean_busy"] <= 1.0
    assert 0.0 <= util["p10_busy"] <= util["p50_busy"] <= util["max_busy"] <= 1.0
    assert _finite_positive(util["trials_s"])

    imp = steps["importance"]["result"]
    assert _finite_positive(imp["plain"]["samples_per_s"])
    for k in ("fisher", "four"):
        assert _finite_positive(imp[k]["ratio_to_plain_median"])
        assert isinstance(imp["goal_met"][k], bool)
    assert set(imp["ten_methods"]["per_method"]) >= {"fisher", "ablation", "conductance"}
    assert all(_finite_positive(v["s"]) for v in imp["ten_methods"]["per_method"].values())

    rows = {r["variant"]: r for r in steps["inference"]["result"]["rows"]}
    assert set(rows) == {"fp32", "bf16", "bnb_int8", "bnb_nf4", "pruned_bf16"}
    for r in rows.values():
        assert r["status"] in ("ok", "skipped")
        if r["status"] == "ok":
            assert r["latency_ms_p50"] <= r["latency_ms_p95"]
            assert _finite_positive(r["latency_ms_p50"]) and _finite_positive(r["peak_mem_bytes"])
        else:
            assert r["reason"]
    for v in ("fp32", "bf16", "pruned_bf16"):
        assert rows[v]["status"] == "ok"
    assert rows["bf16"]["weights_bytes"] * 2 == pytest.approx(rows["fp32"]["weights_bytes"], 0.01)
    assert rows["pruned_bf16"]["params"] < rows["bf16"]["params"]

    md = (tmp_path / "summary.md").read_text()
    assert "dry run" in md
    for name in STEP_NAMES:
        assert f"| {name} | ok |" in md
    assert "| bnb_nf4 |" in md and "Utilisation while the trials ran" in md
    assert (tmp_path / "gpu_check.log").stat().st_size > 0


def test_every_step_fails_with_a_reason_and_the_summary_is_still_written(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--python", "/bin/false", timeout=300)
    assert proc.returncode == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == STEP_NAMES
    for name, s in steps.items():
        assert s["status"] == "failed" and s["reason"], name
    assert "exited with 1" in steps["env"]["reason"]
    assert "smoke step did not run" in steps["gpu_util"]["reason"]
    for name in STEP_NAMES:
        assert f"FAILED step {name}:" in proc.stdout
    assert "| env | failed |" in (tmp_path / "summary.md").read_text()


def test_a_spent_budget_skips_the_steps_and_fails_the_run(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--budget-s", "1", "--steps", "env,importance", timeout=120)
    steps = {s["name"]: s for s in json.loads((tmp_path / "summary.json").read_text())["steps"]}
    assert {n: s["status"] for n, s in steps.items()} == dict.fromkeys(STEP_NAMES, "skipped")
    assert "out of time budget" in steps["env"]["reason"]
    assert "not asked for" in steps["smoke"]["reason"]
    assert proc.returncode == 1  # asked-for steps that did not run are not a pass


def test_util_stats_match_numpy_on_planted_samples() -> None:
    s = UtilSampler.__new__(UtilSampler)  # no source needed to summarise samples
    s.source, s.period_s = "planted", 0.5
    rng = np.random.default_rng(0)
    busy = rng.uniform(0, 1, 200)
    s.samples = [(float(t), float(b), None) for t, b in enumerate(busy)]
    inside = busy[50:151]  # t in [50, 150]
    got = s.stats(50, 150)
    assert got["samples"] == len(inside)
    assert got["mean_busy"] == pytest.approx(float(inside.mean()))
    assert got["p10_busy"] == pytest.approx(float(np.percentile(inside, 10)))
    assert got["p50_busy"] == pytest.approx(float(np.median(inside)))
    assert got["max_busy"] == pytest.approx(float(inside.max()))


def test_markdown_shows_failures_and_skipped_variants() -> None:
    summary = {
        "dry_run": False, "started": "t", "elapsed_s": 3.0, "budget_s": 480.0, "host": "h",
        "steps": [
            {"name": "env", "status": "failed", "seconds": 1.0, "reason": "StepError: no CUDA"},
            {"name": "inference", "status": "ok", "seconds": 2.0, "result": {
                "settings": {"model": "bert-base", "batch": 64, "seq": 128, "repeats": 30,
                             "warmup": 5, "device_name": "H100"},
                "rows": [
                    {"variant": "bf16", "status": "ok", "latency_ms_p50": 6.0,
                     "latency_ms_p95": 6.5, "peak_mem_bytes": 3 * 2**20,
                     "weights_bytes": 2**20, "latency_vs_bf16": 1.0, "peak_mem_vs_bf16": 1.0},
                    {"variant": "bnb_int8", "status": "skipped", "reason": "ValueError: no bnb"},
                ]}},
        ],
    }  # fmt: skip
    md = markdown(summary)
    assert "| env | failed | 1.0 | StepError: no CUDA |" in md
    assert "| bf16 | 6.00 | 6.50 | 3.0 | 1.0 | 1.00 | 1.00 |" in md
    assert "| bnb_int8 | skipped: ValueError: no bnb |" in md
