"""Hybrid importance: a weighted combination of normalised component scores.

``score = Σ_m w_m · norm(s_m) / Σ_m w_m`` with weights ``cfg.hybrid_weights`` (default
fisher, attention and gradient, equally weighted) and ``norm`` by
``cfg.hybrid_normalisation``: ``minmax`` to [0, 1], ``rank`` (rank-normalised, 1 = best) or
``zscore``. Normalisation is applied to each batch's vector, then batches are averaged as for
every method, so actor splits stay exact. Components are computed once, through their shared
passes, even when they are also requested on their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch import nn

from engine.importance.base import (
    Batch,
    LayerScores,
    from_per_batch,
    rank_normalise,
    register_derived,
    register_importance,
)
from engine.importance.config import ImportanceConfig

__all__ = ["combine", "components", "normalise", "score"]


def normalise(v: np.ndarray, how: str) -> np.ndarray:
    """One layer vector normalised by ``how`` (a constant vector maps to zeros, or 1 by rank)."""
    v = np.asarray(v, dtype=np.float64)
    if how == "rank":
        return rank_normalise(v)
    spread = v.max() - v.min() if how == "minmax" else v.std()
    if spread <= 0:
        return np.zeros_like(v)
    return (v - v.min()) / spread if how == "minmax" else (v - v.mean()) / spread


def components(cfg: ImportanceConfig) -> tuple[str, ...]:
    return tuple(cfg.hybrid_weights)


def weighted_per_batch(
    name: str, parts: Mapping[str, LayerScores], weights: Mapping[str, float], how: str
) -> LayerScores:
    """Per batch, the weighted mean of the normalised component vectors (shared with consensus)."""
    first = parts[next(iter(weights))]
    sizes = first.batch_sizes
    for m in weights:
        if parts[m].batch_sizes != sizes or parts[m].per_batch is None:
            raise ValueError(
                f"{name}: components must share calibration batches "
                f"({m} has {parts[m].batch_sizes}, {next(iter(weights))} has {sizes})"
            )
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"{name}: weights must not all be 0 (got {dict(weights)})")
    rows = []
    for j in range(len(sizes or ())):
        row = sum(w * normalise(np.asarray(parts[m].per_batch[j]), how) for m, w in weights.items())
        rows.append(row / total)
    return from_per_batch(name, rows, sizes or ())


def combine(parts: Mapping[str, LayerScores], cfg: ImportanceConfig) -> LayerScores:
    return weighted_per_batch("hybrid", parts, cfg.hybrid_weights, cfg.hybrid_normalisation)


register_derived("hybrid", components, combine)


@register_importance("hybrid")
def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """Weighted normalised combination of ``cfg.hybrid_weights`` methods."""
    from engine.importance.compute import score_methods

    return score_methods(model, batches, ("hybrid",), cfg)["hybrid"]
