"""Pareto maths (:mod:`sweepcore.pareto`): non-dominated sorting and crowding distance by
hand and against brute-force / textbook oracles, the first front of a table, the 2-D
hypervolume, and the seed-averaged configuration front with explicit key columns."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sweepcore.pareto import (
    config_front,
    crowding_distance,
    hypervolume_2d,
    nondominated_sort,
    objective_front,
    rank_order,
    seed_means,
)

# Minimised pairs. Front 0: A(1,5) B(2,3) C(4,1); front 1: D(3,4) E(5,2); front 2: F(6,6).
PLANTED = np.array([[1, 5], [2, 3], [4, 1], [3, 4], [5, 2], [6, 6]], dtype=float)


def _brute_front(f: np.ndarray) -> set[int]:
    out = set()
    for i in range(len(f)):
        if not any((f[j] <= f[i]).all() and (f[j] < f[i]).any() for j in range(len(f))):
            out.add(i)
    return out


def test_nondominated_sort_by_hand() -> None:
    assert nondominated_sort(PLANTED).tolist() == [0, 0, 0, 1, 1, 2]


def test_nan_points_go_last_and_ties_share_a_front() -> None:
    f = np.array([[1, 1], [1, 1], [np.nan, 0], [2, 2]])
    assert nondominated_sort(f).tolist() == [0, 0, 2, 1]


def test_nondominated_sort_matches_brute_force_on_random_points() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        f = rng.integers(0, 6, size=(15, 3)).astype(float)
        ranks = nondominated_sort(f)
        assert set(np.flatnonzero(ranks == 0)) == _brute_front(f)
        # peeling: front k is the brute-force front of what is left after fronts < k
        left = np.ones(len(f), bool)
        for k in range(ranks.max() + 1):
            idx = np.flatnonzero(left)
            assert {idx[i] for i in _brute_front(f[idx])} == set(np.flatnonzero(ranks == k))
            left[ranks == k] = False


def test_crowding_distance_by_hand() -> None:
    # Front 0 = A(1,5) B(2,3) C(4,1). Objective 1 sorted A,B,C, range 3: B gets (4-1)/3 = 1.
    # Objective 2 sorted C,B,A, range 4: B gets (5-1)/4 = 1. Extremes are infinite.
    d = crowding_distance(PLANTED[:3])
    assert math.isinf(d[0]) and math.isinf(d[2])
    assert d[1] == pytest.approx(2.0)
    # four points on a line x + y = 6: inner points (2,4) and (4,2) differ in spacing
    line = np.array([[0, 6], [2, 4], [5, 1], [6, 0]], dtype=float)
    d = crowding_distance(line)
    assert d[1] == pytest.approx(5 / 6 + 5 / 6) and d[2] == pytest.approx(4 / 6 + 4 / 6)


def test_rank_order_front_then_crowding_then_arrival() -> None:
    # front 0: A, C extremes (inf, by arrival A then C), then B; front 1: D, E both extremes
    assert rank_order(PLANTED).tolist() == [0, 2, 1, 3, 4, 5]


def _dominates(a: list[float], b: list[float]) -> bool:
    """a dominates b (all minimised): no worse on every objective, better on one."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def _brute_fronts(points: list[list[float]]) -> list[int]:
    """Front index of each point by peeling: front k = the points of what is left after
    fronts < k that no other point left dominates."""
    front = [-1] * len(points)
    left = set(range(len(points)))
    k = 0
    while left:
        current = {i for i in left if not any(_dominates(points[j], points[i]) for j in left)}
        for i in current:
            front[i] = k
        left -= current
        k += 1
    return front


def _textbook_crowding(points: list[list[float]]) -> list[float]:
    """NSGA-II crowding distance (Deb et al. 2002), by hand: per objective, order the points
    (equal values by input position); both ends get infinity; an inner point adds
    (next − previous) / (max − min), nothing when the objective has zero range."""
    n = len(points)
    if n <= 2:
        return [math.inf] * n
    dist = [0.0] * n
    for k in range(len(points[0])):
        order = sorted(range(n), key=lambda i: (points[i][k], i))
        lo, hi = points[order[0]][k], points[order[-1]][k]
        dist[order[0]] = dist[order[-1]] = math.inf
        for pos in range(1, n - 1):
            if hi > lo:
                gap = points[order[pos + 1]][k] - points[order[pos - 1]][k]
                dist[order[pos]] += gap / (hi - lo)
    return dist


def test_brute_force_oracles_on_the_planted_set() -> None:
    # the oracles themselves against the hand values above (fronts A B C | D E | F; the
    # middle of A B C has crowding 1 + 1 = 2; the line example 5/6 + 5/6 and 4/6 + 4/6)
    assert _brute_fronts(PLANTED.tolist()) == [0, 0, 0, 1, 1, 2]
    d = _textbook_crowding(PLANTED[:3].tolist())
    assert math.isinf(d[0]) and math.isinf(d[2]) and d[1] == pytest.approx(2.0)
    d = _textbook_crowding([[0, 6], [2, 4], [5, 1], [6, 0]])
    assert d[1:3] == pytest.approx([5 / 3, 4 / 3])
    # a tie on one objective: equal values in input order, zero range adds nothing
    d = _textbook_crowding([[1, 3], [1, 2], [1, 1]])
    assert math.isinf(d[0]) and math.isinf(d[2]) and d[1] == pytest.approx(1.0)


def test_sort_and_crowding_match_the_oracles_on_random_points() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        f = rng.integers(0, 5, size=(12, 2)).astype(float)  # many ties
        assert nondominated_sort(f).tolist() == _brute_fronts(f.tolist())
        for k in set(_brute_fronts(f.tolist())):
            members = [i for i, r in enumerate(_brute_fronts(f.tolist())) if r == k]
            np.testing.assert_allclose(
                crowding_distance(f[members]), _textbook_crowding(f[members].tolist())
            )


