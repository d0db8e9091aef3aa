"""Full-catalogue ranking (engine/measure/ranking.py): ranks by brute force, metrics by hand and
against scikit-learn's independent NDCG and top-k accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.tasks.ranking import ranking_metrics, target_ranks


def _brute_ranks(scores: np.ndarray, targets: np.ndarray, seen: np.ndarray, pad: int):
    """Sort each user's candidates by score, ties ahead of the target; the target's index."""
    ranks, counts = [], []
    for u in range(len(targets)):
        t = int(targets[u])
        cands = [
            i for i in range(scores.shape[1]) if i != pad and (i == t or i not in set(seen[u]))
        ]
        order = sorted(cands, key=lambda i: (-scores[u, i], i == t))
        ranks.append(order.index(t))
        counts.append(len(cands))
    return ranks, counts


def test_hand_example_padding_seen_and_a_tie() -> None:
    # item 0 is padding (scored highest: must not count); item 1 seen; item 4 ties the target
    scores = torch.tensor([[9.0, 0.95, 0.9, 0.1, 0.9, 0.3]])
    ranks, counts = target_ranks(scores, torch.tensor([2]), torch.tensor([[1, 0]]))
    assert ranks.tolist() == [1] and counts.tolist() == [4]  # candidates 2, 3, 4, 5
    # item 4 seen instead: no tie left, item 1 (0.95) now a candidate ahead of the target
    ranks, counts = target_ranks(scores, torch.tensor([2]), torch.tensor([[4, 0]]))
    assert ranks.tolist() == [1] and counts.tolist() == [4]  # candidates 1, 2, 3, 5
    ranks, _ = target_ranks(scores, torch.tensor([2]), torch.tensor([[4, 1]]))
    assert ranks.tolist() == [0]


def test_the_target_stays_a_candidate_when_it_was_seen_before() -> None:
    scores = torch.tensor([[0.0, 0.2, 0.8, 0.5]])
    ranks, counts = target_ranks(scores, torch.tensor([3]), torch.tensor([[3, 2]]))
    assert ranks.tolist() == [0] and counts.tolist() == [2]  # candidates 1 and 3; 2 was seen
    ranks, counts = target_ranks(scores, torch.tensor([3]))
    assert ranks.tolist() == [1] and counts.tolist() == [3]  # 2 (0.8) is a candidate again


def test_ranks_match_a_brute_force_sort_on_random_scores_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    users, items = 60, 25
    scores = rng.integers(0, 4, size=(users, items)).astype(np.float32)  # ties everywhere
    targets = rng.integers(1, items, size=users)
    seen = rng.integers(0, items, size=(users, 6))  # includes padding 0 and some targets
    ranks, counts = target_ranks(
        torch.as_tensor(scores), torch.as_tensor(targets), torch.as_tensor(seen)
    )
    want_ranks, want_counts = _brute_ranks(scores, targets, seen, pad=0)
    assert ranks.tolist() == want_ranks and counts.tolist() == want_counts


def test_a_constant_scorer_ranks_every_target_last() -> None:
    scores = torch.zeros(5, 10)
    ranks, counts = target_ranks(scores, torch.tensor([1, 2, 3, 4, 9]))
    assert ranks.tolist() == (counts - 1).tolist() == [8] * 5
    assert ranking_metrics(ranks)["hr_at_5"] == 0.0


def test_metrics_by_hand() -> None:
    ranks = [0, 1, 4, 9, 25]
    m = ranking_metrics(ranks, ks=(1, 5, 10))
    assert m["hr_at_1"] == pytest.approx(1 / 5)
    assert m["hr_at_5"] == pytest.approx(3 / 5)
    assert m["hr_at_10"] == pytest.approx(4 / 5)
    assert m["ndcg_at_1"] == pytest.approx(1 / 5)
    assert m["ndcg_at_5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 5)
    assert m["ndcg_at_10"] == pytest.approx(
        (1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 5
    )
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10 + 1 / 26) / 5)
    assert set(ranking_metrics(ranks)) == {
        *(f"{m}_at_{k}" for m in ("hr", "ndcg") for k in (5, 10, 20)),
        "mrr",
    }


def test_ndcg_and_hit_rate_agree_with_scikit_learn_on_tie_free_scores() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    users, items = 40, 30
    scores = rng.permuted(np.tile(np.arange(items, dtype=float), (users, 1)), axis=1)  # no ties
    targets = rng.integers(0, items, size=users)
    ranks, counts = target_ranks(torch.as_tensor(scores), torch.as_tensor(targets), padding_id=None)
    assert counts.tolist() == [items] * users
    onehot = np.eye(items)[targets]
    ours = ranking_metrics(ranks, ks=(5, 10))
    for k in (5, 10):
        assert ours[f"ndcg_at_{k}"] == pytest.approx(sk.ndcg_score(onehot, scores, k=k))
        assert ours[f"hr_at_{k}"] == pytest.approx(
            sk.top_k_accuracy_score(targets, scores, k=k, labels=np.arange(items))
        )


@pytest.mark.parametrize(
    ("scores", "targets", "match"),
    [
        (torch.zeros(2, 4), torch.tensor([1, 4]), "target ids must lie"),
        (torch.zeros(2, 4), torch.tensor([1, 0]), "padding id"),
        (torch.tensor([[0.0, float("nan")]]), torch.tensor([1]), "NaN"),
        (torch.zeros(3), torch.tensor([1]), r"\[users, items\]"),
    ],
)
def test_bad_input_is_a_clear_error(scores, targets, match) -> None:
    with pytest.raises(ValueError, match=match):
        target_ranks(scores, targets)


def test_metrics_reject_empty_and_negative_ranks() -> None:
    with pytest.raises(ValueError, match="no users"):
        ranking_metrics([])
    with pytest.raises(ValueError, match="non-negative"):
        ranking_metrics([0, -1])
