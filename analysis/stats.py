"""Across-seed statistics: group trials by their config and summarise each metric.

For each group and metric: mean, sample standard deviation (ddof = 1), n (successful seeds)
and a two-sided Student-t confidence interval ``mean ± t_{(1+c)/2, n-1} · std / √n``, which is
the right interval for a handful of seeds (NaN when n < 2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.rundir import students, varying_config_columns

__all__ = ["DEFAULT_SUMMARY_METRICS", "n_stopped", "summarize", "t_interval"]

DEFAULT_SUMMARY_METRICS = ("accuracy", "macro_f1", "gflops", "params", "latency_ms_p50")


def t_interval(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> tuple[float, float]:
    """Student-t interval for the mean of ``values`` (NaNs dropped); (nan, nan) for n < 2."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return (float("nan"), float("nan"))
    half = sps.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return (float(x.mean() - half), float(x.mean() + half))


def n_stopped(trials: pd.DataFrame) -> int:
    """Trials a scheduler stopped early (``status == "stopped"``): neither ok nor failed."""
    return int(trials["status"].eq("stopped").sum()) if "status" in trials else 0


def summarize(
    df: pd.DataFrame,
    by: Sequence[str] | None = None,
    metrics: Sequence[str] = DEFAULT_SUMMARY_METRICS,
    *,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per config group of the non-teacher trials.

    Args:
        by: grouping columns; default the config columns that vary across trials (so the
            seeds of one config fall in one group).
        metrics: metric columns to summarise (missing ones are skipped).

    Returns:
        ``by`` columns, ``n`` (ok seeds), ``n_failed`` (trials that failed), ``n_stopped``
        (:func:`n_stopped`: not failures, and not in the statistics), then ``<m>_mean``,
        ``<m>_std``, ``<m>_ci_low``, ``<m>_ci_high`` for each metric ``m``. Empty if there are no trials.
    """
    rows_in = students(df)
    by = list(varying_config_columns(df) if by is None else by)
    metrics = [m for m in metrics if m in rows_in]
    ok = rows_in["status"].eq("ok") if "status" in rows_in else pd.Series(True, rows_in.index)
    out: list[dict[str, object]] = []
    groups = rows_in.groupby(by, dropna=False, sort=True) if by else [((), rows_in)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        g_ok = g[ok.loc[g.index]]
        row: dict[str, object] = dict(zip(by, key, strict=True))
        row["n"] = len(g_ok)
        row["n_stopped"] = n_stopped(g)
        row["n_failed"] = len(g) - len(g_ok) - row["n_stopped"]
        for m in metrics:
            x = g_ok[m].to_numpy(float)
            x = x[np.isfinite(x)]
            row[f"{m}_mean"] = float(x.mean()) if len(x) else float("nan")
            row[f"{m}_std"] = float(x.std(ddof=1)) if len(x) > 1 else float("nan")
            row[f"{m}_ci_low"], row[f"{m}_ci_high"] = t_interval(x, confidence)
        out.append(row)
    return pd.DataFrame(out)
