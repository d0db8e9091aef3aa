"""Agreement statistics against hand computations; hybrid and consensus combinations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import engine.importance  # noqa: F401  (registers every method)
from engine.importance import IMPORTANCE
from engine.importance.base import LayerScores, from_per_batch, rank_normalise
from engine.importance.compute import score_methods
from engine.importance.config import ImportanceConfig
from engine.importance.consensus import (
    agreement_table,
    consensus_ranking,
    consensus_share,
    kendall_w,
    pairwise_correlation,
    topk_jaccard,
)
from tests.conftest import (
    average_ranks,
    kendall_tau_b_by_definition,
    kendall_w_by_definition,
    tiny_gpt2,
    toy_batches,
)

# 3 methods × 4 layers, higher = more important. Ranks (1 = best):
#   a: 1 2 3 4    b: 2 1 3 4    c: 1 3 2 4   → rank sums 4 6 8 12
EXAMPLE = {"a": [4.0, 3.0, 2.0, 1.0], "b": [3.0, 4.0, 2.0, 1.0], "c": [4.0, 2.0, 3.0, 1.0]}


def as_scores(table: dict[str, list[float]]) -> dict[str, LayerScores]:
    return {m: LayerScores(method=m, scores=tuple(v), num_examples=1) for m, v in table.items()}


def test_kendall_w_matches_hand_computation_3x4() -> None:
    # S = (4−7.5)² + (6−7.5)² + (8−7.5)² + (12−7.5)² = 35;  W = 12·35 / (3²·(4³−4)) = 7/9
    assert kendall_w(list(EXAMPLE.values())) == pytest.approx(7 / 9, rel=1e-12)
    assert kendall_w_by_definition(list(EXAMPLE.values())) == pytest.approx(7 / 9, rel=1e-12)


def test_kendall_w_tie_correction_by_hand() -> None:
    # a ties its first two layers: ranks 1.5 1.5 3 4, T_a = 2³ − 2 = 6
    # rank sums 4.5 5.5 8 12 → S = 9 + 4 + 0.25 + 20.25 = 33.5; W = 12·33.5 / (540 − 3·6)
    x = [[2.0, 2.0, 1.0, 0.0], EXAMPLE["b"], EXAMPLE["c"]]
    assert kendall_w(x) == pytest.approx(12 * 33.5 / 522, rel=1e-12)
    assert kendall_w([[1, 2, 3], [10, 20, 30]]) == pytest.approx(1.0)
    assert kendall_w([[1, 2], [2, 1]]) == pytest.approx(0.0)
    # m = 2, n = 3: a = (1, 1, 0) ranks 1.5 1.5 3, T_a = 6; b = (2, 1, 0) ranks 1 2 3.
    # R = 2.5 3.5 6, m(n+1)/2 = 4 → S = 2.25 + 0.25 + 4 = 6.5; W = 12·6.5 / (4·24 − 2·6) = 13/14
    assert kendall_w([[1, 1, 0], [2, 1, 0]]) == pytest.approx(13 / 14, rel=1e-12)


def test_kendall_w_exact_on_identical_and_reversed_rankings() -> None:
    same = [[0.3, 0.9, 0.1, 0.5, 0.7]] * 4  # four raters, one ranking → W = 1
    assert kendall_w(same) == pytest.approx(1.0, rel=1e-12)
    # m = 2 exactly reversed: every rank sum is n + 1 = m(n+1)/2 → S = 0 → W = 0
    assert kendall_w([[4, 3, 2, 1], [1, 2, 3, 4]]) == pytest.approx(0.0, abs=1e-12)
    # identical rankings with ties: still 1 (the tie correction makes the maximum reachable)
    assert kendall_w([[2, 2, 1, 0], [5, 5, 3, 1]]) == pytest.approx(1.0, rel=1e-12)


def test_definition_oracles_reproduce_the_hand_values() -> None:
    assert average_ranks([2.0, 2.0, 1.0, 0.0]) == [1.5, 1.5, 3.0, 4.0]
    assert kendall_w_by_definition([[1, 1, 0], [2, 1, 0]]) == pytest.approx(13 / 14)
    assert kendall_w_by_definition([[2.0, 2.0, 1.0, 0.0], EXAMPLE["b"], EXAMPLE["c"]]) == (
        pytest.approx(12 * 33.5 / 522)
    )
    assert kendall_w_by_definition([[4, 3, 2, 1], [1, 2, 3, 4]]) == pytest.approx(0.0)
    assert kendall_tau_b_by_definition(EXAMPLE["a"], EXAMPLE["b"]) == pytest.approx(2 / 3)
    # x ties its first pair: 5 concordant pairs, Σsx² = 5, Σsy² = 6 → τ-b = 5 / √30
    assert kendall_tau_b_by_definition([2, 2, 1, 0], [3, 4, 2, 1]) == pytest.approx(5 / 30**0.5)


def test_kendall_w_and_tau_b_match_the_definitions_on_tied_random_scores() -> None:
    rng = np.random.default_rng(5)
    for _ in range(25):
        m, n = int(rng.integers(2, 6)), int(rng.integers(3, 8))
        x = rng.integers(0, 4, size=(m, n)).astype(float)  # many ties
        x[0, :2] = [0.0, 1.0]  # rater 0 not constant, so W's denominator is positive
        assert kendall_w(x) == pytest.approx(kendall_w_by_definition(x.tolist()), rel=1e-12)
        scores = as_scores({f"m{i}": row.tolist() for i, row in enumerate(x)})
        tau = pairwise_correlation(scores, "kendall")
        for i in range(m):
            for j in range(i + 1, m):
                want = kendall_tau_b_by_definition(x[i].tolist(), x[j].tolist())
                np.testing.assert_allclose(tau.iloc[i, j], want, rtol=1e-12, equal_nan=True)


def test_pairwise_correlations_and_jaccard_by_hand() -> None:
    scores = as_scores(EXAMPLE)
    tau = pairwise_correlation(scores, "kendall")
    rho = pairwise_correlation(scores, "spearman")
    # a vs b: one discordant pair of six → τ = (5 − 1)/6; Σd² = 2 → ρ = 1 − 6·2/(4·15)
    assert tau.loc["a", "b"] == pytest.approx(2 / 3)
    assert rho.loc["a", "b"] == pytest.approx(0.8)
    assert tau.loc["b", "a"] == tau.loc["a", "b"] and tau.loc["c", "c"] == 1.0
    jac = topk_jaccard(scores, 2)  # top-2: a {0,1}, b {0,1}, c {0,2}
    assert jac.loc["a", "b"] == 1.0 and jac.loc["a", "c"] == pytest.approx(1 / 3)


def test_consensus_ranking_and_share_by_hand() -> None:
    scores = as_scores(EXAMPLE)
    table = consensus_ranking(scores, k=2).set_index("layer")
    np.testing.assert_allclose(table["mean_rank"], [1 / 3, 1.0, 5 / 3, 3.0])
    assert table["consensus_rank"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(table["share_top_k"], [1.0, 2 / 3, 1 / 3, 0.0])
    # layers 0 (all in) and 3 (all out) reach 75 % agreement; 1 and 2 (2 of 3) do not
    assert consensus_share(scores, k=2, threshold=0.75) == 0.5
    assert consensus_share(scores, k=2, threshold=2 / 3) == 1.0


def test_agreement_table_rows_and_parquet(tmp_path) -> None:
    table = agreement_table(as_scores(EXAMPLE))
    assert list(table.columns) == ["statistic", "method_a", "method_b", "k", "layer", "value"]
    # 1 W + 3 pairs × (τ, ρ) + k ∈ {1, 2, 3} × (3 Jaccard + 1 consensus share)
    # + 4 layers × (mean rank, consensus rank) + 3 k × 4 layers share in top k
    assert len(table) == 1 + 6 + 3 * 4 + 2 * 4 + 3 * 4
    w = table[table.statistic == "kendall_w"]["value"].item()
    assert w == pytest.approx(7 / 9)
    by = table.set_index(["statistic", "k", "layer"])["value"]
    assert by[("consensus_share", 2, -1)] == 0.5
    np.testing.assert_allclose(by["mean_rank"].to_numpy(), [1 / 3, 1.0, 5 / 3, 3.0])
    assert by["consensus_rank"].tolist() == [0, 1, 2, 3]
    # share of methods with each layer in the top k, hand-counted from the ranks above
    np.testing.assert_allclose(
        [by[("share_top_k", 1, j)] for j in range(4)], [2 / 3, 1 / 3, 0.0, 0.0]
    )
    np.testing.assert_allclose(
        [by[("share_top_k", 2, j)] for j in range(4)], [1.0, 2 / 3, 1 / 3, 0.0]
    )
    path = tmp_path / "agreement.parquet"
    table.to_parquet(path)
    pd.testing.assert_frame_equal(pd.read_parquet(path), table)


def test_hybrid_is_weighted_mean_of_per_batch_normalised_components() -> None:
    model, batches = tiny_gpt2(num_layers=3), toy_batches(2, 4, 10)
    cfg = ImportanceConfig(
        hybrid_weights={"fisher": 1.0, "block_influence": 3.0}, hybrid_normalisation="minmax"
    )
    got = score_methods(model, batches, ("hybrid", "fisher", "block_influence"), cfg)

    def minmax(v):
        v = np.asarray(v)
        return (v - v.min()) / (v.max() - v.min())

    rows = [
        (minmax(f) + 3 * minmax(b)) / 4
        for f, b in zip(got["fisher"].per_batch, got["block_influence"].per_batch, strict=True)
    ]
    np.testing.assert_allclose(got["hybrid"].per_batch, rows, rtol=1e-12)
    np.testing.assert_allclose(got["hybrid"].scores, np.mean(rows, axis=0), rtol=1e-12)
    # the registered function gives the same numbers as the engine
    alone = IMPORTANCE.get("hybrid")(model, batches, cfg=cfg)
    np.testing.assert_allclose(alone.scores, got["hybrid"].scores, rtol=1e-12)


def test_rank_normalise_by_hand() -> None:
    # (average rank − 1) / (n − 1), rank 1 = lowest score: best layer 1, worst 0
    np.testing.assert_allclose(rank_normalise([3.0, 1.0, 2.0]), [1.0, 0.0, 0.5])
    np.testing.assert_allclose(rank_normalise([5.0, 5.0, 1.0]), [0.75, 0.75, 0.0])  # tie
    np.testing.assert_allclose(rank_normalise([7.0]), [1.0])


def test_consensus_method_is_mean_rank_normalised_score() -> None:
    a = from_per_batch("fisher", [[3.0, 1.0, 2.0], [1.0, 2.0, 3.0]], [2, 6])
    b = from_per_batch("gradient", [[1.0, 2.0, 3.0], [1.0, 3.0, 2.0]], [2, 6])
    cfg = ImportanceConfig(consensus_methods=("fisher", "gradient"))
    from engine.importance.base import DERIVED

    got = DERIVED["consensus"].combine({"fisher": a, "gradient": b}, cfg)
    # rank-normalised by hand: (3,1,2) → (1, 0, .5); (1,2,3) → (0, .5, 1); (1,3,2) → (0, 1, .5)
    r0 = (np.array([1.0, 0.0, 0.5]) + np.array([0.0, 0.5, 1.0])) / 2  # batch 0: .5 .25 .75
    r1 = (np.array([0.0, 0.5, 1.0]) + np.array([0.0, 1.0, 0.5])) / 2  # batch 1: 0 .75 .75
    # example-weighted (2 and 6 examples): (2·r0 + 6·r1) / 8 = (1, 5, 6) / 8
    np.testing.assert_allclose(got.scores, [0.125, 0.625, 0.75])
    np.testing.assert_allclose(got.scores, (2 * r0 + 6 * r1) / 8)
    assert got.num_examples == 8


def test_derived_methods_reject_derived_components() -> None:
    with pytest.raises(ValueError, match="derived"):
        ImportanceConfig(consensus_methods=("fisher", "hybrid"))


def test_write_agreement_skips_derived_methods_and_needs_two(tmp_path) -> None:
    from engine.importance.consensus import write_agreement

    scores = as_scores({**EXAMPLE, "hybrid": [0.0, 1.0, 2.0, 3.0]})
    path = write_agreement(scores, tmp_path / "agreement.parquet")
    table = pd.read_parquet(path)
    assert set(table.method_a) | set(table.method_b) == {"*", "a", "b", "c"}
    assert table[table.statistic == "kendall_w"]["value"].item() == pytest.approx(7 / 9)
    one = as_scores({"a": EXAMPLE["a"], "consensus": EXAMPLE["b"]})
    assert write_agreement(one, tmp_path / "none.parquet") is None
    assert not (tmp_path / "none.parquet").exists()


def test_constant_scores_give_nan_correlation_without_warnings() -> None:
    import warnings

    scores = as_scores({"a": EXAMPLE["a"], "flat": [0.0, 0.0, 0.0, 0.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tau = pairwise_correlation(scores, "kendall")
        rho = pairwise_correlation(scores, "spearman")
    assert np.isnan(tau.loc["a", "flat"]) and np.isnan(rho.loc["a", "flat"])
