"""analysis.compare: two runs side by side.

The real run directory is ``tests/assets/runs/smoke-rec`` (results.parquet, manifest.json and
``rankings/`` of a ``smoke-rec`` run written by the engine: next-item, one seed, two students
and the teacher, 300 test users). Changed runs are written as a user's changed run would be:
per-example tables and the results.parquet figures that follow from them. Multi-seed runs
(classification without per-example tables, regression with ``predictions/``) are written in
the same contract, as in test_report.py. The intervals' coverage is tested in
test_examples.py.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.compare import compare_runs, main
from analysis.rundir import load_run
from tests.conftest import run_cli

SMOKE_REC = Path(__file__).resolve().parents[1] / "assets" / "runs" / "smoke-rec"
STRATEGY = "pipeline.truncate.strategy"
KD = "pipeline.distill.kd"


def _copy(tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(SMOKE_REC, tmp_path / name))


def _ranking_metrics(ranks: np.ndarray) -> dict[str, float]:
    """HR, NDCG and MRR by their definitions, one user at a time (0-based rank r)."""
    out = {"mrr": sum(1 / (r + 1) for r in ranks) / len(ranks)}
    for k in (5, 10, 20):
        out[f"hr_at_{k}"] = sum(1 for r in ranks if r < k) / len(ranks)
        out[f"ndcg_at_{k}"] = sum(1 / math.log2(r + 2) for r in ranks if r < k) / len(ranks)
    return out


def _configs(cmp) -> pd.DataFrame:
    return cmp.rows[cmp.rows["model"] == "configuration"].set_index(STRATEGY)


# ----------------------------------------------------------------------------- (a) itself


def test_a_run_against_itself_has_every_delta_zero_and_within_noise(tmp_path: Path) -> None:
    cmp = compare_runs(load_run(SMOKE_REC), load_run(_copy(tmp_path, "b")))
    rows = cmp.rows
    assert set(rows["model"]) == {"teacher", "popularity (reference)", "configuration"}
    assert len(_configs(cmp)) == 2 and cmp.unmatched.empty and cmp.settings == []
    deltas = rows[[c for c in rows if c.startswith("d_") and rows[c].dtype.kind == "f"]]
    values = deltas.to_numpy(float)
    assert (values[np.isfinite(values)] == 0).all()
    assert (rows["d_ndcg_at_10"] == 0).all()
    learned = rows[rows["model"] != "popularity (reference)"]
    assert (learned["verdict"] == "within noise").all()
    assert (learned["d_ndcg_at_10_interval"] == "test examples, paired (300)").all()
    assert (learned["d_ndcg_at_10_low"] == 0).all() and (learned["d_ndcg_at_10_high"] == 0).all()


def test_cli_prints_the_comparison_and_writes_html(tmp_path: Path, capsys) -> None:
    b = _copy(tmp_path, "b")
    assert main([str(SMOKE_REC), str(b)]) == 0
    md = capsys.readouterr().out
    assert "## Matched configurations (2)" in md and "within noise" in md
    assert "| fisher |" in md and "| first_last |" in md
    out = tmp_path / "cmp.html"
    assert main([str(SMOKE_REC), str(b), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_text().startswith("<!DOCTYPE html>") and "<table" in out.read_text()


# ----------------------------------------------------------------------------- (b) planted


def _improve(run_dir: Path, trial_id: str, users: int) -> tuple[np.ndarray, np.ndarray]:
    """Put the target first for the first ``users`` users ranked outside the top 10, in the
    trial's rankings and in its results.parquet figures; the old and new ranks."""
    path = run_dir / "rankings" / f"{trial_id}.parquet"
    table = pd.read_parquet(path)
    old = table["rank"].to_numpy().copy()
    outside = np.flatnonzero(old >= 10)[:users]
    assert len(outside) == users
    table.loc[outside, "rank"] = 0
    table.to_parquet(path, index=False)
    results = pd.read_parquet(run_dir / "results.parquet")
    row = results["trial_id"] == trial_id
    for metric, value in _ranking_metrics(table["rank"].to_numpy()).items():
        results.loc[row, metric] = value
    results.to_parquet(run_dir / "results.parquet", index=False)
    return old, table["rank"].to_numpy()


