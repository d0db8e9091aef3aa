"""The time-to-front bench's clocks and hypervolume curve on planted trials whose schedule and
front are worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bench.time_to_front import curve, wall_clock


def test_each_trial_takes_the_earliest_free_slot_after_the_gap() -> None:
    # 2 slots: 10 on slot 1 from 0; 4 on slot 2 from 0; 3 after the 4 (+ gap); 5 after that
    assert wall_clock([10, 4, 3, 5], slots=2, gap=0.0) == [10, 4, 7, 12]
    assert wall_clock([10, 4, 3, 5], slots=2, gap=1.0) == [11, 5, 9, 15]
    assert wall_clock([2, 2, 2], slots=1, gap=0.5) == [2.5, 5.0, 7.5]


def test_the_curve_counts_finished_trials_and_every_second_spent() -> None:
    # A [0, 10] ok at (0.5 acc, 0.2 GFLOPs); B [0, 4] stopped at (0.9, 0.1): never on the
    # front; C [4, 7] ok at (0.8, 0.6). Reference (0 acc, 1.0 GFLOPs).
    trials = pd.DataFrame(
        {
            "charged_s": [10.0, 4.0, 3.0],
            "status": ["ok", "stopped", "ok"],
            "valid_accuracy": [0.5, 0.9, 0.8],
            "gflops": [0.2, 0.1, 0.6],
        }
    )
    c = curve(trials, ref=(0.0, 1.0), slots=2, gap=0.0)
    assert list(c["wall_s"]) == [4.0, 7.0, 10.0]  # B, C, A end in that order
    # trial-seconds spent by then: at 4, A 4 + B 4; at 7, A 7 + B 4 + C 3; at 10, all
    assert list(c["trial_s"]) == pytest.approx([8.0, 14.0, 17.0])
    # hypervolume: nothing ok; C alone: (1 - 0.6) × 0.8; A and C: A's 0.8 × 0.5 + C's
    # strip above it, 0.4 × (0.8 - 0.5)
    assert list(c["hypervolume"]) == pytest.approx([0.0, 0.32, 0.4 + 0.12])


def _planted_grid(root: Path) -> dict[str, dict]:
    """A grid run directory with one Tune ``result.json`` per point of the space: 6 reports a
    trial (5 intermediate, then the final row), each 10 s after the last; accuracy rises with
    depth and distillation weight, GFLOPs = 0.25 × depth."""
    import itertools
    import json

    from bench.time_to_front import SPACE

    planted = {}
    keys = list(SPACE)
    for i, vals in enumerate(itertools.product(*SPACE.values())):
        values = dict(zip(keys, vals, strict=True))
        depth, alpha = (
            values["pipeline.truncate.keep_layers"],
            values["pipeline.distill.alpha_distill"],
        )
        final = 0.5 + 0.03 * depth + 0.01 * alpha
        lines = []
        for r in range(6):
            acc = final - 0.02 * (5 - r) * (1 if depth > 3 else 2)
            line = {"config": {"values": values}, "valid_accuracy": acc, "gflops": 0.25 * depth}
            line["time_total_s"] = 10.0 * (r + 1)
            if r == 5:
                line["status"] = "ok"
            lines.append(line)
        d = root / "tune" / f"run_trial_{i:05d}"
        d.mkdir(parents=True)
        (d / "result.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        planted[json.dumps({k: values[k] for k in sorted(values)}, sort_keys=True)] = lines
    return planted


@pytest.mark.slow  # a few dozen replayed trials on a real Ray Tune: ~30 s
def test_replayed_searches_report_the_table_and_charge_what_they_ran(
    ray_local, tmp_path: Path
) -> None:
    from bench.time_to_front import load_table, replay

    planted = _planted_grid(tmp_path / "grid")
    assert len(load_table(tmp_path / "grid")) == len(planted) == 162
    # random search, 12 samples: every trial reports its point's final row, charged 60 s
    rows = replay(tmp_path / "grid", "random", 0, 12, 1000.0, tmp_path / "tune")
    assert len(rows) == 12 and set(rows["status"]) == {"ok"}
    for _, r in rows.iterrows():
        final = planted[r["values"]][-1]
        assert (r["valid_accuracy"], r["gflops"], r["charged_s"]) == pytest.approx(
            (final["valid_accuracy"], final["gflops"], 60.0)
        )
    # multi-objective Optuna + MO-ASHA (the study's grace 2, reduction 3: rungs at 2 and 6
    # results): a stopped trial is charged up to its last report, i.e. 20 s, with the
    # figures it had there
    rows = replay(tmp_path / "grid", "optuna_mo+mo_asha", 1, 24, 1000.0, tmp_path / "tune2")
    stopped = rows[rows["status"] == "stopped"]
    assert len(stopped) > 0 and (rows["status"] == "ok").any()
    for _, r in stopped.iterrows():
        second = planted[r["values"]][1]
        assert (r["charged_s"], r["valid_accuracy"]) == pytest.approx(
            (20.0, second["valid_accuracy"])
        )
    # a budget ends the search once its trials were charged that many seconds
    rows = replay(tmp_path / "grid", "random", 2, 50, 1000.0, tmp_path / "tune3", budget=300.0)
    assert 300.0 <= rows["charged_s"].sum() < 300.0 + 3 * 60.0
