"""Agreement between importance methods, and the ``consensus`` method.

Statistics over a set of methods' layer scores (higher = more important):

- :func:`kendall_w` — Kendall's coefficient of concordance W ∈ [0, 1] of the methods'
  rankings of the layers (Kendall & Babington Smith 1939), with the tie correction:
  ``W = 12 S / (m²(n³ − n) − m Σ_i T_i)``, ``S = Σ_j (R_j − m(n + 1)/2)²``, R_j the rank sum of
  layer j over m methods, n layers, T_i = Σ (t³ − t) over tie groups of method i.
- :func:`pairwise_correlation` — Kendall's τ-b or Spearman's ρ for every pair of methods.
- :func:`topk_jaccard` — Jaccard overlap |A ∩ B| / |A ∪ B| of two methods' top-k layers.
- :func:`consensus_ranking` — layers ordered by mean rank over methods, with the share of
  methods that put each layer in their top k.
- :func:`consensus_share` — "consensus 75 %": the share of layers on whose top-k membership
  at least 75 % of methods agree, i.e. layers that ≥ 75 % of methods put in their top k or
  ≥ 75 % of methods leave out of it. 1.0 means every layer's keep/drop decision is backed by
  at least three quarters of the methods.

Top-k sets use :meth:`LayerScores.top_k` (ties broken by layer index) throughout.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau, rankdata, spearmanr
from torch import nn

from engine.importance.base import Batch, LayerScores, register_derived, register_importance
from engine.importance.config import ImportanceConfig
from engine.importance.hybrid import weighted_per_batch
from sweepcore.atomic import atomic_path

__all__ = [
    "AGREEMENT_COLUMNS",
    "agreement_methods",
    "agreement_table",
    "consensus_ranking",
    "consensus_share",
    "kendall_w",
    "pairwise_correlation",
    "score",
    "score_matrix",
    "topk_jaccard",
    "write_agreement",
]


def score_matrix(scores: Mapping[str, LayerScores]) -> tuple[list[str], np.ndarray]:
    """Method names and their scores as a ``[methods, layers]`` array."""
    names = list(scores)
    lengths = {len(scores[m].scores) for m in names}
    if len(lengths) != 1:
        raise ValueError(f"methods score different numbers of layers: {sorted(lengths)}")
    return names, np.array([scores[m].scores for m in names], dtype=np.float64)


def kendall_w(matrix: np.ndarray | Sequence[Sequence[float]]) -> float:
    """Kendall's W of a ``[raters, items]`` score matrix (higher score = better), tie-corrected.

    Returns 1.0 for a single rater; nan when every rater ties every item.
    """
    x = np.asarray(matrix, dtype=np.float64)
    m, n = x.shape
    ranks = np.vstack([rankdata(-row, method="average") for row in x])
    rank_sums = ranks.sum(axis=0)
    s = float(((rank_sums - m * (n + 1) / 2.0) ** 2).sum())
    ties = 0.0
    for row in x:
        _, counts = np.unique(row, return_counts=True)
        ties += float((counts**3 - counts).sum())
    denom = m**2 * (n**3 - n) - m * ties
    return float("nan") if denom <= 0 else 12.0 * s / denom


def pairwise_correlation(scores: Mapping[str, LayerScores], kind: str = "kendall") -> pd.DataFrame:
    """Square DataFrame of Kendall τ-b (``kind="kendall"``) or Spearman ρ between methods
    (nan for a pair where one method gives every layer the same score)."""
    names, x = score_matrix(scores)
    fn = {"kendall": kendalltau, "spearman": spearmanr}[kind]
    out = np.eye(len(names))
    for i, j in combinations(range(len(names)), 2):
        with warnings.catch_warnings():  # a constant score vector has no rank correlation: nan
            warnings.simplefilter("ignore")
            out[i, j] = out[j, i] = float(fn(x[i], x[j])[0])
    return pd.DataFrame(out, index=names, columns=names)


def _jaccard(a: Iterable[int], b: Iterable[int]) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def topk_jaccard(scores: Mapping[str, LayerScores], k: int) -> pd.DataFrame:
    """Square DataFrame of the Jaccard overlap of every pair of methods' top-k layers."""
    names = list(scores)
    tops = {m: scores[m].top_k(k) for m in names}
    out = [[_jaccard(tops[a], tops[b]) for b in names] for a in names]
    return pd.DataFrame(out, index=names, columns=names)


def consensus_ranking(scores: Mapping[str, LayerScores], k: int) -> pd.DataFrame:
    """Per layer: ``mean_rank`` over methods (0 = most important), ``consensus_rank`` (layers
    ordered by mean rank, ties by index) and ``share_top_k`` (share of methods with the layer
    in their top k)."""
    names, _ = score_matrix(scores)
    ranks = np.array([scores[m].ranks() for m in names], dtype=np.float64)
    mean_rank = ranks.mean(axis=0)
    order = sorted(range(len(mean_rank)), key=lambda j: (mean_rank[j], j))
    consensus_rank = np.empty(len(order), dtype=int)
    consensus_rank[order] = np.arange(len(order))
    share = (ranks < k).mean(axis=0)
    return pd.DataFrame(
        {
            "layer": np.arange(len(mean_rank)),
            "mean_rank": mean_rank,
            "consensus_rank": consensus_rank,
            "share_top_k": share,
        }
    )