def test_objective_front_is_exactly_the_non_dominated_rows() -> None:
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"acc": rng.uniform(size=40).round(2), "gflops": rng.integers(1, 8, 40)})
    df.loc[3, "acc"] = np.nan
    front = objective_front(df, [("acc", "max"), ("gflops", "min")])
    f = np.column_stack([-df.acc.fillna(np.inf * -1).to_numpy(), df.gflops.to_numpy(float)])
    ok = df.acc.notna().to_numpy()
    brute = {int(np.flatnonzero(ok)[i]) for i in _brute_front(f[ok])}
    assert set(front.index) == brute and 3 not in front.index


def test_hypervolume_by_hand() -> None:
    # (quality, cost) with ref (0, 10): (0.5, 2) and (0.8, 6) → 0.5·(6-2) + 0.8·(10-6) = 5.2
    assert hypervolume_2d([(0.5, 2), (0.8, 6)], (0, 10)) == pytest.approx(5.2)
    # a dominated point adds nothing
    assert hypervolume_2d([(0.5, 2), (0.8, 6), (0.4, 7)], (0, 10)) == pytest.approx(5.2)


def test_seed_means_and_config_front_with_explicit_key() -> None:
    # configurations a (2 seeds), b (2 seeds, one NaN accuracy), c (1 seed); by hand:
    # a: acc (0.6 + 0.8) / 2 = 0.7, cost 2; b: acc 0.9 (NaN skipped), cost 3; c: acc 0.5, cost 1
    rows = pd.DataFrame(
        {
            "cfg": ["a", "b", "a", "c", "b"],
            "seed": [0, 0, 1, 0, 1],
            "acc": [0.6, 0.9, 0.8, 0.5, np.nan],
            "cost": [2.0, 3.0, 2.0, 1.0, 3.0],
        }
    )
    means = seed_means(rows, ["acc"], ["cfg"]).set_index("cfg")
    assert list(means.index) == ["a", "b", "c"]  # order of first appearance
    assert means.loc["a", "acc"] == pytest.approx(0.7)
    assert means.loc["b", "acc"] == pytest.approx(0.9)
    assert (means.loc["a", "acc_min"], means.loc["a", "acc_max"]) == (0.6, 0.8)
    assert means["n_seeds"].tolist() == [2, 2, 1]
    assert means.loc["a", "seed"] == 0  # other columns: the first row's value
    # every configuration trades accuracy for cost: all three are on the front
    front = config_front(rows, [("acc", "max"), ("cost", "min")], ["cfg"]).set_index("cfg")
    assert front["on_front"].tolist() == [True, True, True]
    # a fourth configuration worse than a on both: off the front
    worse = pd.concat([rows, pd.DataFrame([{"cfg": "d", "seed": 0, "acc": 0.65, "cost": 2.5}])])
    front = config_front(worse, [("acc", "max"), ("cost", "min")], ["cfg"]).set_index("cfg")
    assert not front.loc["d", "on_front"] and front["on_front"].sum() == 3
    # no key: each row is its own configuration
    assert len(seed_means(rows, ["acc"], [])) == len(rows)
    with pytest.raises(KeyError, match="'nope'"):
        seed_means(rows, ["nope"], ["cfg"])


def test_config_front_keeps_means_equal_up_to_rounding() -> None:
    """Issue 33: mean(.4, .4, .6, .4) and mean(.6, .6, .2, .4) are both 0.45 but come out of
    floating point as 0.44999999999999996 and 0.45000000000000007; at equal cost neither
    dominates the other, so both are on the front. The oracle is exact arithmetic: each
    configuration's mean as a fraction, then dominance by definition."""
    from fractions import Fraction

    rng = np.random.default_rng(0)
    grid = [0.2, 0.4, 0.6, 0.8]
    for trial in range(60):
        seeds = {f"c{i}": rng.choice(grid, 4).tolist() for i in range(5)}
        if trial == 0:  # the case
            seeds = {"a": [0.4, 0.4, 0.6, 0.4], "b": [0.6, 0.6, 0.2, 0.4]}
        cost = {c: float(rng.choice([1.0, 2.0])) if trial else 1.0 for c in seeds}
        rows = pd.DataFrame(
            [(c, acc, cost[c]) for c, accs in seeds.items() for acc in accs],
            columns=["cid", "acc", "gflops"],
        )
        got = config_front(rows, [("acc", "max"), ("gflops", "min")], ["cid"])
        exact = {c: sum(Fraction(str(a)) for a in accs) / len(accs) for c, accs in seeds.items()}
        front = {
            c
            for c in seeds
            if not any(
                exact[o] >= exact[c]
                and cost[o] <= cost[c]
                and (exact[o] > exact[c] or cost[o] < cost[c])
                for o in seeds
            )
        }
        assert set(got.loc[got.on_front, "cid"]) == front, (seeds, cost)
    assert trial == 59


def test_snap_equal_joins_values_within_rounding_and_keeps_the_rest() -> None:
    from sweepcore.pareto import snap_equal

    x = np.array([0.45000000000000007, 0.3, np.nan, 0.44999999999999996, 0.45 + 1e-6])
    out = snap_equal(x)
    assert out[0] == out[3] == 0.44999999999999996  # the run's first (smallest) value
    assert out[1] == 0.3 and np.isnan(out[2]) and out[4] == 0.45 + 1e-6
    assert snap_equal(np.array([0.0, 1e-300])).tolist() == [0.0, 1e-300]  # no absolute slack
