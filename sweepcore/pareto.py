"""Pareto maths on plain arrays and tables: no run-directory conventions, no engine, no plots.

Quality is maximised, cost minimised (:func:`pareto_mask`, :func:`hypervolume_2d`). A row is
dominated when another row is at least as good on both and strictly better on one; rows with
equal (quality, cost) do not dominate each other, so exact ties are all kept. Rows with a NaN
in either column are excluded.

:func:`nondominated_sort` and :func:`crowding_distance` (Deb et al. 2002, NSGA-II) work on a
matrix of objectives to *minimise* (negate a maximised one); the multi-objective scheduler
ranks each rung with them, and :func:`objective_front` picks the non-dominated rows of a table.

A study's Pareto set is a set of *configurations*, not of trials: :func:`seed_means` averages
the rows that share the ``key`` columns, and :func:`config_front` marks the non-dominated
means. The engine's ``on_front`` column and the report (through
:func:`analysis.frontier.config_front`, which adds the run directory's conventions) both call
this one definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "config_front",
    "crowding_distance",
    "hypervolume_2d",
    "nondominated_sort",
    "objective_front",
    "pareto_mask",
    "rank_order",
    "seed_means",
    "snap_equal",
]


def pareto_mask(
    quality: Sequence[float] | np.ndarray, cost: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Boolean mask of non-dominated points (NaN points are never on the front)."""
    q = np.asarray(quality, dtype=float)
    c = np.asarray(cost, dtype=float)
    if q.shape != c.shape or q.ndim != 1:
        raise ValueError(f"quality and cost must be 1-D of equal length, got {q.shape}, {c.shape}")
    ok = np.isfinite(q) & np.isfinite(c)
    qv, cv = q[ok], c[ok]
    # dominated[i] = any j: q_j >= q_i and c_j <= c_i and (q_j > q_i or c_j < c_i)
    geq = (qv[None, :] >= qv[:, None]) & (cv[None, :] <= cv[:, None])
    strict = (qv[None, :] > qv[:, None]) | (cv[None, :] < cv[:, None])
    dominated = (geq & strict).any(axis=1)
    mask = np.zeros(q.shape, dtype=bool)
    mask[np.flatnonzero(ok)[~dominated]] = True
    return mask


def hypervolume_2d(points: Sequence[Sequence[float]] | np.ndarray, ref: Sequence[float]) -> float:
    """Area dominated by ``points`` ((quality, cost) pairs) and bounded by ``ref``.

    ``ref = (quality_ref, cost_ref)`` is a worst-case corner: the area counted is the union of
    the rectangles ``[quality_ref, q] × [c, cost_ref]``. Points no better than ``ref`` in
    either coordinate add nothing. Larger is better.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    q_ref, c_ref = float(ref[0]), float(ref[1])
    keep = np.isfinite(pts).all(axis=1) & (pts[:, 0] > q_ref) & (pts[:, 1] < c_ref)
    pts = pts[keep]
    if len(pts) == 0:
        return 0.0
    pts = pts[np.argsort(pts[:, 1], kind="stable")]  # cheapest first
    costs = np.append(pts[:, 1], c_ref)
    best_q = np.maximum.accumulate(pts[:, 0])  # best quality at or below each cost
    return float(np.sum((costs[1:] - costs[:-1]) * (best_q - q_ref)))


def _as_matrix(objectives: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    f = np.asarray(objectives, dtype=float)
    if f.ndim == 1:
        f = f.reshape(-1, 1)
    if f.ndim != 2:
        raise ValueError(f"objectives must be a 2-D (points × objectives) array, got {f.shape}")
    return f


def nondominated_sort(objectives: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Front index of each point (0 = non-dominated), all objectives minimised.

    Point i dominates j when it is no worse on every objective and better on one. A point
    with a NaN objective is put behind every finite point (one front after the last).
    """
    f = _as_matrix(objectives)
    n = len(f)
    ranks = np.full(n, -1, dtype=int)
    finite = np.isfinite(f).all(axis=1)
    fv = f[finite]
    # dom[i, j]: i dominates j
    leq = (fv[:, None, :] <= fv[None, :, :]).all(axis=2)
    lt = (fv[:, None, :] < fv[None, :, :]).any(axis=2)
    dom = leq & lt
    remaining = np.ones(len(fv), dtype=bool)
    sub = np.full(len(fv), -1, dtype=int)
    front = 0
    while remaining.any():
        # points not dominated by any remaining point
        dominated = (dom & remaining[:, None]).any(axis=0)
        current = remaining & ~dominated
        sub[current] = front
        remaining &= ~current
        front += 1
    ranks[finite] = sub
    ranks[~finite] = front
    return ranks


