"""Per-example tables of a run directory, and bootstrap intervals for a difference of runs.

A task that keeps per-example outputs writes one table per model under its folder of the run
directory (the engine's ``Task.examples_dir``): ``rankings/<trial_id>.parquet`` (next-item:
the target's 0-based rank per test user) and ``predictions/<trial_id>.parquet`` (rating
regression: rating and prediction per test review). :data:`EXAMPLE_TABLES` says, per folder,
which columns name a test example and how each metric follows from the rows: as
``finish(mean over examples of per-example values)`` — HR@k, NDCG@k, MRR and MAE are means,
RMSE is √ of a mean — so a resample of the examples gives the resampled metric.

:func:`paired_bootstrap` resamples the test examples once per draw for both runs (every seed's
table), a percentile interval; :func:`seed_interval` is Welch's t interval over two
independent sets of per-seed figures. Coverage at nominal 95 % (tests/analysis/test_examples.py,
400 simulated comparisons each): paired over 300 test examples, 93.8 % for a mean metric and
for RMSE; over seeds, Welch's interval with 3 seeds a side (a percentile bootstrap of 3 values
covered 81.5 %: too narrow, so it is not used).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.ranking import per_user_ndcg

__all__ = [
    "EXAMPLE_TABLES",
    "LEVEL",
    "SAMPLES",
    "ExampleMetric",
    "ExampleTable",
    "aligned",
    "paired_bootstrap",
    "read_tables",
    "seed_interval",
]

LEVEL = 0.95
SAMPLES = 2000
_CELLS = 4_000_000  # values gathered per bootstrap chunk (bounds memory for large splits)


@dataclass(frozen=True)
class ExampleMetric:
    """A metric as ``finish(mean over examples of values(table))`` (``finish`` vectorised)."""

    values: Callable[[pd.DataFrame], np.ndarray]
    finish: Callable[[np.ndarray], np.ndarray] = np.asarray


@dataclass(frozen=True)
class ExampleTable:
    """A kind of per-example table: the columns naming a test example, and its metrics."""

    key: tuple[str, ...]
    metric: Callable[[str], ExampleMetric | None]


_AT_K = re.compile(r"(hr|ndcg)_at_(\d+)")


def _ranking_metric(name: str) -> ExampleMetric | None:
    """HR@k, NDCG@k, MRR from the target's 0-based rank (:mod:`analysis.ranking`)."""
    if name == "mrr":
        return ExampleMetric(lambda t: 1.0 / (t["rank"].to_numpy(float) + 1.0))
    m = _AT_K.fullmatch(name)
    if m is None:
        return None
    k = int(m[2])
    if m[1] == "hr":
        return ExampleMetric(lambda t: (t["rank"].to_numpy(float) < k).astype(float))
    return ExampleMetric(lambda t: per_user_ndcg(t["rank"].to_numpy(), k))


def _error(t: pd.DataFrame) -> np.ndarray:
    return t["prediction"].to_numpy(float) - t["rating"].to_numpy(float)


def _prediction_metric(name: str) -> ExampleMetric | None:
    """MAE (mean |error|) and RMSE (√ of the mean squared error)."""
    if name == "mae":
        return ExampleMetric(lambda t: np.abs(_error(t)))
    if name == "rmse":
        return ExampleMetric(lambda t: _error(t) ** 2, np.sqrt)
    return None


# the per-example tables a run directory may hold (the engine's ``Task.examples_dir``)
EXAMPLE_TABLES: dict[str, ExampleTable] = {
    "rankings": ExampleTable(("user_id", "target_item"), _ranking_metric),
    "predictions": ExampleTable(("row_key", "user_id", "item_id", "rating"), _prediction_metric),
}


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    finish: Callable[[np.ndarray], np.ndarray] = np.asarray,
    *,
    samples: int = SAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of Δ = mean over B's seeds of ``finish(mean of b)`` minus the same
    for A, resampling the test examples (columns) once per draw for every row of both.

    Args:
        a, b: per-example values ``[seeds, examples]`` (or ``[examples]``), same examples.
    """
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    n = a.shape[1]
    if b.shape[1] != n or n < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    chunk = max(1, _CELLS // (n * (len(a) + len(b))))
    stats = []
    for start in range(0, samples, chunk):
        idx = rng.integers(0, n, (min(chunk, samples - start), n))  # the same draw for all
        mean_b = np.asarray(finish(b[:, idx].mean(axis=2))).mean(axis=0)
        mean_a = np.asarray(finish(a[:, idx].mean(axis=2))).mean(axis=0)
        stats.append(mean_b - mean_a)
    d = np.concatenate(stats)
    q = (1 - level) / 2
    return float(np.quantile(d, q)), float(np.quantile(d, 1 - q))


def seed_interval(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    level: float = LEVEL,
) -> tuple[float, float]:
    """Welch's Student-t interval of mean(b) − mean(a) from two independent sets of per-seed
    figures (Welch–Satterthwaite degrees of freedom); (nan, nan) unless both sides have ≥ 2
    finite values. A t interval, not a bootstrap: with 3 seeds a side a percentile bootstrap
    covers about 81 % at nominal 95 %, Welch's interval about 95 % for normal seed noise."""
    from scipy import stats as sps

    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return (float("nan"), float("nan"))
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    d = float(b.mean() - a.mean())
    se = float(np.sqrt(va + vb))
    if se == 0:
        return (d, d)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(sps.t.ppf((1 + level) / 2, df)) * se
    return (d - half, d + half)


def read_tables(run_dir: Path, trial_ids: list[str]) -> tuple[str, list[pd.DataFrame]] | None:
    """The kind (folder) and the per-example tables of these trials, in order; None unless
    the run has a per-example folder holding every one."""
    for kind in EXAMPLE_TABLES:
        folder = Path(run_dir) / kind
        if folder.is_dir():
            paths = [folder / f"{t}.parquet" for t in trial_ids]
            if not trial_ids or not all(p.is_file() for p in paths):
                return None
            return kind, [pd.read_parquet(p) for p in paths]
    return None


def aligned(tables: list[pd.DataFrame], key: tuple[str, ...]) -> list[pd.DataFrame] | None:
    """The tables row-aligned on the same test examples, or None if they hold different ones."""
    if not all(set(key) <= set(t.columns) for t in tables):
        return None
    keys = [t[list(key)].astype(str).reset_index(drop=True) for t in tables]
    if all(k.equals(keys[0]) for k in keys):
        return tables
    if not all(not k.duplicated().any() for k in keys):
        return None  # the same rows in another order cannot be told apart
    tables = [t.sort_values(list(key), key=lambda s: s.astype(str)) for t in tables]
    keys = [t[list(key)].astype(str).reset_index(drop=True) for t in tables]
    return tables if all(k.equals(keys[0]) for k in keys) else None
