"""Latency and its noise floor: how far apart identical architectures are timed.

Two models with the same architecture and cost (same GFLOPs, parameters and weight bytes,
timed on the same device) run the same kernels, so any difference between their p50
latencies is measurement noise. The largest such spread in a run is its *noise floor*: a
latency difference or Δ below it is not evidence that one model is faster. Only rows timed
in the serial latency phase (``latency_phase == "serial"``, see
:mod:`engine.latency_phase`) are compared; a run written before that phase existed has
in-trial figures only, and the text says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.render import Block, Heading, Para, Table, format_table
from analysis.rundir import RunData

__all__ = [
    "ARCHITECTURE_COLUMNS",
    "NoiseFloor",
    "identical_architectures",
    "latency_blocks",
    "latency_note",
    "noise_floor",
    "noise_floor_text",
]

# what makes two models "the same architecture and cost"
ARCHITECTURE_COLUMNS = ("student_layers", "gflops", "params", "weights_bytes")
LATENCY = "latency_ms_p50"


@dataclass(frozen=True)
class NoiseFloor:
    """The widest p50 spread among groups of identical architectures."""

    spread_ms: float  # max − min p50 within a group, the largest over groups
    spread_pct: float  # the largest (max − min) / median p50 of a group, in %
    ratio: float  # the largest max / min p50 of a group
    groups: int
    models: int


def _serial(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with a usable latency: ok, finite, and timed in the serial phase (when the run
    has that column)."""
    if LATENCY not in df:
        return df.iloc[:0]
    rows = df[np.isfinite(pd.to_numeric(df[LATENCY], errors="coerce").to_numpy(float))]
    if "status" in rows:
        rows = rows[rows["status"] == "ok"]
    if "latency_phase" in rows:
        rows = rows[rows["latency_phase"] == "serial"]
    return rows


def identical_architectures(df: pd.DataFrame) -> pd.DataFrame:
    """One row per group of ≥ 2 timed models sharing :data:`ARCHITECTURE_COLUMNS` (and
    ``latency_device``): the key columns, ``n``, ``trials``, p50 ``min``/``median``/``max``,
    ``spread_ms`` = max − min, ``spread_pct`` = spread / median × 100, ``ratio`` = max / min.
    Widest spread first."""
    rows = _serial(df)
    key = [c for c in (*ARCHITECTURE_COLUMNS, "latency_device") if c in rows]
    if rows.empty or not {"gflops", "params"} <= set(key):
        return pd.DataFrame()
    rows = rows.copy()
    rows["gflops"] = rows["gflops"].astype(float).round(9)  # fvcore counts: exact, but floats
    out = []
    for values, g in rows.groupby(key, dropna=False, sort=False):
        if len(g) < 2:
            continue
        p50 = g[LATENCY].to_numpy(float)
        lo, med, hi = float(p50.min()), float(np.median(p50)), float(p50.max())
        out.append(
            {
                **dict(zip(key, values, strict=True)),
                "n": len(g),
                "trials": ", ".join(map(str, g["trial_id"])) if "trial_id" in g else "",
                "p50 min": lo,
                "p50 median": med,
                "p50 max": hi,
                "spread_ms": hi - lo,
                "spread_pct": 100.0 * (hi - lo) / med,
                "ratio": hi / lo,
            }
        )
    if not out:
        return pd.DataFrame()
    return pd.DataFrame(out).sort_values("spread_pct", ascending=False, ignore_index=True)


def noise_floor(df: pd.DataFrame) -> NoiseFloor | None:
    """The run's latency noise floor, or None when no two timed models share an
    architecture."""
    groups = identical_architectures(df)
    if groups.empty:
        return None
    return NoiseFloor(
        spread_ms=float(groups["spread_ms"].max()),
        spread_pct=float(groups["spread_pct"].max()),
        ratio=float(groups["ratio"].max()),
        groups=len(groups),
        models=int(groups["n"].sum()),
    )


def _phase(run: RunData) -> str:
    df = run.results
    if "latency_phase" not in df:
        return "in_trial"
    return "serial" if (df["latency_phase"] == "serial").any() else "none"


def noise_floor_text(run: RunData) -> str:
    """One sentence to put beside any latency figure or Δ of ``run``."""
    phase = _phase(run)
    if phase == "in_trial":
        return (
            "Latency in this run was timed inside each trial while other trials trained beside "
            "it (written before the serial latency phase existed): differences between trials "
            "are mostly load, not the model."
        )
    if phase == "none":
        return "No model of this run was timed in the serial latency phase (see `latency_reason`)."
    floor = noise_floor(run.results)
    if floor is not None:
        return (
            f"Latency noise floor: identical architectures (same GFLOPs, parameters and weight "
            f"bytes) timed in the serial phase differ in p50 by up to {floor.spread_ms:.2f} ms "
            f"({floor.spread_pct:.0f} % of their median; {floor.groups} group(s), "
            f"{floor.models} models); latency differences within that are noise."
        )
    by_group = (run.manifest.get("latency") or {}).get("teacher_p50_by_group") or []
    text = (
        "No two timed models share an architecture here, so this run cannot show its "
        "latency noise floor"
    )
    finite = [v for v in by_group if isinstance(v, int | float) and math.isfinite(v)]
    if len(finite) >= 2:
        lo, hi = min(finite), max(finite)
        text += (
            f"; the teacher, timed in each of the phase's {len(finite)} groups, measured "
            f"{lo:.2f} to {hi:.2f} ms (p50, {100 * (hi - lo) / lo:.0f} % apart)"
        )
    return text + "."


def latency_note(run: RunData) -> str:
    """The report's note on how latency was measured."""
    info = run.manifest.get("latency") or {}
    batch = info.get("batch_size") or (run.config.get("measure") or {}).get("batch_size", "?")
    if _phase(run) != "serial":
        return f"Latency is per batch of {batch} examples. " + noise_floor_text(run)
    return (
        f"Latency is per batch of {batch} examples, timed after the sweep in the serial "
        "phase: the saved models reloaded and timed in turns, one forward at a time, by one "
        f"process on a node held whole ({info.get('node', '?')}), on the device in "
        f"`latency_device` with `latency_threads` torch threads, warm-up "
        f"{info.get('warmup', '?')}, {info.get('repeats', '?')} timed rounds. "
        + noise_floor_text(run)
    )


def latency_blocks(run: RunData) -> list[Block]:
    """The report section: how latency was measured, and the identical-architecture groups
    that give its noise floor."""
    df = run.results
    if LATENCY not in df:
        return []
    blocks: list[Block] = [Heading("Latency and its noise floor"), Para(latency_note(run))]
    groups = identical_architectures(df)
    if not groups.empty:
        shown = groups.drop(columns=[c for c in ("latency_device",) if c in groups])
        blocks.append(
            Para(
                "Groups of timed models with the same architecture and cost; their p50 spread "
                "is the noise floor (widest first):"
            )
        )
        blocks.append(Table(format_table(shown)))
    untimed = (
        df[df["latency_phase"] != "serial"] if "latency_phase" in df else df.iloc[:0]
    ).dropna(subset=["latency_reason"] if "latency_reason" in df else [])
    if len(untimed) and "latency_reason" in untimed:
        reasons = untimed["latency_reason"].value_counts()
        blocks.append(
            Para(
                "Not timed: "
                + "; ".join(f"{n} × {reason}" for reason, n in reasons.items())
                + " (their latency columns are empty)."
            )
        )
    return blocks