def test_a_planted_improvement_is_the_delta_and_its_interval_excludes_zero(
    tmp_path: Path,
) -> None:
    b = _copy(tmp_path, "b")
    fisher = pd.read_parquet(b / "results.parquet").query(f"`{STRATEGY}` == 'fisher'")
    old, new = _improve(b, fisher["trial_id"].iloc[0], users=30)
    for metric in ("ndcg_at_10", "mrr", "hr_at_5"):
        cmp = compare_runs(load_run(SMOKE_REC), load_run(b), metric=metric)
        planted = _ranking_metrics(new)[metric] - _ranking_metrics(old)[metric]
        assert planted > 0
        rows = _configs(cmp)
        assert rows.loc["fisher", f"d_{metric}"] == pytest.approx(planted, abs=1e-12)
        assert rows.loc["fisher", f"d_{metric}_low"] > 0
        assert rows.loc["fisher", "verdict"] == "B better"
        assert rows.loc["fisher", f"d_{metric}_interval"] == "test examples, paired (300)"
        # the other configuration and the teacher are unchanged
        assert rows.loc["first_last", f"d_{metric}"] == 0
        assert rows.loc["first_last", "verdict"] == "within noise"
        teacher = cmp.rows[cmp.rows["model"] == "teacher"].iloc[0]
        assert teacher[f"d_{metric}"] == 0 and teacher["verdict"] == "within noise"


def test_tables_that_disagree_with_results_are_not_paired(tmp_path: Path) -> None:
    """A rankings table edited without its results.parquet row describes another model."""
    b = _copy(tmp_path, "b")
    trial = pd.read_parquet(b / "results.parquet").query(f"`{STRATEGY}` == 'fisher'")
    path = b / "rankings" / f"{trial['trial_id'].iloc[0]}.parquet"
    table = pd.read_parquet(path)
    table["rank"] = 0
    table.to_parquet(path, index=False)
    rows = _configs(compare_runs(load_run(SMOKE_REC), load_run(b)))
    assert "disagree with results.parquet" in rows.loc["fisher", "d_ndcg_at_10_interval"]
    assert rows.loc["first_last", "d_ndcg_at_10_interval"] == "test examples, paired (300)"


# ------------------------------------------------------------- multi-seed contract runs


def _write(
    run_dir: Path,
    task: dict,
    configs: list[dict],
    seeds: list[int],
    metrics: dict[tuple[int, int], dict[str, float]],
    tables: dict[str, pd.DataFrame] | None = None,
) -> Path:
    """A run directory in the engine's contract: the teacher, one row per config × seed."""
    run_dir.mkdir(parents=True)
    rows = [{"trial_id": "teacher", "seed": 0, "status": "ok", **configs[0], **metrics["t"]}]
    for i, config in enumerate(configs):
        for s in seeds:
            rows.append(
                {
                    "trial_id": f"t{i}_s{s}",
                    "seed": s,
                    "status": "ok",
                    "config_id": f"c{i}",
                    **config,
                    **metrics[(i, s)],
                }
            )
    pd.DataFrame(rows).to_parquet(run_dir / "results.parquet", index=False)
    manifest = {"task": task, "seeds": seeds, "config": {"name": run_dir.name, "report": {}}}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    if tables:
        (run_dir / "predictions").mkdir()
        for trial_id, table in tables.items():
            table.to_parquet(run_dir / "predictions" / f"{trial_id}.parquet", index=False)
    return run_dir


CLASSIFICATION = {
    "name": "rating_classification",
    "metrics": {"accuracy": "max", "macro_f1": "max"},
    "quality_metric": "accuracy",
}
CONFIGS = [
    {STRATEGY: "fisher", KD: True},
    {STRATEGY: "fisher", KD: False},
    {STRATEGY: "uniform", KD: True},
]


def _classification(run_dir: Path, shift: dict[int, float] | None = None, **kw) -> Path:
    rng = np.random.default_rng(7)
    metrics: dict = {"t": {"accuracy": 0.62, "gflops": 1.4, "latency_ms_p50": 40.0}}
    for i in range(len(CONFIGS)):
        for s in (0, 1, 2):
            acc = 0.55 - 0.02 * i + rng.normal(0, 0.005) + (shift or {}).get(i, 0.0)
            metrics[(i, s)] = {"accuracy": acc, "gflops": 0.7, "latency_ms_p50": 20 + s}
    return _write(run_dir, kw.get("task", CLASSIFICATION), CONFIGS, [0, 1, 2], metrics)


