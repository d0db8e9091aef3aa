"""End to end: the real CLI runs the ``smoke-rec`` study (next-item on MovieLens-100K) and
every figure of the ranking columns can be recomputed from the per-user rankings it wrote."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ranking_metrics_by_definition, run_sweep


@pytest.fixture(scope="module")
def rec_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("smoke-rec") / "run"
    proc = run_sweep("smoke-rec", out=out, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


@pytest.mark.slow
def test_smoke_rec_rows_rankings_and_reference(rec_run) -> None:
    out, _ = rec_run
    df = pd.read_parquet(out / "results.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"]["name"] == "next_item"
    assert manifest["task"]["quality_metric"] == "ndcg_at_10"
    trials = df[(df.trial_id != "teacher") & (df.status != "reference")]
    assert len(trials) == 2 and (trials.status == "ok").all(), trials.error.tolist()
    assert set(df.loc[df.status != "reference", "ranking"]) == {"full"}
    n_test = manifest["data"]["stats"]["split_sizes"]["test"]
    for trial_id in ["teacher", *trials.trial_id]:
        ranks = pd.read_parquet(out / "rankings" / f"{trial_id}.parquet")
        assert len(ranks) == n_test and ranks.user_id.is_unique
        assert (ranks["rank"] < ranks["candidates"]).all()
        row = df[df.trial_id == trial_id].iloc[0]
        for metric, value in ranking_metrics_by_definition(ranks["rank"].to_numpy()).items():
            assert row[metric] == pytest.approx(value, abs=1e-9), (trial_id, metric)
    # the popularity reference row carries the manifest's figures, full and sampled
    pop = df[df.trial_id == "popularity"].iloc[0]
    assert pop.status == "reference"
    for metric, value in manifest["baselines"]["popularity"].items():
        assert pop[metric] == (value if isinstance(value, str) else pytest.approx(value))
    assert pop["sampled_ranking"] == "sampled-100"
    # sampled-100 ranks among 101 candidates; the full ranking among ~1.6k: never easier
    assert (df["sampled_hr_at_10"] >= df["hr_at_10"]).all()
    # truncated students (3 of 6 blocks) cost less than the teacher by fvcore's count
    teacher = df[df.trial_id == "teacher"].iloc[0]
    assert (trials.gflops < teacher.gflops).all() and (trials.student_layers == 3).all()


@pytest.mark.slow
def test_smoke_rec_report_states_the_protocol_and_both_figures(rec_run) -> None:
    out, _ = rec_run
    report = (out / "report.md").read_text()
    assert "Ranking protocol: **full**" in report
    assert "hr_at_10 (sampled-100)" in report and "popularity (reference)" in report
    assert "## Retention of the teacher (test users resampled)" in report


@pytest.mark.slow
def test_the_teacher_is_selected_on_validation_and_says_so(rec_run) -> None:
    """``next_item`` teachers stop early by default: the run records the selection (its
    evaluations, the step kept) and the terminal and the report say it in one sentence."""
    out, proc = rec_run
    t = json.loads((out / "manifest.json").read_text())["teacher"]["metrics"]["training"]
    assert t["selection_metric"] == "valid_ndcg_at_10"
    values = [v for _, v in t["evaluations"]]
    assert values and t["best_value"] == max(values)
    assert [s for s, _ in t["evaluations"]][-1] == t["steps_run"]  # the last step is scored
    assert any(
        line.startswith("[teacher] ") and f"kept step {t['best_step']}" in line
        for line in proc.stdout.splitlines()
    ), proc.stdout[-2000:]
    teacher = (out / "report.md").read_text().split("## Teacher and baseline")[1]
    assert "Teacher training: " in teacher.split("\n## ")[0]
