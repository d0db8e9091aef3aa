"""Latency noise floor (analysis/latency.py) on planted runs: the spread of identical
architectures timed in the serial phase, computed by hand, shown in the report beside the
latency figures and the arms' latency Δ."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.arms import beyond_noise
from analysis.latency import identical_architectures, noise_floor, noise_floor_text
from analysis.report import write_report
from analysis.rundir import load_run
from tests.analysis.test_arms import _write as write_arms_run

ARCH = ("student_layers", "gflops", "params", "weights_bytes")
TWO, FOUR = (2, 0.47, 13_837_829, 55_351_316), (4, 0.93, 18_276_677, 73_106_708)
FOUR_INT8 = (4, 0.93, 18_276_677, 29_000_000)  # same GFLOPs and params, int8 weights
# (trial_id, status, architecture, latency_phase, latency_device, latency_ms_p50)
PLANTED = [
    ("a1", "ok", TWO, "serial", "cpu", 100.0),
    ("a2", "ok", TWO, "serial", "cpu", 110.0),
    ("a3", "ok", TWO, "serial", "cpu", 120.0),
    ("a4", "ok", TWO, "serial", "cpu", 130.0),
    ("b1", "ok", FOUR, "serial", "cpu", 200.0),
    ("b2", "ok", FOUR, "serial", "cpu", 210.0),
    ("q1", "ok", FOUR_INT8, "serial", "cpu", 120.0),  # alone: another architecture
    ("g1", "ok", TWO, "serial", "NVIDIA H100", 5.0),  # alone: another device
    ("n1", "ok", TWO, "none", None, np.nan),  # not timed (e.g. no saved model)
    ("f1", "failed", TWO, "none", None, np.nan),
    ("teacher", "ok", (6, 1.397, 22_715_525, 90_862_100), "serial", "cpu", 300.0),
]


def _results() -> pd.DataFrame:
    rows = []
    for tid, status, arch, phase, device, p50 in PLANTED:
        rows.append(
            {
                "trial_id": tid,
                "seed": 0,
                "status": status,
                **dict(zip(ARCH, arch, strict=True)),
                "accuracy": 0.5,
                "latency_ms_p50": p50,
                "latency_ms_p95": p50 * 1.1,
                "latency_phase": phase,
                "latency_device": device,
                "latency_threads": 1 if phase == "serial" else None,
                "latency_reason": None if phase == "serial" else f"trial {status}: planted",
            }
        )
    return pd.DataFrame(rows)


def _run_dir(tmp_path: Path, df: pd.DataFrame, latency: dict | None = None) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    df.to_parquet(run_dir / "results.parquet", index=False)
    info = {"phase": "serial", "node": "vm", "batch_size": 32, "warmup": 2, "repeats": 5}
    manifest = {"config": {"name": "noise", "measure": {"batch_size": 32}}, "latency": info}
    manifest["latency"].update(latency or {})
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return run_dir


def test_noise_floor_is_the_widest_spread_of_identical_architectures() -> None:
    groups = identical_architectures(_results())
    assert [sorted(t.split(", ")) for t in groups["trials"]] == [
        ["a1", "a2", "a3", "a4"],
        ["b1", "b2"],
    ]  # widest first; singletons, untimed and failed rows left out
    assert groups["spread_ms"].tolist() == [30.0, 10.0]
    assert groups["spread_pct"].tolist() == pytest.approx([100 * 30 / 115, 100 * 10 / 205])
    assert groups["ratio"].tolist() == pytest.approx([1.3, 1.05])
    floor = noise_floor(_results())
    assert floor is not None
    assert (floor.spread_ms, floor.groups, floor.models) == (30.0, 2, 6)
    assert floor.spread_pct == pytest.approx(100 * 30 / 115) and floor.ratio == pytest.approx(1.3)


def test_report_states_the_noise_floor_beside_latency(tmp_path: Path) -> None:
    md = write_report(_run_dir(tmp_path, _results())).read_text()
    section = md.split("## Latency and its noise floor")[1].split("\n## ")[0]
    sentence = "differ in p50 by up to 30.00 ms (26 % of their median; 2 group(s), 6 models)"
    assert sentence in section
    assert "timed in turns, one forward at a time" in section
    assert "1 × trial failed: planted" in section and "1 × trial ok: planted" in section
    assert sentence in md.split("## Notes")[1]  # and in the note on how latency was measured


def test_without_identical_architectures_the_report_says_so(tmp_path: Path) -> None:
    df = _results()
    df = df[~df["trial_id"].isin(["a2", "a3", "a4", "b2"])]
    run = load_run(_run_dir(tmp_path, df, {"teacher_p50_by_group": [300.0, 330.0]}))
    assert noise_floor(run.results) is None
    text = noise_floor_text(run)
    assert "cannot show its latency noise floor" in text
    assert "2 groups, measured 300.00 to 330.00 ms (p50, 10 % apart)" in text


def test_a_run_with_in_trial_latency_only_is_flagged(tmp_path: Path) -> None:
    df = _results().drop(columns=["latency_phase", "latency_reason"])
    run = load_run(_run_dir(tmp_path, df))
    assert "timed inside each trial while other trials trained beside it" in noise_floor_text(run)


def test_arm_latency_deltas_are_judged_against_the_noise_floor(tmp_path: Path) -> None:
    # by hand: base = arm − Δ; beyond when |Δ| > floor % of the base
    assert beyond_noise(
        pd.Series([-6.5, -1.0, np.nan]), pd.Series([14.5, 20.0, 10.0]), floor_pct=10.0
    ) == ["yes", "no", "—"]
    run_dir = write_arms_run(tmp_path / "arms")
    df = pd.read_parquet(run_dir / "results.parquet")
    params = {0.93: 100, 0.47: 50, 0.55: 80, 1.397: 200}
    df["params"] = df["gflops"].map(params)
    df["weights_bytes"] = np.where(df["trial_id"] == "t8", 150, 400)  # t8: the int8 arm
    df["latency_phase"] = np.where(df["latency_ms_p50"].notna(), "serial", "none")
    df["latency_device"] = "cpu"
    df.to_parquet(run_dir / "results.parquet", index=False)
    # identical architectures: 0.93 float p50s 20, 22, 20, 20, 20 → 2 ms, 10 % of 20 (the
    # floor); 0.47: 11, 11; 0.55: 14, 15
    floor = noise_floor(load_run(run_dir).results)
    assert floor is not None and floor.spread_ms == 2.0 and floor.spread_pct == 10.0
    md = write_report(run_dir).read_text()
    section = md.split("## Extra configurations against their base")[1].split("\n## ")[0]
    assert "Δ latency beyond noise" in section and "up to 2.00 ms (10 % of their median" in section
    # prune arm: Δ −6.5 ms against a base of 21 ms (> 2.1); quantize arm: −11 against 20
    lines = [ln for ln in section.splitlines() if ln.startswith("| order = ")]
    assert len(lines) == 2 and all("| yes |" in ln for ln in lines), lines
