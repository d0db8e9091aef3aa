"""Contract tests generated from the plot registry (analysis/plots.py ``PLOTS``): every
registered plot renders a PNG from a synthetic run directory that has what any of them
needs, and on a run with nothing to show returns None (or a PNG saying so) without raising.

A new plot is covered once registered; if it needs a file the synthetic run lacks, add that
file to ``_full_run``.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

import analysis.report  # noqa: F401  (imports every module that registers a plot)
from analysis.plots import PLOTS
from analysis.rundir import load_run

TEMP = "pipeline.distill.temperature"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _manifest(run_dir: Path) -> None:
    config = {
        "name": "synthetic",
        "data": {"max_length": 32},
        "pipeline": {"order": ["truncate", "distill"], "distill": {"temperature": 2.0}},
        "search": {"algorithm": "one_at_a_time", "space": {TEMP: [1.0, 4.0]}},
        "report": {"quality_metric": "accuracy", "cost_metric": "gflops"},
    }
    (run_dir / "manifest.json").write_text(json.dumps({"config": config, "seeds": [0, 1]}))


def _full_run(run_dir: Path) -> Path:
    """A one-knob-at-a-time study over 2 seeds, with layer importance from 3 methods and
    their pairwise agreement: enough for every plot."""
    run_dir.mkdir(parents=True)
    rows = [{"trial_id": "teacher", "seed": 0, "status": "ok", TEMP: 2.0, "accuracy": 0.7,
             "gflops": 1.4, "pipeline.truncate.strategy": None}]  # fmt: skip
    i = 0
    for temp, acc, gf, strategy in [(2.0, 0.60, 0.7, "fisher"), (1.0, 0.55, 0.5, "uniform"),
                                    (4.0, 0.65, 0.9, "fisher")]:  # fmt: skip
        for seed in (0, 1):
            rows.append({"trial_id": f"t{i:02d}", "seed": seed, "status": "ok", TEMP: temp,
                         "accuracy": acc + 0.01 * seed, "gflops": gf,
                         "pipeline.truncate.strategy": strategy})  # fmt: skip
            i += 1
    pd.DataFrame(rows).to_parquet(run_dir / "results.parquet", index=False)
    imp = []
    for method, ranks in {"fisher": [0, 1, 2, 3], "ablation": [1, 0, 2, 3],
                          "taylor": [0, 2, 1, 3]}.items():  # fmt: skip
        for layer, rank in enumerate(ranks):
            imp.append({"method": method, "layer": layer, "score": 4.0 - rank, "rank": rank,
                        "ci_low": np.nan, "ci_high": np.nan})  # fmt: skip
    pd.DataFrame(imp).to_parquet(run_dir / "importance.parquet", index=False)
    agree = [
        {"statistic": "kendall_tau", "method_a": a, "method_b": b, "value": v}
        for a, b, v in [
            ("fisher", "ablation", 2 / 3),
            ("fisher", "taylor", 2 / 3),
            ("ablation", "taylor", 1 / 3),
        ]
    ]
    agree.append({"statistic": "kendall_w", "method_a": "", "method_b": "", "value": 0.78})
    pd.DataFrame(agree).to_parquet(run_dir / "agreement.parquet", index=False)
    _manifest(run_dir)
    return run_dir


def _empty_run(run_dir: Path) -> Path:
    """The same study where every trial failed: no figures, no importance, no agreement."""
    run_dir.mkdir(parents=True)
    rows = [{"trial_id": f"t{i}", "seed": 0, "status": "failed", TEMP: t, "accuracy": np.nan,
             "gflops": np.nan, "error": "RuntimeError: planted"}
            for i, t in enumerate([2.0, 1.0, 4.0])]  # fmt: skip
    pd.DataFrame(rows).to_parquet(run_dir / "results.parquet", index=False)
    _manifest(run_dir)
    return run_dir


def _is_png(path: Path) -> bool:
    if path.read_bytes()[:8] != PNG_MAGIC:
        return False
    h, w = mpimg.imread(path).shape[:2]
    return h > 50 and w > 50


@pytest.mark.parametrize("name", list(PLOTS))
def test_every_plot_renders_a_png_from_a_full_run(name: str, tmp_path: Path) -> None:
    run = load_run(_full_run(tmp_path / "run"))
    out = tmp_path / "figures"
    out.mkdir()
    path = PLOTS.get(name)(run, out)
    assert path is not None, f"plot {name!r} drew nothing from a run that has all it needs"
    assert path.parent == out and path.suffix == ".png" and _is_png(path)


@pytest.mark.parametrize("name", list(PLOTS))
def test_every_plot_skips_or_says_so_on_a_run_with_nothing_to_show(name: str, tmp_path: Path):
    run = load_run(_empty_run(tmp_path / "run"))
    out = tmp_path / "figures"
    out.mkdir()
    path = PLOTS.get(name)(run, out)
    if path is None:
        assert not list(out.iterdir())  # skipped: nothing written
    else:
        assert _is_png(path)  # drawn with what it could show (e.g. "no successful trials")


def test_pareto_groups_name_what_the_students_are(tmp_path: Path, monkeypatch) -> None:
    """Pruned-only students record the default layer selection ("fisher") although they never
    truncated: the legend groups them as width-pruned, the truncated ones by depth and the
    strategy that chose their layers."""
    import matplotlib.pyplot as plt

    from analysis import plots

    rows = [{"trial_id": "teacher", "status": "ok", "accuracy": 0.8, "gflops": 1.5}]
    planted = [  # order, strategy recorded, gflops, config
        ("truncate,distill", "fisher", 0.5, "c0"),
        ("truncate,distill", "uniform", 0.5, "c1"),
        ("prune,distill", "fisher", 0.7, "c2"),
        ("truncate,prune,distill", "uniform", 0.3, "c3"),
    ]
    for order, strategy, gflops, cid in planted:
        for seed in (0, 1):
            rows.append(
                {"trial_id": f"{cid}_{seed}", "config_id": cid, "seed": seed, "status": "ok",
                 "accuracy": 0.6 + 0.01 * seed, "gflops": gflops, "pipeline.order": order,
                 "pipeline.truncate.strategy": strategy}
            )  # fmt: skip
    drawn: list = []
    close = plt.close
    monkeypatch.setattr(plots.plt, "close", drawn.append)  # keep the figure to read it back
    plots.pareto_plot(pd.DataFrame(rows), tmp_path / "pareto.png", "accuracy", "gflops")
    (fig,) = drawn
    try:
        legend = fig.axes[0].get_legend()
        labels = {t.get_text() for t in legend.get_texts()}
        assert legend.get_title().get_text() == "students"
        assert {"depth (fisher)", "depth (uniform)", "width (pruned)"} <= labels
        assert "depth (uniform) + width (pruned)" in labels
        assert "fisher" not in labels  # no group named by a selection that never ran
    finally:
        close(fig)


@pytest.mark.parametrize("methods", [2, 10])
def test_the_agreement_heatmap_title_fits_its_figure(tmp_path: Path, monkeypatch, methods) -> None:
    """With 2 methods the figure is narrow: its title (what the cells are and Kendall's W)
    must still lie inside the figure, not be cut at its edges."""
    import matplotlib.pyplot as plt

    from analysis import plots
    from engine.importance.base import LayerScores
    from engine.importance.consensus import agreement_table

    rng = np.random.default_rng(methods)
    scores = {
        f"method_{i}": LayerScores(f"method_{i}", tuple(rng.normal(size=6)), 64)
        for i in range(methods)
    }
    drawn: list = []
    close = plt.close
    monkeypatch.setattr(plots.plt, "close", drawn.append)  # keep the figure to read it back
    plots.agreement_heatmap(agreement_table(scores), tmp_path / "agreement.png")
    (fig,) = drawn
    try:
        fig.canvas.draw()
        box = fig.bbox
        title = fig._suptitle
        assert title is not None and "Kendall's W over all" in title.get_text()
        extent = title.get_window_extent()
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1, (extent, box)
        assert box.y0 <= extent.y0 and extent.y1 <= box.y1, (extent, box)
    finally:
        close(fig)
