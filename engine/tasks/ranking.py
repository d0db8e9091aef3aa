"""Full-catalogue next-item ranking: the target's rank among the candidates, and HR/NDCG/MRR.

Leave-one-out evaluation scores every catalogue item for a user and ranks the held-out target
among the *candidates*: every item except padding and the items already in the user's input
sequence (a recommender is not credited for re-recommending what the user has seen; the target
itself stays a candidate even if it occurred earlier). The ``sampled-N`` protocol
(:func:`sampled_ranks`) ranks the target among N sampled negatives instead; it overstates
quality severalfold (Krichene & Rendle, "On Sampled Metrics for Item Recommendation", KDD
2020), so it is only ever an explicitly labelled variant.

**Tie rule (pessimistic):** a candidate whose score equals the target's is ranked ahead of
it. So a model that scores every item the same ranks the target last, not first — a
constant or collapsed scorer cannot look good through ties.

With one relevant item per user and the target's 0-based rank ``r``:

* ``hr_at_k`` = mean over users of [r < k];
* ``ndcg_at_k`` = mean of 1 / log2(r + 2) when r < k, else 0 (the ideal DCG is 1);
* ``mrr`` = mean of 1 / (r + 1) over the full ranking (not truncated at k).

Each trial can keep the per-user ranks (:func:`target_ranks`' output), from which every metric
here is recomputed without the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["RANKING_KS", "ranking_metrics", "sampled_ranks", "target_ranks"]

RANKING_KS = (5, 10, 20)


def target_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    seen: torch.Tensor | None = None,
    *,
    padding_id: int | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of each user's target among its candidates, and the candidate counts.

    Args:
        scores: ``[U, V]`` a score per catalogue item (higher = recommended first); column
            ``i`` is item id ``i``.
        targets: ``[U]`` the held-out item id per user.
        seen: ``[U, L]`` item ids in each user's input sequence (padded with ``padding_id``);
            they are removed from the candidates, except the target itself.
        padding_id: an id that is never a candidate (None: every id is an item).

    Returns:
        ``(ranks, candidates)``: int64 arrays ``[U]``; ``ranks[u]`` counts the candidates
        scored at least as high as the target (ties ahead of it, see the module docstring).

    Raises:
        ValueError: shapes disagree, a target is outside the catalogue or is the padding id,
            or a score is NaN.
    """
    if scores.dim() != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(
            f"scores must be [users, items] and targets [users], got {tuple(scores.shape)} "
            f"and {tuple(targets.shape)}"
        )
    n_users, n_items = scores.shape
    targets = targets.long()
    if n_users and (int(targets.min()) < 0 or int(targets.max()) >= n_items):
        raise ValueError(
            f"target ids must lie in [0, {n_items}), got {targets.min()}..{targets.max()}"
        )
    if padding_id is not None and bool((targets == padding_id).any()):
        raise ValueError(f"a target is the padding id {padding_id}")
    scores = scores.float()
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN: a rank is undefined")
    candidate = torch.ones(n_users, n_items, dtype=torch.bool, device=scores.device)
    if padding_id is not None:
        candidate[:, padding_id] = False
    if seen is not None:
        if seen.dim() != 2 or seen.shape[0] != n_users:
            raise ValueError(f"seen must be [users, length], got {tuple(seen.shape)}")
        seen = seen.long().to(scores.device)
        ok = (seen >= 0) & (seen < n_items)
        rows = torch.arange(n_users, device=scores.device).unsqueeze(1).expand_as(seen)
        candidate[rows[ok], seen[ok]] = False
    rows = torch.arange(n_users, device=scores.device)
    candidate[rows, targets.to(scores.device)] = True  # the target is always a candidate
    target_score = scores[rows, targets.to(scores.device)].unsqueeze(1)
    ahead = (scores >= target_score) & candidate
    ahead[rows, targets.to(scores.device)] = False  # the target does not outrank itself
    ranks = ahead.sum(dim=1).cpu().numpy().astype(np.int64)
    counts = candidate.sum(dim=1).cpu().numpy().astype(np.int64)
    return ranks, counts


def sampled_ranks(
    scores: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """The ``sampled-N`` protocol: each target's 0-based rank among itself and its user's
    ``N`` negatives (``negatives [U, N]``, distinct item ids that are not the target), with
    the same pessimistic tie rule; the candidate count is ``N + 1``.

    Raises:
        ValueError: shapes disagree, an id is outside the catalogue, a negative is the
            user's target, or a score is NaN.
    """
    if scores.dim() != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(
            f"scores must be [users, items] and targets [users], got {tuple(scores.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if negatives.dim() != 2 or negatives.shape[0] != scores.shape[0]:
        raise ValueError(f"negatives must be [users, N], got {tuple(negatives.shape)}")
    n_items = scores.shape[1]
    targets, negatives = targets.long(), negatives.long()
    for name, ids in (("target", targets), ("negative", negatives)):
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n_items):
            raise ValueError(f"{name} ids must lie in [0, {n_items})")
    if bool((negatives == targets.unsqueeze(1)).any()):
        raise ValueError("a negative is its user's target")
    scores = scores.float()
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN: a rank is undefined")
    target_score = scores.gather(1, targets.unsqueeze(1))
    ranks = (scores.gather(1, negatives) >= target_score).sum(dim=1)
    counts = np.full(len(targets), negatives.shape[1] + 1, np.int64)
    return ranks.cpu().numpy().astype(np.int64), counts


def ranking_metrics(
    ranks: Sequence[int] | np.ndarray, ks: Sequence[int] = RANKING_KS
) -> dict[str, float]:
    """``hr_at_k``, ``ndcg_at_k`` for each k in ``ks``, and ``mrr`` from 0-based target ranks.

    Raises:
        ValueError: no ranks, a negative rank, or k < 1.
    """
    r = np.asarray(ranks, dtype=np.int64).reshape(-1)
    if r.size == 0:
        raise ValueError("no users to score")
    if int(r.min()) < 0:
        raise ValueError(f"ranks are 0-based and non-negative, got {int(r.min())}")
    out: dict[str, float] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        hit = r < k
        out[f"hr_at_{k}"] = float(hit.mean())
        out[f"ndcg_at_{k}"] = float(np.where(hit, 1.0 / np.log2(r + 2.0), 0.0).mean())
    out["mrr"] = float((1.0 / (r + 1.0)).mean())
    return out
