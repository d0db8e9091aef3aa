"""analysis.examples: per-example metrics recomputed from a real run's tables, and the
coverage of the two bootstrap intervals analysis.compare reports (simulations with a planted
difference; an enumerated bootstrap distribution)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.examples import EXAMPLE_TABLES, aligned, paired_bootstrap, read_tables, seed_interval

SMOKE_REC = Path(__file__).resolve().parents[1] / "assets" / "runs" / "smoke-rec"


def test_ranking_metrics_from_the_tables_are_the_runs_figures() -> None:
    """Every ranking metric, from the real run's rankings/ by :data:`EXAMPLE_TABLES` and by
    its definition one user at a time, equals the run's results.parquet figure."""
    results = pd.read_parquet(SMOKE_REC / "results.parquet").set_index("trial_id")
    trials = [t for t in results.index if (SMOKE_REC / "rankings" / f"{t}.parquet").is_file()]
    assert len(trials) == 3
    kind, tables = read_tables(SMOKE_REC, trials)
    assert kind == "rankings"
    for trial, table in zip(trials, tables, strict=True):
        ranks = table["rank"].tolist()
        by_hand = {"mrr": sum(1 / (r + 1) for r in ranks) / len(ranks)}
        for k in (5, 10, 20):
            by_hand[f"hr_at_{k}"] = sum(r < k for r in ranks) / len(ranks)
            by_hand[f"ndcg_at_{k}"] = sum(1 / math.log2(r + 2) for r in ranks if r < k) / len(ranks)
        for metric, value in by_hand.items():
            em = EXAMPLE_TABLES["rankings"].metric(metric)
            got = float(em.finish(np.mean(em.values(table))))
            assert got == pytest.approx(value, abs=1e-12)
            assert results.loc[trial, metric] == pytest.approx(value, abs=1e-9), (trial, metric)
    assert EXAMPLE_TABLES["rankings"].metric("sampled_ndcg_at_10") is None
    assert read_tables(SMOKE_REC, [*trials, "no_such_trial"]) is None


def test_aligned_pairs_rows_by_key_and_refuses_other_examples() -> None:
    key = ("user_id", "target_item")
    a = pd.DataFrame({"user_id": ["1", "2", "3"], "target_item": [7, 8, 9], "rank": [0, 1, 2]})
    b = a.iloc[[2, 0, 1]].assign(rank=[20, 0, 10])
    got_a, got_b = aligned([a, b], key)
    assert got_a["user_id"].tolist() == got_b["user_id"].tolist()
    assert dict(zip(got_b["user_id"], got_b["rank"], strict=True)) == {"1": 0, "2": 10, "3": 20}
    assert aligned([a, a.assign(target_item=[7, 8, 10])], key) is None
    assert aligned([a, a.iloc[:2]], key) is None


def test_seed_interval_is_welchs_t_interval() -> None:
    """Oracle: scipy's Welch t-test (``ttest_ind(equal_var=False)``) and its interval."""
    from scipy import stats as sps

    a, b = np.array([0.51, 0.55, 0.56]), np.array([0.58, 0.6, 0.66, 0.61])
    want = sps.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    lo, hi = seed_interval(a, b)
    assert (lo, hi) == pytest.approx((want.low, want.high), rel=1e-9)
    assert seed_interval([0.5], b) != seed_interval([0.5], b)  # nan: one seed is no interval


@pytest.mark.slow
def test_paired_bootstrap_covers_a_known_mean_difference_95_percent() -> None:
    """400 simulated comparisons of 300 examples with a planted Δ = 0.1 between correlated
    per-example scores (two seeds in B). Nominal 95 %; tolerance [0.92, 0.98] (±2.7 binomial
    standard deviations of a 400-trial proportion). Measured: 93.8 %."""
    rng = np.random.default_rng(11)
    hits = 0
    for sim in range(400):
        x = rng.normal(size=300)  # the example's difficulty, shared by both runs
        a = x + rng.normal(0, 0.5, 300)
        b = np.stack([x + 0.1 + rng.normal(0, 0.5, 300) for _ in range(2)])
        lo, hi = paired_bootstrap(a, b, seed=sim)
        hits += lo <= 0.1 <= hi
    assert 0.92 <= hits / 400 <= 0.98, hits / 400


def test_paired_bootstrap_covers_a_known_rmse_difference_95_percent() -> None:
    """The same for RMSE (√ of a mean): errors e_A ~ N(0, 1), e_B = 0.8 e_A + 0.3 z, so the
    population RMSEs are 1 and √0.73. Tolerance [0.92, 0.98]. Measured: 93.8 %."""
    rng = np.random.default_rng(12)
    truth = math.sqrt(0.73) - 1.0
    hits = 0
    for sim in range(400):
        e_a = rng.normal(size=300)
        e_b = 0.8 * e_a + 0.3 * rng.normal(size=300)
        lo, hi = paired_bootstrap(e_a**2, e_b**2, np.sqrt, seed=sim)
        hits += lo <= truth <= hi
    assert 0.92 <= hits / 400 <= 0.98, hits / 400


@pytest.mark.parametrize(("seeds", "tolerance"), [(3, (0.92, 0.98)), (10, (0.92, 0.98))])
def test_seed_interval_covers_with_three_and_ten_seeds(seeds, tolerance) -> None:
    """Unpaired over seeds, planted Δ = 0.5 with unequal spreads (σ 1 and 0.5), 400
    simulated comparisons: nominal 95 %, tolerance ±2.7 binomial standard deviations.
    Measured: 94.75 % with 3 seeds, 94.0 % with 10."""
    rng = np.random.default_rng(13 + seeds)
    hits = sum(
        lo <= 0.5 <= hi
        for lo, hi in (
            seed_interval(rng.normal(0, 1, seeds), rng.normal(0.5, 0.5, seeds)) for _ in range(400)
        )
    )
    assert tolerance[0] <= hits / 400 <= tolerance[1], hits / 400
