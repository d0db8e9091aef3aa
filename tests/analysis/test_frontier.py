"""One definition of the Pareto front: configurations averaged over their seeds.

A planted run where a lucky seed changes the answer. Config X (fisher) scores 0.60 / 0.60 /
0.84 over three seeds, config Y (ablation) 0.70 / 0.70 / 0.70, both at 0.5 GFLOPs. Per seed,
X's 0.84 row dominates every row of Y; per configuration, Y's mean 0.70 beats X's 0.68. The
engine's ``on_front``, the report's table and hypervolume and the plot must all say Y.

Also the Pareto front and hypervolume of single points against hand computations.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from analysis import plots
from analysis.frontier import config_front, hypervolume_2d, pareto_front, pareto_mask, seed_means
from analysis.report import write_report

STRAT = "pipeline.truncate.strategy"
KEEP = "pipeline.truncate.keep_ratio"
# config name → (strategy, keep_ratio, gflops, accuracy per seed); None = a failed seed
PLANTED = {
    "X": ("fisher", 0.67, 0.50, [0.60, 0.60, 0.84]),  # lucky seed 2; mean 0.68
    "Y": ("ablation", 0.67, 0.50, [0.70, 0.70, 0.70, None]),  # mean 0.70; seed 3 failed
    "Z": ("uniform", 0.34, 0.25, [0.55, 0.57, 0.56]),  # cheaper; mean 0.56
    "W": ("random", 0.67, 0.50, [0.50, 0.52, 0.51]),  # dominated by Y (and by X's mean)
}
TEACHER = (0.75, 1.0)  # (accuracy, gflops)
MAJORITY = 0.50


def _rows(*, with_config_id: bool = True) -> list[dict]:
    rows = []
    for name, (strategy, keep, gflops, accs) in PLANTED.items():
        for seed, acc in enumerate(accs):
            row = {
                "trial_id": f"{name}_{seed}",
                "seed": seed,
                "status": "ok" if acc is not None else "failed",
                STRAT: strategy,
                KEEP: keep,
                "accuracy": np.nan if acc is None else acc,
                "valid_accuracy": np.nan if acc is None else acc,  # the search objective
                "gflops": np.nan if acc is None else gflops,
                "latency_ms_p50": np.nan if acc is None else 10.0 + seed,
            }
            if with_config_id:
                row["config_id"] = name
            rows.append(row)
    return rows


def _write_run(run_dir: Path, *, with_config_id: bool = True) -> Path:
    run_dir.mkdir(parents=True)
    teacher = {"trial_id": "teacher", "seed": 0, "status": "ok", STRAT: "fisher", KEEP: 1.0,
               "accuracy": TEACHER[0], "gflops": TEACHER[1]}  # fmt: skip
    df = pd.DataFrame([teacher, *_rows(with_config_id=with_config_id)])
    df.to_parquet(run_dir / "results.parquet", index=False)
    config = {
        "name": "lucky",
        "report": {"quality_metric": "accuracy", "cost_metric": "gflops"},
        "search": {"objectives": [{"metric": "accuracy", "mode": "max"},
                                  {"metric": "gflops", "mode": "min"}]},
    }  # fmt: skip
    manifest = {"config": config, "seeds": [0, 1, 2, 3],
                "baselines": {"majority": {"accuracy": MAJORITY}}}  # fmt: skip
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return run_dir


# By hand: means X (0.68 @ 0.5), Y (0.70 @ 0.5), Z (0.56 @ 0.25), W (0.51 @ 0.5).
# Y beats X and W at equal cost; Z is cheaper than everything: front = {Z, Y}.
FRONT = {"Y", "Z"}
# Hypervolume, ref = (majority 0.50, teacher's 1.0 GFLOPs): the staircase of Z then Y,
# (0.5 − 0.25)·(0.56 − 0.50) + (1.0 − 0.5)·(0.70 − 0.50) = 0.015 + 0.100
HV = 0.25 * 0.06 + 0.5 * 0.20
# What the per-seed reading would have said (the bug): X's 0.84 row and Z's best seed 0.57
HV_PER_SEED = 0.25 * 0.07 + 0.5 * 0.34


def test_planted_data_is_a_lucky_seed_case() -> None:
    # a check on the test's own numbers: per-seed front by brute force holds X, not Y
    rows = [r for r in _rows() if r["status"] == "ok"]
    on = {
        r["trial_id"]
        for r in rows
        if not any(
            s["accuracy"] >= r["accuracy"]
            and s["gflops"] <= r["gflops"]
            and (s["accuracy"] > r["accuracy"] or s["gflops"] < r["gflops"])
            for s in rows
        )
    }
    assert on == {"X_2", "Z_1"}
    assert abs(HV - HV_PER_SEED) > 0.05


@pytest.mark.parametrize("with_config_id", [True, False])
def test_config_front_averages_seeds(with_config_id: bool) -> None:
    df = pd.DataFrame(_rows(with_config_id=with_config_id))
    configs = config_front(df, [("accuracy", "max"), ("gflops", "min")])
    configs = configs.set_index(STRAT)
    names = {s: n for n, (s, *_rest) in PLANTED.items()}
    assert {names[s] for s in configs.index[configs["on_front"]]} == FRONT
    assert configs.loc["fisher", "accuracy"] == pytest.approx(0.68)
    assert configs.loc["fisher", "accuracy_min"] == pytest.approx(0.60)
    assert configs.loc["fisher", "accuracy_max"] == pytest.approx(0.84)
    assert configs.loc["ablation", "n_seeds"] == 3  # the failed seed does not count
    assert configs["n_seeds"].tolist() == [3, 3, 3, 3]
    # seed_means alone: the same means, first seed's config values kept
    means = seed_means(df, ["latency_ms_p50"]).set_index(STRAT)
    assert means.loc["uniform", "latency_ms_p50"] == pytest.approx(11.0)
    assert means.loc["uniform", KEEP] == 0.34


def test_engine_on_front_uses_the_same_definition(capsys) -> None:
    from engine.config import load_study
    from engine.tune_run import pareto_summary as _summary

    cfg = load_study("pareto")  # objectives: valid_accuracy (max), gflops (min)
    assert [(o.metric, o.mode) for o in cfg.search.objectives] == [
        ("valid_accuracy", "max"),
        ("gflops", "min"),
    ]
    assert _summary(cfg, _rows()) == FRONT
    # the terminal says its front is the validation one and where the test one is
    assert "judged on valid; the report's Answer and Pareto set judge the students on test" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize("with_config_id", [True, False])
def test_report_table_and_hypervolume_use_seed_means(tmp_path: Path, with_config_id) -> None:
    md = write_report(_write_run(tmp_path / "run", with_config_id=with_config_id)).read_text()
    section = md.split("## Pareto set")[1].split("\n## ")[0]
    assert "2 non-dominated of 4 configurations" in section
    assert "Each point = one configuration, mean over 3 seeds" in section
    assert "same definition as the `on_front` column" in section
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")), strict=True))
            for ln in lines[1:]]  # fmt: skip
    # cheapest first: Z then Y; X (lucky seed) and W are not in the table
    assert [r["truncate.strategy"] for r in body] == ["uniform", "ablation"]
    assert [r["seeds"] for r in body] == ["3", "3"]
    assert [r["accuracy"] for r in body] == ["0.5600", "0.7000"]
    assert body[0]["accuracy seed min–max"] == "[0.5500, 0.5700]"
    assert body[1]["accuracy seed min–max"] == "[0.7000, 0.7000]"
    assert [r["gflops"] for r in body] == ["0.2500", "0.5000"]
    assert "0.8400" not in section and "fisher" not in section
    hv = float(section.split("Student hypervolume: ")[1].split(" ")[0])
    assert hv == pytest.approx(HV, rel=1e-3)  # printed to 4 significant digits
    answer = md.split("## Answer")[1].split("\n## ")[0]  # the figure leads the Answer
    assert "Figure: Each point = one configuration, mean over 3 seeds" in answer
    assert "Bars = min–max over those seeds" in answer


def test_report_says_when_on_front_uses_other_objectives(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "run")
    man = json.loads((run_dir / "manifest.json").read_text())
    man["config"]["search"]["objectives"][0]["metric"] = "valid_accuracy"
    (run_dir / "manifest.json").write_text(json.dumps(man))
    section = write_report(run_dir).read_text().split("## Pareto set")[1].split("\n## ")[0]
    assert "search objectives valid_accuracy (max), gflops (min) instead" in section


def test_plot_draws_the_seed_averaged_front(tmp_path: Path, monkeypatch) -> None:
    drawn: list = []
    close = plt.close
    monkeypatch.setattr(plots.plt, "close", drawn.append)  # keep the figure to read it back
    df = pd.read_parquet(_write_run(tmp_path / "run") / "results.parquet")
    plots.pareto_plot(df, tmp_path / "pareto.png", "accuracy", "gflops")
    (fig,) = drawn
    ax = fig.axes[0]
    try:
        (front,) = [ln for ln in ax.get_lines() if ln.get_gid() == "pareto_front"]
        # Z (0.56 @ 0.25) then Y (0.70 @ 0.5): not X's lucky 0.84
        np.testing.assert_allclose(front.get_xdata(), [0.25, 0.50])
        np.testing.assert_allclose(front.get_ydata(), [0.56, 0.70])

        def offsets(gid: str) -> list[tuple[float, float]]:
            pts = [c.get_offsets() for c in ax.collections if c.get_gid() == gid]
            return sorted(tuple(np.round(p, 9)) for arr in pts for p in np.asarray(arr))

        # one mean point per configuration (gflops, accuracy)
        assert offsets("config_means") == [(0.25, 0.56), (0.5, 0.51), (0.5, 0.68), (0.5, 0.7)]
        # every successful seed as a faint dot: 3 + 3 + 3 + 3, the failed one absent
        assert len(offsets("seeds")) == 12 and (0.5, 0.84) in offsets("seeds")
        # the spread bars are min–max over seeds: X's vertical bar spans 0.60 … 0.84
        segments = [
            tuple(np.round(np.asarray(seg).ravel(), 9))
            for c in ax.collections
            if c.get_gid() == "seed_spread"
            for seg in c.get_segments()
        ]
        assert (0.5, 0.6, 0.5, 0.84) in segments
        assert (0.25, 0.55, 0.25, 0.57) in segments
        # the caption is the report's paragraph under the figure, not printed in it too
        assert not any("Each point" in t.get_text() for t in fig.texts)
    finally:
        close(fig)


# ----------------------------------------------------------------------------- frontier


def test_pareto_front_on_planted_set() -> None:
    df = pd.DataFrame(
        {
            "name": ["a", "b", "b2", "c", "d", "e", "f", "g"],
            "acc": [0.50, 0.70, 0.70, 0.80, 0.60, 0.90, np.nan, 0.95],
            "gflops": [1.0, 2.0, 2.0, 3.0, 2.5, 6.0, 0.1, np.nan],
        }
    )
    # a, b, c, e form the staircase; b2 ties b exactly (kept); d is dominated by b
    # (more cost, less accuracy); f and g have a NaN and can never be on the front
    front = pareto_front(df, "acc", "gflops")
    assert front["name"].tolist() == ["a", "b", "b2", "c", "e"]
    assert front["gflops"].is_monotonic_increasing


def test_pareto_equal_cost_keeps_only_the_better() -> None:
    # same cost, different quality: the worse one is dominated (weakly worse on cost)
    mask = pareto_mask([0.5, 0.6, 0.6], [1.0, 1.0, 0.9])
    assert mask.tolist() == [False, False, True]


def test_pareto_front_unknown_column_names_it() -> None:
    with pytest.raises(KeyError, match="latency"):
        pareto_front(pd.DataFrame({"acc": [1.0]}), "acc", "latency")


def test_hypervolume_matches_hand_computation() -> None:
    pts = [(0.6, 1.0), (0.8, 3.0), (0.7, 2.0), (0.65, 4.0)]  # last one is dominated
    ref = (0.5, 5.0)
    # staircase cheapest first: [1,2)×(0.6-0.5) + [2,3)×(0.7-0.5) + [3,5)×(0.8-0.5)
    expected = 1 * 0.1 + 1 * 0.2 + 2 * 0.3
    assert hypervolume_2d(pts, ref) == pytest.approx(expected)
    # points outside the reference box add nothing; an empty set has zero volume
    assert hypervolume_2d([*pts, (0.4, 0.5), (0.99, 7.0)], ref) == pytest.approx(expected)
    assert hypervolume_2d([], ref) == 0.0
    # a single point is a rectangle
    assert hypervolume_2d([(0.9, 1.0)], (0.5, 3.0)) == pytest.approx(0.4 * 2.0)
