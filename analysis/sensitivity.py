"""One knob at a time (``search.algorithm: one_at_a_time``): each knob's effect on the centre.

The *centre* is the study's own settings: every searched knob at its value in the study file.
A knob's trials are the centre's and those where that knob alone moved (every other searched
knob at the centre). For each value of each knob: the ok seeds, quality and cost (mean, 95 %
Student-t interval over seeds), and the change against the centre *paired by seed*:
Δ = metric(value, seed) − metric(centre, seed), averaged over the seeds both ran, with its
t interval. Knobs are then ranked by the largest |mean Δ quality| over their values.
"""

from __future__ import annotations

from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.paired import base_per_seed, config_value, matches, paired_effect, same_value
from analysis.plots import AXIS_LABELS, PLOTS, save_figure
from analysis.render import Block, Heading, Image, Para, Table, format_table, interval_cells
from analysis.rundir import RunData, students

__all__ = [
    "centre_values",
    "is_one_at_a_time",
    "knob_effects",
    "knob_ranking",
    "sensitivity_blocks",
    "sensitivity_plot",
]


def is_one_at_a_time(run: RunData) -> bool:
    return (run.config.get("search") or {}).get("algorithm") == "one_at_a_time"


def centre_values(run: RunData) -> dict[str, Any]:
    """Each searched knob's value in the study file (``manifest.json`` ``config``)."""
    space = (run.config.get("search") or {}).get("space") or {}
    return {key: config_value(run.config, key) for key in space}


def _comparable(run: RunData) -> pd.DataFrame:
    """The trials, less those of ``search.extra`` configurations that moved a path outside
    the knobs (they are not one knob away from the centre)."""
    df = students(run.results)
    space = (run.config.get("search") or {}).get("space") or {}
    extra = (run.config.get("search") or {}).get("extra") or []
    held = {k: config_value(run.config, k) for point in extra for k in point if k not in space}
    return df[matches(df, held, [k for k in held if k in df])]


def knob_effects(run: RunData, quality: str, cost: str) -> pd.DataFrame:
    """One row per (knob, value): ``n`` ok seeds, ``n_failed``, ``<m>_mean`` / ``_ci_low`` /
    ``_ci_high`` for quality and cost, and the paired ``d_<m>_*`` against the centre
    (``n_pairs`` seeds in both). Empty when the run is not one knob at a time."""
    centre = centre_values(run)
    df = _comparable(run)
    keys = [k for k in centre if k in df]
    if not keys or df.empty or quality not in df:
        return pd.DataFrame()
    metrics = [m for m in dict.fromkeys([quality, cost]) if m in df]
    base = base_per_seed(df[matches(df, centre, keys)], metrics)
    rows: list[dict[str, Any]] = []
    for key in keys:
        mine = df[matches(df, centre, [k for k in keys if k != key])]
        values: list[Any] = []
        for v in mine[key]:
            if not any(same_value(v, u) for u in values):
                values.append(v)
        if all(isinstance(v, Real) and not isinstance(v, bool | np.bool_) for v in values):
            values.sort()
        for value in values:
            sel = mine[mine[key].map(lambda x, v=value: same_value(x, v))]
            rows.append(
                {
                    "knob": key,
                    "value": value,
                    "centre": same_value(value, centre[key]),
                    **paired_effect(sel, base, metrics),
                }
            )
    return pd.DataFrame(rows)


def knob_ranking(effects: pd.DataFrame, quality: str, cost: str) -> pd.DataFrame:
    """One row per knob, the most sensitive first: largest |mean Δ quality| over its values,
    the value with the best mean quality, and the range of mean Δ cost."""
    rows = []
    for key, g in effects.groupby("knob", sort=False):
        moved = g[~g["centre"]]
        d = moved[f"d_{quality}_mean"].abs()
        best = g.loc[g[f"{quality}_mean"].idxmax()] if g[f"{quality}_mean"].notna().any() else None
        row = {
            "knob": key.removeprefix("pipeline."),
            "values tried": ", ".join(str(v) for v in g["value"]),
            f"max |Δ {quality}|": float(d.max()) if d.notna().any() else float("nan"),
            f"best {quality} at": None if best is None else best["value"],
        }
        dc = moved.get(f"d_{cost}_mean")
        if dc is not None and dc.notna().any():
            row[f"Δ {cost} range"] = f"{dc.min():+.4g} … {dc.max():+.4g}"
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    return out.sort_values(f"max |Δ {quality}|", ascending=False, na_position="last")