def crowding_distance(objectives: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each point within one front (larger = less crowded).

    Per objective, sort the points; the two extremes get ``inf``; an inner point adds the gap
    between its neighbours divided by the objective's range. Objectives with zero range add 0.
    """
    f = _as_matrix(objectives)
    n, m = f.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(m):
        order = np.argsort(f[:, k], kind="stable")
        col = f[order, k]
        span = col[-1] - col[0]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


def rank_order(objectives: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Indices from best to worst: by front, then by crowding distance (larger first).

    Equal (front, distance) keep their input order, so earlier arrivals win exact ties.
    """
    f = _as_matrix(objectives)
    ranks = nondominated_sort(f)
    crowd = np.zeros(len(f))
    for r in np.unique(ranks):
        members = np.flatnonzero(ranks == r)
        crowd[members] = crowding_distance(f[members])
    return np.lexsort((np.arange(len(f)), -crowd, ranks))


def objective_front(df: pd.DataFrame, objectives: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """The rows of ``df`` on the first front for ``objectives`` = [(column, "max"|"min"), ...].

    Rows with a NaN objective are never on the front.
    """
    for col, mode in objectives:
        if col not in df:
            raise KeyError(f"column {col!r} not in the table (columns: {', '.join(df.columns)})")
        if mode not in ("max", "min"):
            raise ValueError(f"mode for {col!r} must be 'max' or 'min', got {mode!r}")
    if df.empty:
        return df
    f = np.column_stack(
        [df[c].to_numpy(float) * (-1.0 if m == "max" else 1.0) for c, m in objectives]
    )
    ok = np.isfinite(f).all(axis=1)
    return df[(nondominated_sort(f) == 0) & ok]


def seed_means(rows: pd.DataFrame, metrics: Sequence[str], key: Sequence[str]) -> pd.DataFrame:
    """One row per configuration of ``rows``: the rows that share the ``key`` columns.

    Each metric ``m`` becomes its mean over the configuration's rows (NaN values skipped) in
    column ``m``, with ``m_min`` / ``m_max`` its spread; ``n_seeds`` counts the rows. The other
    columns keep the first row's value. ``key = []`` makes each row its own configuration.
    Configurations come out in the order of their first row.
    """
    for col in metrics:
        if col not in rows:
            raise KeyError(f"column {col!r} not in the table (columns: {', '.join(rows.columns)})")
    metrics = list(dict.fromkeys(metrics))
    key = list(key)
    if not key:  # nothing says which rows share a configuration
        rows = rows.assign(_row=np.arange(len(rows)))
        key = ["_row"]
    if rows.empty:
        return pd.DataFrame(
            columns=[
                *rows.columns,
                "n_seeds",
                *(f"{m}_{s}" for m in metrics for s in ("min", "max")),
            ]
        )
    rows = rows.assign(**{m: rows[m].astype(float) for m in metrics})
    groups = rows.groupby(key, dropna=False, sort=False)
    out = groups.first()
    out[metrics] = groups[metrics].mean()
    for stat in ("min", "max"):
        spread = groups[metrics].agg(stat)
        out[[f"{m}_{stat}" for m in metrics]] = spread.set_axis(
            [f"{m}_{stat}" for m in metrics], axis=1
        )
    out["n_seeds"] = groups.size()
    return out.reset_index().drop(columns=["_row"], errors="ignore")


def config_front(
    rows: pd.DataFrame,
    objectives: Sequence[tuple[str, str]],
    key: Sequence[str],
    metrics: Sequence[str] = (),
) -> pd.DataFrame:
    """:func:`seed_means` of ``objectives`` (and ``metrics``) with a boolean ``on_front``:
    the configuration's averaged objectives are non-dominated among all configurations
    (:func:`objective_front`; a configuration with a NaN mean is never on the front; means
    equal up to rounding, :func:`snap_equal`, tie)."""
    cols = [c for c, _ in objectives]
    configs = seed_means(rows, [*cols, *metrics], key)
    configs["on_front"] = False
    if not configs.empty:
        # means equal up to the rounding of their sums compare as equal (e.g. mean(.4, .4, .6,
        # .4) = 0.44999999999999996 and mean(.6, .6, .2, .4) = 0.45000000000000007)
        snapped = configs.assign(**{c: snap_equal(configs[c].to_numpy(float)) for c in cols})
        configs.loc[objective_front(snapped, objectives).index, "on_front"] = True
    return configs


def snap_equal(values: np.ndarray, rel: float = 1e-9) -> np.ndarray:
    """``values`` with each run of sorted values closer than ``rel`` (relative to the larger
    magnitude) to the run's first value replaced by that first value; NaN stays NaN."""
    out = np.array(values, dtype=float)
    order = [i for i in np.argsort(out, kind="stable") if np.isfinite(out[i])]
    first = None
    for i in order:
        if first is not None and out[i] - first <= rel * max(abs(first), abs(out[i])):
            out[i] = first
        else:
            first = out[i]
    return out
