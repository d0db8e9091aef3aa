"""End to end: the shipped ``rating`` study (rating regression on Amazon 2018 reviews) at tiny
sizes through the real CLI — reference rows (with the 3-member ensemble teacher's), a
structured-pruned student with pruning-aware distillation from the ensemble, an int8 one and a
truncated + distilled one, each scored by RMSE and MAE."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_sweep

RATING_TINY = [
    "data.max_length=32",
    "data.train_size=96",
    "data.valid_size=32",
    "data.test_size=48",
    "teacher.epochs=1",
    "teacher.max_steps=4",
    "importance.num_batches=1",
    "importance.batch_size=16",
    "importance.cpus_per_actor=0.5",
    "pipeline.prune.steps=2",
    "pipeline.prune.prune_every=1",
    "pipeline.prune.score_batches=1",
    "pipeline.prune.recovery_steps=1",
    "pipeline.prune.batch_size=16",
    "pipeline.distill.max_steps=2",
    "pipeline.distill.batch_size=16",
    "search.space={pipeline.prune.neuron_sparsity: [0.5]}",
    "search.extra=[{pipeline.order: [prune, quantize]}, {pipeline.order: [truncate, distill]}]",
    "measure.latency_repeats=2",
    "measure.warmup=1",
    "measure.batch_size=16",
]


@pytest.mark.slow
def test_rating_study_writes_rmse_rows_and_reference_baselines(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_sweep("rating", *RATING_TINY, out=out, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = pd.read_parquet(out / "results.parquet")
    ref = df[df.status == "reference"].set_index("trial_id")
    # the task's baselines, and the study's 3-member ensemble teacher (mean prediction)
    assert sorted(ref.index) == ["bias_mf", "ensemble", "global_mean"]
    manifest = json.loads((out / "manifest.json").read_text())
    ensemble = manifest["teacher"]["ensemble"]
    assert ensemble["size"] == 3 and [m["seed"] for m in ensemble["members"]] == [0, 1, 2]
    assert ensemble["members"][0]["cache_key"] == manifest["teacher"]["cache_key"]
    assert len({m["cache_key"] for m in ensemble["members"]}) == 3
    for metric, value in ensemble["metrics"].items():
        assert ref.loc["ensemble", metric] == pytest.approx(value)
    assert manifest["task"]["name"] == "rating_regression"
    assert manifest["task"]["metrics"] == {"rmse": "min", "mae": "min"}
    for name, metrics in manifest["baselines"].items():
        for metric, value in metrics.items():
            assert ref.loc[name, metric] == pytest.approx(value)
    teacher = df[df.trial_id == "teacher"].iloc[0]
    students = df[(df.trial_id != "teacher") & (df.status != "reference")]
    assert len(students) == 3 and (students.status == "ok").all(), students.error.tolist()
    assert "accuracy" not in df.columns
    for col in ("rmse", "mae", "valid_rmse", "valid_mae", "gflops", "latency_ms_p50"):
        assert all(math.isfinite(v) for v in pd.concat([students[col], df[col][:1]])), col
    by_order = {
        o: r for o, r in zip(students["pipeline.order"], students.itertuples(), strict=True)
    }
    pruned, truncated = by_order["prune"], by_order["truncate,distill"]
    quantized = by_order["prune,quantize"]
    # structured pruning removed FFN neurons: fewer GFLOPs than the teacher, by fvcore count
    assert pruned.gflops < teacher.gflops and pruned.params < teacher.params
    assert truncated.student_layers == 3 and truncated.gflops < pruned.gflops
    assert quantized.quant == "dynamic_int8"
    # each student's test RMSE/MAE recomputed from its per-review predictions
    ensemble_row = df[df.trial_id == "ensemble"].iloc[0]
    for row in (*students.itertuples(), teacher, ensemble_row):
        table = pd.read_parquet(out / "predictions" / f"{row.trial_id}.parquet")
        assert len(table) == manifest["data"]["stats"]["split_sizes"]["test"]
        err = (table.prediction - table.rating).to_numpy(np.float64)
        assert math.sqrt(np.mean(err**2)) == pytest.approx(row.rmse, rel=1e-5)
        assert np.mean(np.abs(err)) == pytest.approx(row.mae, rel=1e-5)
        assert set(table.rating) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    report = (out / "report.md").read_text()
    assert "rmse" in report.lower()