def sensitivity_blocks(run: RunData, images: dict[str, Path]) -> list[Block]:
    """The report section of a one-knob-at-a-time study (nothing for other studies)."""
    if not is_one_at_a_time(run):
        return []
    quality, cost = run.quality_metric, run.cost_metric
    effects = knob_effects(run, quality, cost)
    blocks: list[Block] = [Heading("Sensitivity: one knob at a time")]
    if effects.empty or (effects["n"] == 0).all():
        return [*blocks, Para("No successful trials to compare.")]
    centre = centre_values(run)
    blocks.append(
        Para(
            "Centre (the study's settings): "
            + ", ".join(f"`{k.removeprefix('pipeline.')}` = {v}" for k, v in centre.items())
            + f". Δ = a value's {quality} (or {cost}) minus the centre's under the same seed, "
            "averaged over the seeds both ran, with a 95 % Student-t interval over seeds (— "
            "with fewer than 2 seeds; with 2 seeds the interval is wide by construction). "
            "Knobs are ranked by their largest |mean Δ|."
        )
    )
    blocks.append(Table(format_table(knob_ranking(effects, quality, cost))))
    show = effects[["knob", "value", "n", "n_failed"]].copy()
    show["knob"] = show["knob"].str.removeprefix("pipeline.")
    show["value"] = [f"{v} (centre)" if c else str(v) for v, c in zip(effects["value"],
                                                                    effects["centre"],
                                                                    strict=True)]  # fmt: skip
    for m in dict.fromkeys([quality, cost]):
        if f"{m}_mean" not in effects:
            continue
        show[m] = effects[f"{m}_mean"]
        show[f"Δ {m}"] = effects[f"d_{m}_mean"]
        show[f"Δ {m} ci95"] = interval_cells(effects[f"d_{m}_ci_low"], effects[f"d_{m}_ci_high"])
    blocks.append(Table(format_table(show)))
    if "sensitivity" in images:
        blocks.append(Image(images["sensitivity"].name, "sensitivity"))
    return blocks


def _numeric(values: pd.Series) -> bool:
    return bool(pd.to_numeric(values, errors="coerce").notna().all())


@PLOTS.register("sensitivity")
def sensitivity_plot(run: RunData, out_dir: Path) -> Path | None:
    """One column per knob: quality (top) and cost (bottom) against the knob's value — each
    seed a dot, the mean with its 95 % interval as a bar, the centre's value dotted."""
    import matplotlib.pyplot as plt

    if not is_one_at_a_time(run):
        return None
    quality, cost = run.quality_metric, run.cost_metric
    effects = knob_effects(run, quality, cost)
    if effects.empty or (effects["n"] == 0).all():
        return None
    df = _comparable(run)
    ok = df[df["status"] == "ok"] if "status" in df else df
    knobs = list(dict.fromkeys(effects["knob"]))
    metrics = [m for m in dict.fromkeys([quality, cost]) if f"{m}_mean" in effects]
    fig, axes = plt.subplots(
        len(metrics), len(knobs), figsize=(2.6 * len(knobs) + 0.6, 2.4 * len(metrics) + 0.4),
        dpi=110, squeeze=False, sharey="row",
    )  # fmt: skip
    centre = centre_values(run)
    for j, key in enumerate(knobs):
        g = effects[effects["knob"] == key]
        numeric = _numeric(g["value"])
        xs = g["value"].astype(float).to_numpy() if numeric else np.arange(len(g), dtype=float)
        order = np.argsort(xs)
        for i, m in enumerate(metrics):
            ax = axes[i][j]
            for x, value in zip(xs, g["value"], strict=True):
                seeds = ok[ok[key].map(lambda v, u=value: same_value(v, u))]
                seeds = seeds[
                    matches(seeds, centre, [k for k in centre if k != key and k in seeds])
                ]
                ax.scatter([x] * len(seeds), seeds[m], s=12, color="grey", alpha=0.6, zorder=2)
            mean = g[f"{m}_mean"].to_numpy(float)
            lo, hi = g[f"{m}_ci_low"].to_numpy(float), g[f"{m}_ci_high"].to_numpy(float)
            err = np.where(np.isfinite(lo), [mean - lo, hi - mean], 0.0)
            ax.errorbar(xs[order], mean[order], yerr=err[:, order], marker="o", color="C0",
                        capsize=3, linewidth=1.2, zorder=3)  # fmt: skip
            centre_x = xs[g["centre"].to_numpy(bool)]
            for cx in centre_x:
                ax.axvline(cx, color="black", linestyle=":", linewidth=1)
            if numeric and xs.min() > 0 and xs.max() >= 10 * xs.min():
                ax.set_xscale("log")  # e.g. learning rates
            if not numeric:
                ax.set_xticks(xs, [str(v) for v in g["value"]], rotation=30, fontsize=7)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(AXIS_LABELS.get(m, m), fontsize=8)
            if i == len(metrics) - 1:
                ax.set_xlabel(key.removeprefix("pipeline."), fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(f"{run.name}: one knob at a time (dotted: the centre)", fontsize=9)
    fig.tight_layout()
    path = Path(out_dir) / "sensitivity.png"
    save_figure(fig, path)
    return path
