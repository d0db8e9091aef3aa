"""What a run directory says about its task: metric directions from ``manifest["task"]``,
classification for runs written before it existed."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis.rundir import load_run


def _run_dir(tmp_path: Path, manifest: dict | None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"trial_id": ["teacher", "0"], "gflops": [2.0, 1.0]}).to_parquet(
        tmp_path / "results.parquet", index=False
    )
    if manifest is not None:
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_directions_come_from_the_manifest_task(tmp_path: Path) -> None:
    task = {
        "name": "rating_regression",
        "metrics": {"rmse": "min"},
        "objectives": [["valid_rmse", "min"], ["gflops", "min"]],
        "quality_metric": "rmse",
    }
    run = load_run(_run_dir(tmp_path, {"task": task, "config": {}}))
    assert run.quality_metrics == {"rmse": "min"}
    assert run.quality_metric == "rmse"
    assert run.quality_direction == "min"
    assert run.metric_directions["gflops"] == "min"
    assert run.metric_directions["latency_ms_p95"] == "min"
    assert "accuracy" not in run.metric_directions


def test_old_runs_without_a_task_are_classification(tmp_path: Path) -> None:
    for manifest in (None, {"config": {"report": {"quality_metric": "macro_f1"}}}):
        run = load_run(_run_dir(tmp_path / str(manifest is None), manifest))
        assert run.quality_metrics == {"accuracy": "max", "macro_f1": "max"}
        assert run.quality_direction == "max"
    assert run.quality_metric == "macro_f1"
    assert load_run(tmp_path / "True").quality_metric == "accuracy"


def test_analysis_does_not_import_engine() -> None:
    import subprocess
    import sys

    code = "import sys, analysis.rundir; print(any(m.startswith('engine') for m in sys.modules))"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_a_stage_setting_applies_only_where_its_stage_ran() -> None:
    """``pipeline.order`` as the engine writes it (comma-joined) or as a list (older runs);
    a column of no stage applies everywhere; the teacher (no order) runs no stage."""
    from analysis.rundir import applied, blank_unapplied

    df = pd.DataFrame(
        {
            "pipeline.order": ["truncate,distill", ["prune", "distill"], "prune,quantize", None],
            "pipeline.truncate.keep_ratio": [0.5, 0.67, 0.67, 0.67],
            "pipeline.quantize.bits": [4, 4, 8, 4],
            "data.max_length": [32, 32, 32, 32],
        }
    )
    assert applied(df, "pipeline.truncate.keep_ratio").tolist() == [True, False, False, False]
    assert applied(df, "pipeline.quantize.bits").tolist() == [False, False, True, False]
    assert applied(df, "data.max_length").all() and applied(df, "pipeline.order").all()
    shown = blank_unapplied(df, ["pipeline.truncate.keep_ratio", "pipeline.quantize.bits"])
    assert shown["pipeline.truncate.keep_ratio"].tolist() == [0.5, None, None, None]
    assert shown["pipeline.quantize.bits"].tolist() == [None, None, 8, None]
    assert df["pipeline.quantize.bits"].tolist() == [4, 4, 8, 4]  # a copy: the input is kept
