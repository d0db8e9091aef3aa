"""Comparisons of a set of trials against a base configuration, paired by seed.

Config values are matched across the forms a value takes in ``results.parquet`` and in the
manifest's config (numbers, strings, lists joined by commas). For a set of trials and the
base's per-seed metrics, :func:`paired_effect` gives the metrics' means with a 95 % Student-t
interval over seeds, and Δ = metric(trial, seed) − metric(base, seed) averaged over the seeds
both ran, with its interval.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from analysis.stats import n_stopped, t_interval

__all__ = ["base_per_seed", "column_form", "config_value", "matches", "paired_effect", "same_value"]


def column_form(value: Any) -> Any:
    """A config value as ``results.parquet`` holds it (lists joined by commas)."""
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else value


def config_value(config: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` of a nested config, in :func:`column_form`."""
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return column_form(node)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def same_value(a: Any, b: Any) -> bool:
    """Equal config values, across the number/string forms a value takes in parquet and JSON."""
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    if isinstance(a, bool | np.bool_) or isinstance(b, bool | np.bool_):
        return str(a).lower() == str(b).lower()
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(a) == str(b)


def matches(df: pd.DataFrame, values: dict[str, Any], keys: list[str]) -> pd.Series:
    """Rows whose ``keys`` columns all hold ``values[key]``."""
    mask = pd.Series(True, index=df.index)
    for k in keys:
        mask &= df[k].map(lambda v, c=values[k]: same_value(v, c))
    return mask


def _ok(df: pd.DataFrame) -> pd.Series:
    return df["status"].eq("ok") if "status" in df else pd.Series(True, df.index)


def base_per_seed(base: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """The base trials' metrics per seed (ok trials only), to pair others with."""
    return base[_ok(base)].groupby("seed")[metrics].mean().add_suffix("_base")


def paired_effect(trials: pd.DataFrame, base: pd.DataFrame, metrics: list[str]) -> dict[str, Any]:
    """``n`` ok trials, ``n_failed``, ``n_stopped`` (early stops, not failures), ``n_pairs``
    (seeds also in ``base``, from :func:`base_per_seed`), and per metric ``<m>_mean``/``_ci_low``/``_ci_high`` and the paired
    ``d_<m>_mean``/``_ci_low``/``_ci_high``."""
    good = trials[_ok(trials)]
    paired = good.groupby("seed")[metrics].mean().join(base, how="inner")
    stopped = n_stopped(trials)
    out: dict[str, Any] = {
        "n": len(good),
        "n_failed": len(trials) - len(good) - stopped,
        "n_stopped": stopped,
        "n_pairs": len(paired),
    }
    for m in metrics:
        x = good[m].to_numpy(float)
        x = x[np.isfinite(x)]
        out[f"{m}_mean"] = float(x.mean()) if len(x) else float("nan")
        out[f"{m}_ci_low"], out[f"{m}_ci_high"] = t_interval(x)
        d = (paired[m] - paired[f"{m}_base"]).to_numpy(float)
        d = d[np.isfinite(d)]
        # rounded: equal metrics give 0, not the 1e-17 float residue of a - b
        out[f"d_{m}_mean"] = round(float(d.mean()), 12) if len(d) else float("nan")
        out[f"d_{m}_ci_low"], out[f"d_{m}_ci_high"] = t_interval(d)
    return out
