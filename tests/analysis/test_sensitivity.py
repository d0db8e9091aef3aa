"""The one-knob-at-a-time section (analysis/sensitivity.py) on a planted run directory: paired
deltas and intervals against a hand computation, knob ranking, trials with two knobs moved
kept out, failures counted, and the report section with its figure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.report import write_report
from analysis.rundir import load_run
from analysis.sensitivity import centre_values, knob_effects, knob_ranking

T_975_DF1 = 12.706204736  # Student t quantile 0.975, 1 degree of freedom (t tables)
TEMP, KEEP = "pipeline.distill.temperature", "pipeline.truncate.keep_ratio"
ORDER = "pipeline.order"

# (temperature, keep_ratio, seed, accuracy, gflops); centre = (2.0, 0.5)
PLANTED = [
    (2.0, 0.5, 0, 0.60, 0.70),
    (2.0, 0.5, 1, 0.62, 0.70),
    (1.0, 0.5, 0, 0.55, 0.70),
    (1.0, 0.5, 1, 0.59, 0.70),
    (4.0, 0.5, 0, 0.65, 0.70),
    (4.0, 0.5, 1, 0.66, 0.70),
    (2.0, 0.34, 0, 0.50, 0.47),
    (2.0, 0.34, 1, 0.52, 0.47),
    (2.0, 0.84, 0, 0.63, 1.16),
    (2.0, 0.84, 1, 0.64, 1.16),
    (4.0, 0.34, 0, 0.99, 0.10),  # two knobs moved: belongs to neither knob
]


def _write_sensitivity_run(run_dir: Path, algorithm: str = "one_at_a_time") -> Path:
    run_dir.mkdir(parents=True)
    rows = [
        {"trial_id": "teacher", "seed": 0, "status": "ok", TEMP: 2.0, KEEP: 0.5,
         "accuracy": 0.70, "gflops": 1.397},
    ]  # fmt: skip
    for i, (t, k, s, acc, gf) in enumerate(PLANTED):
        rows.append({"trial_id": f"t{i:02d}", "seed": s, "status": "ok", TEMP: t, KEEP: k,
                     "accuracy": acc, "gflops": gf})  # fmt: skip
    # a search.extra arm at the centre's knob values, moved elsewhere: not the centre
    rows.append({"trial_id": "t98", "seed": 0, "status": "ok", TEMP: 2.0, KEEP: 0.5,
                 ORDER: "truncate,distill,prune", "accuracy": 0.99, "gflops": 0.01})  # fmt: skip
    rows.append({"trial_id": "t99", "seed": 2, "status": "failed", TEMP: 4.0, KEEP: 0.5,
                 "accuracy": np.nan, "gflops": np.nan, "error": "RuntimeError: planted"})  # fmt: skip
    df = pd.DataFrame(rows)
    df[ORDER] = df[ORDER].fillna("truncate,distill")
    df.to_parquet(run_dir / "results.parquet", index=False)
    config = {
        "name": "sens",
        "pipeline": {
            "order": ["truncate", "distill"],
            "distill": {"temperature": 2.0},
            "truncate": {"keep_ratio": 0.5},
        },
        "search": {
            "algorithm": algorithm,
            "space": {TEMP: [1.0, 4.0], KEEP: [0.34, 0.84]},
            "extra": [{ORDER: ["truncate", "distill", "prune"]}],
        },
        "report": {"quality_metric": "accuracy", "cost_metric": "gflops"},
    }
    (run_dir / "manifest.json").write_text(json.dumps({"config": config, "seeds": [0, 1, 2]}))
    return run_dir


def _row(effects: pd.DataFrame, knob: str, value: float) -> pd.Series:
    (i,) = np.flatnonzero((effects["knob"] == knob) & np.isclose(effects["value"], value))
    return effects.iloc[i]


def test_paired_deltas_match_hand_computation(tmp_path: Path) -> None:
    run = load_run(_write_sensitivity_run(tmp_path / "run"))
    assert centre_values(run) == {TEMP: 2.0, KEEP: 0.5}
    eff = knob_effects(run, "accuracy", "gflops")
    # each knob: its two values plus the centre, nothing from the two-knob trial
    assert sorted(eff.groupby("knob").size().items()) == [(TEMP, 3), (KEEP, 3)]
    hot = _row(eff, TEMP, 4.0)
    # seed 0: 0.65 - 0.60, seed 1: 0.66 - 0.62; the failed seed 2 has no pair
    assert (hot["n"], hot["n_failed"], hot["n_pairs"]) == (2, 1, 2)
    assert hot["d_accuracy_mean"] == pytest.approx(0.045)
    half = T_975_DF1 * math.sqrt(((0.05 - 0.045) ** 2 + (0.04 - 0.045) ** 2) / 1) / math.sqrt(2)
    assert hot["d_accuracy_ci_low"] == pytest.approx(0.045 - half)
    assert hot["d_accuracy_ci_high"] == pytest.approx(0.045 + half)
    assert hot["accuracy_mean"] == pytest.approx(0.655)
    small = _row(eff, KEEP, 0.34)
    assert small["d_accuracy_mean"] == pytest.approx(-0.10)
    assert small["d_gflops_mean"] == pytest.approx(-0.23)
    # the two seeds lost exactly 0.10 each: a zero-width interval
    assert small["d_accuracy_ci_low"] == pytest.approx(-0.10)
    for knob in (TEMP, KEEP):
        centre = eff[(eff["knob"] == knob) & eff["centre"]]
        assert len(centre) == 1 and centre["d_accuracy_mean"].iloc[0] == pytest.approx(0.0)
        assert centre["accuracy_mean"].iloc[0] == pytest.approx(0.61)

    ranking = knob_ranking(eff, "accuracy", "gflops")
    assert ranking["knob"].tolist() == [
        "truncate.keep_ratio",
        "distill.temperature",
    ]  # |−0.10| beats |0.045|
    assert ranking["max |Δ accuracy|"].tolist() == pytest.approx([0.10, 0.045])
    assert ranking["best accuracy at"].tolist() == pytest.approx([0.84, 4.0])
    assert ranking.set_index("knob").loc["truncate.keep_ratio", "Δ gflops range"] == "-0.23 … +0.46"


def test_report_has_the_section_and_figure_only_for_one_at_a_time(tmp_path: Path) -> None:
    run_dir = _write_sensitivity_run(tmp_path / "oat")
    md = write_report(run_dir).read_text()
    section = md.split("## Sensitivity: one knob at a time")[1].split("\n## ")[0]
    assert "`distill.temperature` = 2.0" in section and "`truncate.keep_ratio` = 0.5" in section
    assert "| truncate.keep_ratio | 0.34 | 2 | 0 |" in section
    assert "0.5 (centre)" in section
    assert "![sensitivity](sensitivity.png)" in section
    png = (run_dir / "sensitivity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    grid_dir = _write_sensitivity_run(tmp_path / "grid", algorithm="grid")
    md = write_report(grid_dir).read_text()
    assert "Sensitivity" not in md and not (grid_dir / "sensitivity.png").exists()
