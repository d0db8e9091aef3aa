"""A task whose quality metric is minimised (a planted ``{"rmse": "min"}`` run): the report's
Pareto set, its order, the hypervolume, the per-strategy ranking and the plotted front all
follow the direction the manifest declares. Oracles: brute force on the planted table."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis import plots
from analysis.report import write_report
from analysis.rundir import load_run

STRATEGY = "pipeline.truncate.strategy"
# strategy → (gflops, rmse); one seed each, so a configuration's mean is its row
PLANTED = {
    "fisher": (0.2, 1.30),
    "uniform": (0.4, 1.10),
    "random": (0.6, 1.20),
    "last": (0.8, 0.90),
    "first": (1.0, 0.95),
    "taylor": (0.3, 1.40),
}
TEACHER = (1.4, 0.85)
BASELINE_RMSE = 2.0


def _write_run(run_dir: Path) -> Path:
    run_dir.mkdir(parents=True)
    rows = [{"trial_id": "teacher", "seed": 0, "status": "ok", STRATEGY: "fisher",
             "gflops": TEACHER[0], "rmse": TEACHER[1]}]  # fmt: skip
    for i, (s, (g, r)) in enumerate(PLANTED.items()):
        rows.append({"trial_id": f"trial_{i:02d}", "seed": 0, "status": "ok", STRATEGY: s,
                     "gflops": g, "rmse": r})  # fmt: skip
    pd.DataFrame(rows).to_parquet(run_dir / "results.parquet")
    manifest = {
        "config": {
            "name": "regression",
            "description": "a planted run of a task whose quality metric is minimised",
            "report": {"quality_metric": "rmse", "cost_metric": "gflops"},
        },
        "task": {"name": "rating_regression", "metrics": {"rmse": "min"}},
        "baselines": {"majority": {"rmse": BASELINE_RMSE}},
        "seeds": [0],
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return run_dir


def _front() -> list[str]:
    """Non-dominated strategies (both objectives minimised), cheapest first: brute force."""
    on = [
        s
        for s, (g, r) in PLANTED.items()
        if not any(
            g2 <= g and r2 <= r and (g2, r2) != (g, r)
            for s2, (g2, r2) in PLANTED.items()
            if s2 != s
        )
    ]
    return sorted(on, key=lambda s: PLANTED[s][0])


def _hypervolume() -> float:
    """Area of {(cost, rmse): some point has cost ≤ x and rmse ≤ y} below the teacher's cost
    and the baseline's rmse, integrated over cost interval by interval."""
    xs = sorted({g for g, _ in PLANTED.values()} | {TEACHER[0]})
    area = 0.0
    for lo, hi in itertools.pairwise(xs):
        best = min(r for g, r in PLANTED.values() if g <= lo)
        area += (hi - lo) * max(BASELINE_RMSE - best, 0.0)
    return area


def _section(md: str, heading: str) -> str:
    return md.split(f"## {heading}")[1].split("\n## ")[0]


def test_run_reads_the_declared_direction(tmp_path: Path) -> None:
    run = load_run(_write_run(tmp_path / "run"))
    assert (run.quality_metric, run.quality_direction) == ("rmse", "min")


def test_report_front_order_and_hypervolume_follow_a_min_metric(tmp_path: Path) -> None:
    md = write_report(_write_run(tmp_path / "run")).read_text()
    assert "## Pareto set (rmse down, gflops down)" in md
    section = _section(md, "Pareto set")
    rows = [ln for ln in section.splitlines() if ln.startswith("|")]
    shown = [s for ln in rows for s in PLANTED if f"| {s} |" in ln]
    assert shown == _front() == ["fisher", "uniform", "last"]
    assert f"Student hypervolume: {_hypervolume():.4g} " in section
    assert "below the majority baseline 2.0000" in section


def test_report_ranks_strategies_best_first_for_a_min_metric(tmp_path: Path) -> None:
    md = write_report(_write_run(tmp_path / "run")).read_text()
    section = _section(md, "Which ranking makes the best student")
    rows = [ln for ln in section.splitlines() if ln.startswith("|")]
    shown = [s for ln in rows for s in PLANTED if f"| {s} |" in ln]
    assert shown == sorted(PLANTED, key=lambda s: PLANTED[s][1])  # lowest rmse first


def test_plot_draws_the_front_of_a_min_metric(tmp_path: Path, monkeypatch) -> None:
    drawn: list = []
    close = plt.close
    monkeypatch.setattr(plots.plt, "close", drawn.append)  # keep the figure to read it back
    run = load_run(_write_run(tmp_path / "run"))
    plots.PLOTS.get("pareto")(run, tmp_path)
    (fig,) = drawn
    try:
        (front,) = [ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "pareto_front"]
        np.testing.assert_allclose(front.get_xdata(), [PLANTED[s][0] for s in _front()])
        np.testing.assert_allclose(front.get_ydata(), [PLANTED[s][1] for s in _front()])
    finally:
        close(fig)
