"""Extra configurations against their base (analysis/arms.py) on a planted ablation-like run:
the base is the grid point an arm departs from (not a look-alike), deltas are paired by seed
and match a hand computation, and an arm that only sets searched keys has no base."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.arms import arm_effects
from analysis.report import write_report
from analysis.rundir import load_run

STRAT, KEEP, ORDER = "pipeline.truncate.strategy", "pipeline.truncate.keep_ratio", "pipeline.order"
TD, TDP, TDQ = "truncate,distill", "truncate,distill,prune", "truncate,distill,quantize"
T_975_DF1 = 12.706204736  # Student t quantile 0.975, 1 degree of freedom (t tables)

# (strategy, keep_ratio, order, seed, accuracy, gflops, latency_ms_p50)
PLANTED = [
    ("fisher", 0.67, TD, 0, 0.60, 0.93, 20.0),  # the base of both arms
    ("fisher", 0.67, TD, 1, 0.64, 0.93, 22.0),
    ("uniform", 0.67, TD, 0, 0.90, 0.93, 20.0),  # same order and keep ratio: not the base
    ("uniform", 0.67, TD, 1, 0.90, 0.93, 20.0),
    ("fisher", 0.34, TD, 0, 0.50, 0.47, 11.0),
    ("fisher", 0.34, TD, 1, 0.52, 0.47, 11.0),
    ("fisher", 0.67, TDP, 0, 0.58, 0.55, 14.0),  # pruning on
    ("fisher", 0.67, TDP, 1, 0.61, 0.55, 15.0),
    ("fisher", 0.67, TDQ, 0, 0.60, 0.93, 9.0),  # quantization on; seed 1 failed below
    ("random", 0.67, TD, 0, 0.55, 0.93, 20.0),  # an extra search point: no base
]


def _write(run_dir: Path) -> Path:
    run_dir.mkdir(parents=True)
    cols = (STRAT, KEEP, ORDER, "seed", "accuracy", "gflops", "latency_ms_p50")
    rows = [{"trial_id": f"t{i}", "status": "ok", **dict(zip(cols, r, strict=True))}
            for i, r in enumerate(PLANTED)]  # fmt: skip
    rows.append({"trial_id": "t99", "status": "failed", STRAT: "fisher", KEEP: 0.67,
                 ORDER: TDQ, "seed": 1, "accuracy": np.nan, "gflops": np.nan})  # fmt: skip
    rows.append({"trial_id": "teacher", "status": "ok", STRAT: "fisher", KEEP: 0.5, ORDER: TD,
                 "seed": 0, "accuracy": 0.66, "gflops": 1.397})  # fmt: skip
    pd.DataFrame(rows).to_parquet(run_dir / "results.parquet", index=False)
    config = {
        "name": "arms",
        "pipeline": {"order": ["truncate", "distill"],
                     "truncate": {"strategy": "fisher", "keep_ratio": 0.5}},
        "search": {
            "algorithm": "grid",
            "space": {STRAT: ["fisher", "uniform"], KEEP: [0.34, 0.67]},
            "extra": [
                {KEEP: 0.67, ORDER: ["truncate", "distill", "prune"]},
                {KEEP: 0.67, ORDER: ["truncate", "distill", "quantize"]},
                {STRAT: "random", KEEP: 0.67},
            ],
        },
    }  # fmt: skip
    (run_dir / "manifest.json").write_text(json.dumps({"config": config}))
    return run_dir


def test_arms_pair_with_the_grid_point_they_depart_from(tmp_path: Path) -> None:
    eff = arm_effects(load_run(_write(tmp_path / "run"))).set_index("arm")
    prune = eff.loc[f"order = {TDP}"]
    assert prune["base"] == "truncate.strategy = fisher; truncate.keep_ratio = 0.67"
    assert (prune["n"], prune["n_base"], prune["n_pairs"]) == (2, 2, 2)
    # seed 0: 0.58 - 0.60, seed 1: 0.61 - 0.64 (the uniform look-alike at 0.90 is not the base)
    assert prune["d_accuracy_mean"] == pytest.approx(-0.025)
    half = T_975_DF1 * math.sqrt(2 * 0.005**2) / math.sqrt(2)
    assert prune["d_accuracy_ci_low"] == pytest.approx(-0.025 - half)
    assert prune["d_gflops_mean"] == pytest.approx(-0.38)
    assert prune["d_latency_ms_p50_mean"] == pytest.approx(((14 - 20) + (15 - 22)) / 2)
    quant = eff.loc[f"order = {TDQ}"]
    assert (quant["n"], quant["n_failed"], quant["n_pairs"]) == (1, 1, 1)
    assert quant["d_accuracy_mean"] == pytest.approx(0.0)
    assert quant["d_latency_ms_p50_mean"] == pytest.approx(-11.0)
    assert math.isnan(quant["d_accuracy_ci_low"])  # one pair: no interval
    point = eff.loc["truncate.strategy = random; truncate.keep_ratio = 0.67"]
    assert pd.isna(point["base"]) and point["n"] == 1 and math.isnan(point["d_accuracy_mean"])


def test_report_section(tmp_path: Path) -> None:
    md = write_report(_write(tmp_path / "run")).read_text()
    section = md.split("## Extra configurations against their base")[1].split("\n## ")[0]
    assert (
        f"| order = {TDP} | truncate.strategy = fisher; truncate.keep_ratio = 0.67 | 2 | 2 |"
        in (section)
    )
    assert section.count("| order = ") == 2
