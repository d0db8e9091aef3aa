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

from analysis.render import Para, Table, short_name
from analysis.report_answer import answer_blocks, knob_verdicts
from analysis.rundir import load_run, varying_config_columns

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
        assert row["of teacher, 95% t interval"] == (
            f"[{lo / TEACHER_ACC:.1%}, {hi / TEACHER_ACC:.1%}]"
        )
    text = " ".join(b.text for b in blocks if isinstance(b, Para))
    assert "beyond noise on accuracy: `truncate.keep_layers`." in text


@pytest.mark.parametrize("drop", ["accuracy", "gflops"])
def test_answer_says_when_a_column_is_missing(tmp_path: Path, drop: str) -> None:
    df = _planted(tmp_path / "run")
    df.drop(columns=[drop]).to_parquet(tmp_path / "run" / "results.parquet", index=False)
    blocks = answer_blocks(load_run(tmp_path / "run"), [], "accuracy", "gflops")
    assert any(isinstance(b, Para) and "missing" in b.text for b in blocks)


# A pooled-knob case (issue 33): two arms. ``truncate,distill`` trials search keep_ratio
# (0.34 / 0.67) with no effect; ``prune,distill`` trials never truncate, yet their rows record
# the default keep_ratio 0.67 and a head_sparsity 0.25 (truncate trials record 0.0), and they
# score higher. Pooled over every trial, keep_ratio 0.67 and head_sparsity would both look
# "beyond noise"; counted only where their stage ran, keep_ratio is within noise at n = 3
# per value and head_sparsity took effect at one value only.
KEEP, HEADS = "pipeline.truncate.keep_ratio", "pipeline.prune.head_sparsity"
ARMS = [  # order, keep_ratio, head_sparsity, accuracies over 3 seeds
    ("truncate,distill", 0.34, 0.0, (0.50, 0.50, 0.51)),
    ("truncate,distill", 0.67, 0.0, (0.50, 0.51, 0.52)),
    ("prune,distill", 0.67, 0.25, (0.60, 0.61, 0.60)),
    ("prune,distill", 0.67, 0.25, (0.61, 0.60, 0.62)),
]


def _pooled_knob_run(run_dir: Path) -> pd.DataFrame:
    rows = [
        {"trial_id": "teacher", "seed": 0, "status": "ok", "accuracy": TEACHER_ACC,
         "gflops": 1.5, "pipeline.order": None, KEEP: 0.67, HEADS: 0.0}
    ]  # fmt: skip
    for i, (order, keep, heads, accs) in enumerate(ARMS):
        for seed, acc in enumerate(accs):
            rows.append(
                {"trial_id": f"a{i}_{seed}", "config_id": f"c{i}", "seed": seed,
                 "status": "ok", "accuracy": acc, "gflops": 0.5 + 0.1 * i,
                 "pipeline.order": order, KEEP: keep, HEADS: heads,
                 # the pruned arms differ by a setting of their own (searched)
                 "pipeline.prune.steps": 10 + i}
            )  # fmt: skip
    df = pd.DataFrame(rows)
    run_dir.mkdir(parents=True)
    df.to_parquet(run_dir / "results.parquet", index=False)
    manifest = {"config": {"name": "pooled", "report": {"quality_metric": "accuracy",
                                                        "cost_metric": "gflops"}},
                "seeds": [0, 1, 2]}  # fmt: skip
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return df


def test_a_knob_is_judged_only_on_the_trials_where_its_stage_ran(tmp_path: Path) -> None:
    df = _pooled_knob_run(tmp_path / "run")
    v = knob_verdicts(df, [KEEP, HEADS], "accuracy").set_index("knob")
    # the oracle: the planted truncate trials alone, by value, with scipy's t interval
    for keep in (0.34, 0.67):
        accs = np.array([a for o, k, _, xs in ARMS if "truncate" in o and k == keep for a in xs])
        lo, hi = _t_interval(accs)
        assert (
            f"{keep:g}: {accs.mean():.4f} [{lo:.4f}, {hi:.4f}], n={len(accs)}"
            in (v.loc[KEEP, "evidence"])
        ), v.loc[KEEP, "evidence"]
    lows, highs = zip(
        *(_t_interval(np.array([a for o, k, _, xs in ARMS if "truncate" in o and k == keep
                                for a in xs])) for keep in (0.34, 0.67)),
        strict=True,
    )  # fmt: skip
    assert max(lows) <= min(highs)  # the planted truncate trials overlap: within noise
    assert v.loc[KEEP, "verdict"] == "within noise"
    assert "n=9" not in v.loc[KEEP, "evidence"]  # not pooled with the pruned arms
    assert (v.loc[HEADS, "verdict"], v.loc[HEADS, "evidence"]) == ("undecided", "one value ran")
    # ... whereas pooling every trial (the old behaviour) calls both beyond noise
    pooled = df[df.trial_id != "teacher"].drop(columns="pipeline.order")
    assert set(knob_verdicts(pooled, [KEEP, HEADS], "accuracy")["verdict"]) == {"beyond noise"}


