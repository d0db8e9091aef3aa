"""engine.data.order: whether timestamps can order a next-item split — counted on planted users
against their construction, on the real MovieLens-100K against a pandas reading of ``u.data``,
and refused (one line) where no split can be ordered."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from engine.data import DataError
from engine.data.config import DataConfig
from engine.data.order import order_problem, order_stats, order_warnings
from engine.data.sequences import prepare_sequences

ROOT = Path(__file__).resolve().parents[3]


def _user(history: list[int], stamps: list[int]) -> dict:
    return {"history": history, "timestamps": stamps}


def test_counts_and_warnings_follow_the_planted_users() -> None:
    """Like the AMAZON_FASHION file of issue 32: most users reviewed everything on one day
    and share one history; two users are ordered by time; one is too short to evaluate."""
    same_day = [_user([1, 2, 3], [7, 7, 7]) for _ in range(6)]
    ordered = [_user([3, 1, 2, 4], [1, 2, 3, 4]), _user([2, 4, 1], [5, 6, 6])]
    short = [_user([1, 2], [9, 9])]
    stats = order_stats([*same_day, *ordered, *short])
    assert stats == {
        "users": 9,
        "users_evaluated": 8,  # the short one has no held-out items
        "test_targets_tied": 7,  # 6 same-day + the last user's 6 == 6
        "valid_targets_tied": 6,
        "users_one_timestamp": 7,  # the short user too (2 interactions, one day)
        "users_duplicate_history": 6,
    }
    warnings = order_warnings(stats)
    assert len(warnings) == 4
    assert warnings[0].startswith("test split: 7 of 8 (88%) targets share their timestamp")
    assert warnings[1].startswith("valid split: 6 of 8 (75%)")
    assert "7 of 9 (78%) users have every interaction at one timestamp" in warnings[2]
    assert "6 of 8 (75%) evaluated users have the same history" in warnings[3]
    # a minority of ties is counted, not warned about
    assert order_warnings(order_stats([*ordered, _user([5, 6, 7], [1, 2, 3])])) == []


def test_data_no_split_can_order_is_one_line() -> None:
    flat = [_user([1, 2, 3], [5, 5, 5]), _user([2, 3, 1], [5, 5, 5])]
    assert order_problem(flat, 3, "ratings.csv") == (
        "ratings.csv: all 6 interactions share one timestamp (5), so nothing orders a user's "
        "items (a split would follow item ids); give the corpus its real timestamps"
    )
    one = [_user([1, 1, 1], [1, 2, 3])]
    assert order_problem(one, 1, "x.csv") == (
        "x.csv: the catalogue has 1 item after filtering: nothing to rank"
    )
    assert order_problem([_user([1, 2, 3], [1, 1, 2])], 3, "x") is None


def test_a_corpus_with_one_timestamp_is_refused_before_training(ray_local, tmp_path) -> None:
    rows = [(u, i, 4, 1_600_000_000) for u in ("a", "b", "c") for i in ("p", "q", "r", "s")]
    csv = tmp_path / "ratings.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).to_csv(
        csv, index=False
    )
    cfg = DataConfig(corpus="table", path=str(csv), recsys={"k_core": 1})
    with pytest.raises(DataError, match=r"all 12 interactions share one timestamp"):
        prepare_sequences(cfg)


@pytest.mark.slow
def test_movielens_ties_match_a_pandas_reading(ray_local) -> None:
    """MovieLens-100K has second-granular timestamps, yet users rate in bursts: the counts
    equal an independent reading of ``u.data`` (each user's items by time, ties by item id
    as text — the engine's rule — and the last three timestamps compared)."""
    prepared = prepare_sequences(DataConfig(corpus="movielens", max_length=8))
    df = pd.read_csv(
        ROOT / "datasets" / "movielens-100k" / "u.data",
        sep="\t",
        names=["user", "item", "rating", "ts"],
        dtype={"user": str, "item": str},
    ).sort_values(["user", "ts", "item"])
    stamps = [list(g["ts"]) for _, g in df.groupby("user", sort=True)]
    evaluated = [s for s in stamps if len(s) >= 3]
    got = prepared.stats["order"]
    assert got["users_evaluated"] == len(evaluated) == 943
    assert got["test_targets_tied"] == sum(s[-1] == s[-2] for s in evaluated)
    assert got["valid_targets_tied"] == sum(s[-2] == s[-3] for s in evaluated)
    assert got["users_one_timestamp"] == sum(len(set(s)) == 1 for s in stamps)
    assert got["test_targets_tied"] > 0  # the check can fail: real ties exist here
    assert prepared.stats["warnings"] == []  # a minority: counted, not warned about