def test_a_planted_shift_over_seeds_without_per_example_tables(tmp_path: Path) -> None:
    a = _classification(tmp_path / "a")
    b = _classification(tmp_path / "b", shift={2: 0.05})
    a_df = pd.read_parquet(a / "results.parquet")
    cmp = compare_runs(load_run(a), load_run(b))
    assert cmp.key == [STRATEGY, KD]
    rows = cmp.rows[cmp.rows["model"] == "configuration"].set_index([STRATEGY, KD])
    shifted = rows.loc[("uniform", True)]
    assert shifted["d_accuracy"] == pytest.approx(0.05, abs=1e-12)
    assert shifted["d_accuracy_interval"].startswith("seeds, unpaired (3 vs 3)")
    assert shifted["d_accuracy_low"] > 0 and shifted["verdict"] == "B better"
    # its A mean is the mean of A's three seeds
    seeds_a = a_df.loc[(a_df["config_id"] == "c2"), "accuracy"]
    assert shifted["accuracy_a"] == pytest.approx(sum(seeds_a) / 3, abs=1e-15)
    for key in [("fisher", True), ("fisher", False)]:
        assert rows.loc[key, "d_accuracy"] == 0 and rows.loc[key, "verdict"] == "within noise"


REGRESSION = {
    "name": "rating_regression",
    "metrics": {"rmse": "min", "mae": "min"},
    "quality_metric": "rmse",
}


def _regression(
    run_dir: Path, predictions: dict[str, np.ndarray], ratings: np.ndarray, *, shuffle: bool
) -> Path:
    n = len(ratings)
    keys = np.array([f"r{i:04d}" for i in range(n)])
    metrics: dict = {}
    tables = {}
    for trial_id, pred in predictions.items():
        order = np.random.default_rng(len(trial_id)).permutation(n) if shuffle else np.arange(n)
        tables[trial_id] = pd.DataFrame(
            {
                "row_key": keys[order],
                "user_id": [f"u{i % 17}" for i in order],
                "item_id": [f"i{i % 11}" for i in order],
                "rating": ratings[order].astype(np.float32),
                "prediction": pred[order].astype(np.float32),
            }
        )
        err = [
            float(np.float32(p)) - float(np.float32(r)) for p, r in zip(pred, ratings, strict=True)
        ]
        row = {
            "rmse": math.sqrt(sum(e * e for e in err) / n),
            "mae": sum(abs(e) for e in err) / n,
            "gflops": 0.5,
        }
        metrics["t" if trial_id == "teacher" else (int(trial_id[1]), int(trial_id[-1]))] = row
    return _write(run_dir, REGRESSION, CONFIGS[:2], [0, 1], metrics, tables)


