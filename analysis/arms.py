"""Extra configurations (``search.extra``) against their base: what a component adds.

An extra configuration (an *arm*) sets some config paths. Its *base* is the search's own
configuration it departs from: the arm's values on the searched keys, the study's settings on
every other key the arm sets (and on the searched keys it leaves alone). In ``ablation`` the
arm ``{keep_ratio: 0.67, order: [truncate, distill, prune]}`` has as base the grid's Fisher
4-of-6 KD student (``order`` at the study's ``[truncate, distill]``): the row says what
pruning added. Each arm's metrics and their change against the base, paired by seed
(:func:`analysis.paired.paired_effect`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from analysis.latency import noise_floor, noise_floor_text
from analysis.paired import base_per_seed, column_form, config_value, matches, paired_effect
from analysis.render import Block, Heading, Para, Table, format_table, interval_cells
from analysis.rundir import RunData, students

__all__ = ["ARM_COSTS", "arm_blocks", "arm_effects", "arm_metrics", "beyond_noise"]

ARM_COSTS = ("gflops", "latency_ms_p50", "weights_bytes")  # shown after the task's quality metrics


def arm_metrics(run: RunData) -> tuple[str, ...]:
    """The metrics an arm is compared on: the task's quality metrics, then :data:`ARM_COSTS`."""
    return (*run.quality_metrics, *ARM_COSTS)


def _short(key: str) -> str:
    return key.removeprefix("pipeline.")


def _settings(run: RunData) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    search = run.config.get("search") or {}
    return search.get("space") or {}, list(search.get("extra") or [])


def arm_effects(run: RunData, metrics: tuple[str, ...] | None = None) -> pd.DataFrame:
    """One row per extra configuration: ``arm`` (what it changes from its base), ``base``
    (the base's searched values), then :func:`~analysis.paired.paired_effect`'s columns
    (``n_base`` = seeds the base ran ok), for ``metrics`` (default :func:`arm_metrics`).
    Empty without ``search.extra``."""
    metrics = arm_metrics(run) if metrics is None else metrics
    space, extra = _settings(run)
    df = students(run.results)
    if not extra or df.empty:
        return pd.DataFrame()
    metrics_in = [m for m in metrics if m in df]
    keys = sorted({*space, *(k for point in extra for k in point)})
    keys = [k for k in keys if k in df]
    study = {k: config_value(run.config, k) for k in keys}
    rows = []
    for point in extra:
        arm = {**study, **{k: column_form(v) for k, v in point.items()}}
        changed = [k for k in point if k not in space]
        label = "; ".join(f"{_short(k)} = {arm[k]}" for k in (changed or list(point)))
        missing = [k for k in point if k not in df]
        if missing:  # results written by another version: say so rather than guess
            rows.append({"arm": f"{label} (not in results.parquet: {', '.join(missing)})", "n": 0})
            continue
        base_values = {**study, **{k: arm[k] for k in point if k in space}}
        # an arm that only sets searched keys is an extra search point: it departs from nothing
        base_rows = df[matches(df, base_values, keys)] if changed else df.iloc[:0]
        base = base_per_seed(base_rows, metrics_in)
        rows.append(
            {
                "arm": label,
                "base": "; ".join(f"{_short(k)} = {base_values[k]}" for k in space if k in df)
                if changed
                else None,
                "n_base": len(base),
                **paired_effect(df[matches(df, arm, keys)], base, metrics_in),
            }
        )
    return pd.DataFrame(rows)


def beyond_noise(d: pd.Series, arm: pd.Series, floor_pct: float) -> list[str]:
    """Per arm, whether |Δ latency| exceeds the noise floor (``floor_pct`` % of the base's
    latency, base = arm − Δ): ``yes``, ``no`` or ``—`` without a Δ."""
    out = []
    for delta, value in zip(d, arm, strict=True):
        base = value - delta
        if not (np.isfinite(delta) and np.isfinite(base)):
            out.append("—")
        else:
            out.append("yes" if abs(delta) > floor_pct / 100 * base else "no")
    return out


def arm_blocks(run: RunData) -> list[Block]:
    """The report section on a study's extra configurations (nothing without them)."""
    effects = arm_effects(run)
    if effects.empty:
        return []
    quality = run.quality_metric
    show = effects[[c for c in ("arm", "base", "n", "n_base") if c in effects]].copy()
    for m in arm_metrics(run):
        if f"{m}_mean" not in effects:
            continue
        show[m] = effects[f"{m}_mean"]
        show[f"Δ {m}"] = effects[f"d_{m}_mean"]
        if m == quality:
            show[f"Δ {m} ci95"] = interval_cells(
                effects[f"d_{m}_ci_low"], effects[f"d_{m}_ci_high"]
            )
        if m == "latency_ms_p50" and (floor := noise_floor(run.results)) is not None:
            show["Δ latency beyond noise"] = beyond_noise(
                effects[f"d_{m}_mean"], effects[f"{m}_mean"], floor.spread_pct
            )
    return [
        Heading("Extra configurations against their base"),
        Para(
            "Each configuration of `search.extra` (e.g. a compression stage switched on) beside "
            "the search's configuration it departs from (`base`: the same searched values, the "
            "study's settings elsewhere). Δ = the arm's metric minus the base's under the same "
            "seed, averaged over seeds both ran (95 % Student-t interval over seeds; — with "
            "fewer than 2). " + noise_floor_text(run)
        ),
        Table(format_table(show)),
    ]