def consensus_share(scores: Mapping[str, LayerScores], k: int, threshold: float = 0.75) -> float:
    """Share of layers whose top-k membership at least ``threshold`` of the methods agree on
    (in or out); see the module docstring ("consensus 75 %")."""
    share = consensus_ranking(scores, k)["share_top_k"].to_numpy()
    agree = (share >= threshold) | (1.0 - share >= threshold)
    return float(agree.mean())


AGREEMENT_COLUMNS = ["statistic", "method_a", "method_b", "k", "layer", "value"]


def agreement_table(
    scores: Mapping[str, LayerScores], ks: Sequence[int] | None = None, threshold: float = 0.75
) -> pd.DataFrame:
    """Long table for ``agreement.parquet``: ``statistic, method_a, method_b, k, layer, value``.

    Rows, by ``statistic``:

    - ``kendall_w``: Kendall's W of all methods;
    - ``kendall_tau``, ``spearman``: one per method pair;
    - ``jaccard_top_k``: one per method pair and k;
    - ``consensus_share``: one per k — "consensus 75 %" at ``threshold`` (module docstring);
    - ``mean_rank``, ``consensus_rank``: one per layer (the consensus ranking, 0 = first);
    - ``share_top_k``: one per layer and k — the share of methods with the layer in their top k.

    ``k`` and ``layer`` are -1 where they do not apply; ``method_a``/``method_b`` are "*" for
    statistics over all methods. ``ks`` defaults to 1 … L−1.
    """
    names, x = score_matrix(scores)
    ks = list(range(1, x.shape[1])) if ks is None else list(ks)
    rows: list[dict[str, object]] = []

    def add(stat: str, value: float, a: str = "*", b: str = "*", k: int = -1, layer: int = -1):
        rows.append(
            {
                "statistic": stat,
                "method_a": a,
                "method_b": b,
                "k": int(k),
                "layer": int(layer),
                "value": float(value),
            }
        )

    add("kendall_w", kendall_w(x))
    for kind, stat in (("kendall", "kendall_tau"), ("spearman", "spearman")):
        corr = pairwise_correlation(scores, kind)
        for a, b in combinations(names, 2):
            add(stat, corr.loc[a, b], a, b)
    for k in ks:
        jac = topk_jaccard(scores, k)
        for a, b in combinations(names, 2):
            add("jaccard_top_k", jac.loc[a, b], a, b, k=k)
        add("consensus_share", consensus_share(scores, k, threshold), k=k)
    base = consensus_ranking(scores, ks[0] if ks else 1)
    for stat in ("mean_rank", "consensus_rank"):
        for layer, value in zip(base["layer"], base[stat], strict=True):
            add(stat, value, layer=layer)
    for k in ks:
        share = consensus_ranking(scores, k)["share_top_k"]
        for layer, value in enumerate(share):
            add("share_top_k", value, k=k, layer=layer)
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def agreement_methods(scores: Mapping[str, LayerScores]) -> dict[str, LayerScores]:
    """The methods agreement is measured over: every computed method except the derived ones
    (hybrid and consensus are functions of the others and would inflate the agreement)."""
    from engine.importance.base import DERIVED

    return {m: s for m, s in scores.items() if m not in DERIVED}


def write_agreement(
    scores: Mapping[str, LayerScores], path: Path, threshold: float = 0.75
) -> Path | None:
    """Write :func:`agreement_table` of the non-derived methods to ``path`` (parquet).

    Returns the path, or None (nothing written) when fewer than two methods were computed.
    """
    base = agreement_methods(scores)
    if len(base) < 2:
        return None
    with atomic_path(path) as tmp:
        agreement_table(base, threshold=threshold).to_parquet(tmp, index=False)
    return path


# --- the consensus method -------------------------------------------------------------------


def components(cfg: ImportanceConfig) -> tuple[str, ...]:
    return tuple(cfg.consensus_methods)


def combine(parts: Mapping[str, LayerScores], cfg: ImportanceConfig) -> LayerScores:
    """Per batch, the mean rank-normalised score over ``cfg.consensus_methods``."""
    weights = dict.fromkeys(cfg.consensus_methods, 1.0)
    return weighted_per_batch("consensus", parts, weights, "rank")


register_derived("consensus", components, combine)


@register_importance("consensus")
def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """Mean rank-normalised score of ``cfg.consensus_methods`` (1 = ranked first by all)."""
    from engine.importance.compute import score_methods

    return score_methods(model, batches, ("consensus",), cfg)["consensus"]
