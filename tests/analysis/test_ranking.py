"""The ranking section's statistics: per-user NDCG from ranks by hand, and the coverage of the
paired bootstrap interval of retention (student ÷ teacher mean NDCG@10) by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.ranking import per_user_ndcg, retention_interval


def test_per_user_ndcg_by_hand() -> None:
    got = per_user_ndcg(np.array([0, 1, 9, 10, 500]))
    assert got.tolist() == pytest.approx([1.0, 1 / math.log2(3), 1 / math.log2(11), 0.0, 0.0])


def _users(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Planted pairs: the teacher's rank is geometric, the student's is it plus Poisson(3)."""
    teacher = rng.geometric(0.05, n) - 1
    return per_user_ndcg(teacher + rng.poisson(3, n)), per_user_ndcg(teacher)


def test_retention_interval_covers_the_population_ratio() -> None:
    """Seeded simulation: 200 replicate studies of 300 users; the population ratio (from two
    million draws) falls inside the nominal 95 % interval in 90–99 % of them (binomial SE of
    a 95 % rate over 200 replicates ≈ 1.5 points)."""
    rng = np.random.default_rng(7)
    s, t = _users(rng, 2_000_000)
    truth = s.mean() / t.mean()
    hits = 0
    for rep in range(200):
        s, t = _users(rng, 300)
        ratio, lo, hi = retention_interval(s, t, samples=1000, seed=rep)
        assert lo <= ratio <= hi
        hits += lo <= truth <= hi
    assert 0.90 <= hits / 200 <= 0.99, hits


def test_retention_of_a_copy_is_one_and_pairing_narrows_the_interval() -> None:
    rng = np.random.default_rng(1)
    s, t = _users(rng, 400)
    ratio, lo, hi = retention_interval(s, t, seed=0)
    assert ratio == pytest.approx(s.mean() / t.mean())
    # unpaired (the student's users shuffled against the teacher's): a wider interval
    _, ulo, uhi = retention_interval(rng.permutation(s), t, seed=0)
    assert (hi - lo) < (uhi - ulo)
