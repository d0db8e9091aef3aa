"""Quality–cost Pareto front and its 2-D hypervolume.

Quality is maximised, cost minimised. A row is dominated when another row is at least as good
on both and strictly better on one; rows with equal (quality, cost) do not dominate each other,
so exact ties are all kept. Rows with a NaN in either column are excluded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["hypervolume_2d", "pareto_front", "pareto_mask"]


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


def pareto_front(df: pd.DataFrame, quality: str, cost: str) -> pd.DataFrame:
    """The non-dominated rows of ``df`` (max ``quality``, min ``cost``), sorted by cost."""
    for col in (quality, cost):
        if col not in df:
            raise KeyError(f"column {col!r} not in the table (columns: {', '.join(df.columns)})")
    mask = pareto_mask(df[quality].to_numpy(float), df[cost].to_numpy(float))
    front = df[mask]
    return front.sort_values([cost, quality], ascending=[True, False], kind="stable")


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
