"""Quality–cost Pareto front, its 2-D hypervolume, and NSGA-II ranking for k objectives.

The maths lives in :mod:`sweepcore.pareto` (shared with the engine's scheduler and its
``on_front`` column); this module re-exports it and adds the run directory's conventions:
the teacher row is not a configuration, only ``status == ok`` trials count, and
:func:`config_key` says which columns identify a configuration.

A run's Pareto set is a set of *configurations*, not of trials: :func:`seed_means` averages
each configuration's successful seeds, and :func:`config_front` marks the non-dominated means.
The engine's ``on_front`` column and the report's Pareto table, hypervolume and plot all come
from :func:`sweepcore.pareto.config_front`, so a lucky seed cannot put a configuration on one
front and not the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from analysis.rundir import config_columns, students, varying_config_columns
from sweepcore import pareto
from sweepcore.pareto import (
    crowding_distance,
    hypervolume_2d,
    nondominated_sort,
    objective_front,
    pareto_mask,
    rank_order,
)

__all__ = [
    "config_front",
    "config_key",
    "crowding_distance",
    "hypervolume_2d",
    "nondominated_sort",
    "objective_front",
    "pareto_front",
    "pareto_mask",
    "rank_order",
    "seed_means",
]


def pareto_front(df: pd.DataFrame, quality: str, cost: str) -> pd.DataFrame:
    """The non-dominated rows of ``df`` (max ``quality``, min ``cost``), sorted by cost."""
    for col in (quality, cost):
        if col not in df:
            raise KeyError(f"column {col!r} not in the table (columns: {', '.join(df.columns)})")
    mask = pareto_mask(df[quality].to_numpy(float), df[cost].to_numpy(float))
    front = df[mask]
    return front.sort_values([cost, quality], ascending=[True, False], kind="stable")


def config_key(df: pd.DataFrame) -> list[str]:
    """Columns whose values identify a configuration (its seeds share them): the engine's
    ``config_id`` (a hash of the searched values); else the config columns that vary across
    the trials; ``[]`` when the table has no config column at all (each row its own)."""
    if "config_id" in df:
        return ["config_id"]
    return varying_config_columns(df) if config_columns(df) else []


def _successful(df: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    for col in metrics:
        if col not in df:
            raise KeyError(f"column {col!r} not in the table (columns: {', '.join(df.columns)})")
    rows = students(df)
    return rows[rows["status"] == "ok"] if "status" in rows else rows


def seed_means(df: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per configuration of the successful (``status == ok``) non-teacher trials.

    Each metric ``m`` becomes its mean over the configuration's seeds (NaN values skipped)
    in column ``m``, with ``m_min`` / ``m_max`` its spread over those seeds; ``n_seeds``
    counts the successful seeds. The other columns keep the first seed's value (config
    columns are equal across seeds; per-trial columns such as ``seed`` are meaningless here).
    Configurations come out in the order of their first row (:func:`sweepcore.pareto.seed_means`).
    """
    return pareto.seed_means(_successful(df, metrics), metrics, config_key(df))


def config_front(
    df: pd.DataFrame,
    objectives: Sequence[tuple[str, str]],
    metrics: Sequence[str] = (),
) -> pd.DataFrame:
    """:func:`seed_means` of ``objectives`` (and ``metrics``) with a boolean ``on_front``:
    the configuration's seed-averaged objectives are non-dominated among all configurations
    (:func:`sweepcore.pareto.config_front`; a configuration with a NaN mean is never on the
    front)."""
    cols = [*(c for c, _ in objectives), *metrics]
    return pareto.config_front(_successful(df, cols), objectives, config_key(df), metrics)