def test_regression_rmse_delta_is_paired_over_reviews_even_in_another_order(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(3)
    ratings = rng.integers(1, 6, 400).astype(float)
    ids = ["teacher", "t0_s0", "t0_s1", "t1_s0", "t1_s1"]
    preds = {t: ratings + rng.normal(0, 0.8, len(ratings)) for t in ids}
    a = _regression(tmp_path / "a", preds, ratings, shuffle=False)
    better = dict(preds)
    for t in ("t1_s0", "t1_s1"):  # config 1: errors halved in run B
        better[t] = ratings + (preds[t] - ratings) / 2
    b = _regression(tmp_path / "b", better, ratings, shuffle=True)

    def rmse(p: np.ndarray) -> float:
        e = [float(np.float32(x)) - float(np.float32(r)) for x, r in zip(p, ratings, strict=True)]
        return math.sqrt(sum(v * v for v in e) / len(e))

    planted = sum(rmse(better[t]) - rmse(preds[t]) for t in ("t1_s0", "t1_s1")) / 2
    cmp = compare_runs(load_run(a), load_run(b))
    assert cmp.metric == "rmse"
    rows = cmp.rows[cmp.rows["model"] == "configuration"].set_index(KD)
    assert rows.loc[False, "d_rmse"] == pytest.approx(planted, abs=1e-6)
    assert rows.loc[False, "d_rmse_interval"] == "test examples, paired (400)"
    assert rows.loc[False, "d_rmse_high"] < 0 and rows.loc[False, "verdict"] == "B better"
    assert rows.loc[True, "d_rmse"] == 0 and rows.loc[True, "d_rmse_low"] == 0
    assert rows.loc[True, "d_rmse_high"] == 0 and rows.loc[True, "verdict"] == "within noise"


# ------------------------------------------------------------- matching and unmatched


def test_different_config_columns_match_on_the_shared_ones_and_say_so(tmp_path: Path) -> None:
    b = _copy(tmp_path, "b")
    df = pd.read_parquet(b / "results.parquet")
    df = df.drop(columns=["pipeline.early_exit.threshold"]).assign(**{"pipeline.new.knob": 3})
    df.to_parquet(b / "results.parquet", index=False)
    cmp = compare_runs(load_run(SMOKE_REC), load_run(b))
    assert len(_configs(cmp)) == 2 and cmp.unmatched.empty
    assert cmp.only_a == ["pipeline.early_exit.threshold"] and cmp.only_b == ["pipeline.new.knob"]


def test_unmatched_configurations_are_listed_never_dropped(tmp_path: Path) -> None:
    a = _classification(tmp_path / "a")
    b = _classification(tmp_path / "b")
    df = pd.read_parquet(b / "results.parquet")
    df = df[df["config_id"] != "c1"]  # run B lacks (fisher, no KD)
    df.to_parquet(b / "results.parquet", index=False)
    cmp = compare_runs(load_run(a), load_run(b))
    assert len(cmp.rows[cmp.rows["model"] == "configuration"]) == 2
    (row,) = cmp.unmatched.to_dict("records")
    assert (row["run"], row[STRATEGY], row[KD], row["seeds"]) == ("A", "fisher", False, 3)
    assert row["reason"] == "not in run B"
    # without the KD column in B, A's two fisher configurations have one candidate each side
    df.drop(columns=[KD]).to_parquet(b / "results.parquet", index=False)
    cmp = compare_runs(load_run(a), load_run(b))
    assert cmp.key == [STRATEGY] and cmp.only_a == [KD]
    assert list(cmp.rows.loc[cmp.rows["model"] == "configuration", STRATEGY]) == ["uniform"]
    un = cmp.unmatched
    assert sorted(un["run"]) == ["A", "A", "B"] and set(un[STRATEGY]) == {"fisher"}
    assert "2 configurations of run A share these values" in set(un["reason"])


def test_a_changed_setting_is_named(tmp_path: Path) -> None:
    b = _copy(tmp_path, "b")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["config"]["teacher"]["max_steps"] = 60
    (b / "manifest.json").write_text(json.dumps(manifest))
    cmp = compare_runs(load_run(SMOKE_REC), load_run(b))
    assert cmp.settings == [("teacher.max_steps", 30, 60)]


# ----------------------------------------------------------------------------- (d) errors


def _error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_bad_input_is_one_clear_error(tmp_path: Path, capsys) -> None:
    assert "is not a run directory" in _error(capsys, str(tmp_path), str(SMOKE_REC))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.parquet").write_bytes(b"not parquet at all")
    assert "cannot read" in _error(capsys, str(SMOKE_REC), str(broken))
    clf = _classification(tmp_path / "clf")
    msg = _error(capsys, str(SMOKE_REC), str(clf))
    assert "different tasks" in msg and "next_item" in msg and "rating_classification" in msg
    assert "'accuracy' is not in run A" in _error(
        capsys, str(SMOKE_REC), str(SMOKE_REC), "--metric", "accuracy"
    )
    other = _copy(tmp_path, "other")
    df = pd.read_parquet(other / "results.parquet")
    df[STRATEGY] = df[STRATEGY].map({"fisher": "random", "first_last": "uniform"})
    df.to_parquet(other / "results.parquet", index=False)
    assert "no configuration in common" in _error(capsys, str(SMOKE_REC), str(other))
    assert "--out must end in .md or .html" in _error(
        capsys, str(SMOKE_REC), str(SMOKE_REC), "--out", str(tmp_path / "c.txt")
    )


def test_the_cli_exits_2_without_a_traceback(tmp_path: Path) -> None:
    proc = run_cli("analysis.compare", str(tmp_path), str(SMOKE_REC), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        == f"error: run A: {tmp_path} is not a run directory (no results.parquet)"
    )