def _md_table(section: str) -> list[dict[str, str]]:
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (c.strip() for c in ln.strip("|").split("|")), strict=True))
        for ln in lines[2:]
    ]


def test_tables_show_a_stage_setting_only_where_the_stage_ran(tmp_path: Path) -> None:
    from analysis.report import write_report

    _pooled_knob_run(tmp_path / "run")
    run = load_run(tmp_path / "run")
    varying = varying_config_columns(run.results)
    # head_sparsity varies only between trials that pruned and trials that did not
    assert HEADS not in varying and KEEP in varying and "pipeline.order" in varying
    md = write_report(tmp_path / "run").read_text()
    for section in ("## Pareto set", "## Across seeds"):
        rows = _md_table(md.split(section)[1].split("\n## ")[0])
        assert rows, section
        for row in rows:
            truncated = "truncate" in row[short_name("pipeline.order")]
            keep = row[short_name(KEEP)]
            assert (keep != "—") == truncated, (section, row)
    pareto = _md_table(md.split("## Pareto set")[1].split("\n## ")[0])
    assert any(r[short_name("pipeline.order")].startswith("prune") for r in pareto)


def test_the_answer_describes_students_and_flags_ones_no_better_than_the_baseline(
    tmp_path: Path,
) -> None:
    """Students described by what they are (``student_shape``, quantization), and a student
    whose accuracy equals the majority-class baseline's is flagged, not presented as a find."""
    run_dir = tmp_path / "run"
    rows = [{"trial_id": "teacher", "status": "ok", "accuracy": 0.8, "gflops": 1.5}]
    planted = [  # config, shape, quant, gflops, accuracy
        ("c0", "2 layers, 12 heads, FFN 1536", "none", 0.5, 0.55),  # = the majority class
        ("c1", "6 layers, 4–9 heads, FFN 599", "dynamic_int8", 0.9, 0.70),
    ]
    for cid, shape, quant, gflops, acc in planted:
        for seed in (0, 1):
            rows.append(
                {"trial_id": f"{cid}_{seed}", "config_id": cid, "seed": seed, "status": "ok",
                 "accuracy": acc, "gflops": gflops, "latency_ms_p50": 3.0 + seed,
                 "student_shape": shape, "quant": quant, "pipeline.order": "truncate,distill"}
            )  # fmt: skip
    run_dir.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(run_dir / "results.parquet", index=False)
    manifest = {"config": {"name": "shapes", "report": {"quality_metric": "accuracy",
                                                        "cost_metric": "gflops"}},
                "seeds": [0, 1], "baselines": {"majority class": {"accuracy": 0.55}}}  # fmt: skip
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    blocks = answer_blocks(load_run(run_dir), [], "accuracy", "gflops")
    table = next(b for b in blocks if isinstance(b, Table)).df.set_index("config_id")
    assert table.loc["c0", "student"] == "2 layers, 12 heads, FFN 1536"
    assert table.loc["c1", "student"] == "6 layers, 4–9 heads, FFN 599, dynamic_int8"
    assert table.loc["c0", "note"] == "no better than the majority class baseline"
    assert table.loc["c1", "note"] == ""
    assert table.loc["c0", "latency_ms_p50"] == "3.50"  # the mean over its two seeds
    text = " ".join(b.text for b in blocks if isinstance(b, Para))
    assert "2 layers, 12 heads, FFN 1536 (`c0`)" in text
