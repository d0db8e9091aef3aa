"""analysis.report_answer: the report's opening answer on a planted run — a knob with a large
effect and one with none, 4 seeds each — checked against scipy's t quantile and a brute-force
Pareto set, not against the analysis code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.render import Para, Table
from analysis.report_answer import answer_blocks, knob_verdicts
from analysis.rundir import load_run

TEACHER_ACC = 0.80
SEEDS = (0, 1, 2, 3)


def _planted(run_dir: Path) -> pd.DataFrame:
    """keep_layers 4 → accuracy ≈ 0.75, 2 → ≈ 0.55 (± 0.01 by seed); temperature has no
    effect; gflops is set by keep_layers alone (4: 1.0, 2: 0.5)."""
    rng = np.random.default_rng(0)
    rows = [
        {"trial_id": "teacher", "seed": 0, "status": "ok", "accuracy": TEACHER_ACC,
         "gflops": 1.5, "pipeline.truncate.keep_layers": 6, "pipeline.distill.temperature": 2.0}
    ]  # fmt: skip
    for layers, base in ((4, 0.75), (2, 0.55)):
        for temp in (1.0, 4.0):
            for seed in SEEDS:
                rows.append(
                    {
                        "trial_id": f"t{layers}_{temp}_{seed}",
                        "config_id": f"c{layers}_{temp}",
                        "seed": seed,
                        "status": "ok",
                        "accuracy": base + rng.uniform(-0.01, 0.01),
                        "gflops": layers / 4,
                        "pipeline.truncate.keep_layers": layers,
                        "pipeline.distill.temperature": temp,
                    }
                )
    df = pd.DataFrame(rows)
    run_dir.mkdir(parents=True)
    df.to_parquet(run_dir / "results.parquet", index=False)
    manifest = {"config": {"name": "planted", "report": {"quality_metric": "accuracy",
                                                         "cost_metric": "gflops"}},
                "seeds": list(SEEDS)}  # fmt: skip
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return df


def _t_interval(x: np.ndarray) -> tuple[float, float]:
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return x.mean() - half, x.mean() + half


def test_knob_verdicts_find_the_planted_effect(tmp_path: Path) -> None:
    df = _planted(tmp_path / "run")
    v = knob_verdicts(
        df, ["pipeline.truncate.keep_layers", "pipeline.distill.temperature"], "accuracy"
    ).set_index("knob")["verdict"]
    assert v["pipeline.truncate.keep_layers"] == "beyond noise"
    assert v["pipeline.distill.temperature"] == "within noise"


def test_answer_names_the_front_and_its_retention(tmp_path: Path) -> None:
    df = _planted(tmp_path / "run")
    run = load_run(tmp_path / "run")
    varying = ["pipeline.truncate.keep_layers", "pipeline.distill.temperature"]
    blocks = answer_blocks(run, varying, "accuracy", "gflops")
    table = next(b for b in blocks if isinstance(b, Table)).df
    # brute force: a configuration (seed means) is on the front when no other is at least as
    # good on both and better on one
    means = df[df.trial_id != "teacher"].groupby("config_id")[["accuracy", "gflops"]].mean()
    front = [
        c
        for c, r in means.iterrows()
        if not any(
            (o.accuracy >= r.accuracy and o.gflops <= r.gflops)
            and (o.accuracy > r.accuracy or o.gflops < r.gflops)
            for _, o in means.drop(index=c).iterrows()
        )
    ]
    assert sorted(table["config_id"]) == sorted(front)
    for _, row in table.iterrows():
        x = df.loc[df.config_id == row["config_id"], "accuracy"].to_numpy()
        lo, hi = _t_interval(x)
        assert row["of teacher"] == f"{x.mean() / TEACHER_ACC:.1%}"
        assert row["of teacher, interval"] == f"[{lo / TEACHER_ACC:.1%}, {hi / TEACHER_ACC:.1%}]"
    text = " ".join(b.text for b in blocks if isinstance(b, Para))
    assert "beyond noise on accuracy: `truncate.keep_layers`." in text


@pytest.mark.parametrize("drop", ["accuracy", "gflops"])
def test_answer_says_when_a_column_is_missing(tmp_path: Path, drop: str) -> None:
    df = _planted(tmp_path / "run")
    df.drop(columns=[drop]).to_parquet(tmp_path / "run" / "results.parquet", index=False)
    blocks = answer_blocks(load_run(tmp_path / "run"), [], "accuracy", "gflops")
    assert any(isinstance(b, Para) and "missing" in b.text for b in blocks)
