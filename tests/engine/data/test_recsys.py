"""Recommendation views on Ray Data: chronological sequences, leave-one-out targets, item
vocabulary and k-core filtering, checked against independent pandas computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import ray

from engine.data import DataError, read_corpus
from engine.data.config import RecsysConfig
from engine.data.recsys import USER_SCHEMA, _views, build_recsys

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "data"


def pandas_kcore(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Textbook k-core: drop users, then items, with < k interactions until nothing changes."""
    while True:
        users = df.groupby("user_id")["item_id"].transform("size")
        items = df.groupby("item_id")["user_id"].transform("size")
        keep = (users >= k) & (items >= k)
        if keep.all():
            return df
        df = df[keep]


def full_sequences(views: dict[str, np.ndarray], item_ids: list[str]) -> dict[str, list[str]]:
    """Each user's whole chronological sequence, from train + valid/test targets."""
    out = {}
    for i, user in enumerate(views["user_id"]):
        seq = [int(x) for x in views["train"][i] if x]
        if views["test_target"][i]:
            seq += [int(views["valid_target"][i]), int(views["test_target"][i])]
        out[str(user)] = [item_ids[x - 1] for x in seq]
    return out


def test_leave_one_out_targets_are_each_users_latest_items(ray_local) -> None:
    got = read_corpus("movielens", str(ASSETS / "movielens25m"), max_bad_fraction=0.5)
    views = build_recsys(got.rows, RecsysConfig(max_sequence_length=10))
    arr = views.to_numpy(10)
    # independent: the fixture's valid ratings, latest and second latest per user in pandas
    df = pd.read_csv(ASSETS / "movielens25m" / "ratings.csv", on_bad_lines="skip")
    df = df.dropna()
    df = df[(df.rating >= 0.5) & (df.rating <= 5)].astype({"userId": int, "movieId": int})
    df = df.sort_values(["userId", "timestamp"])
    ids = {item: n + 1 for n, item in enumerate(views.item_ids)}
    assert list(arr["user_id"]) == ["1", "2", "3"]
    for i, (user, g) in enumerate(df.groupby("userId")):
        items = [str(m) for m in g.movieId]
        assert arr["test_target"][i] == ids[items[-1]]
        assert arr["valid_target"][i] == ids[items[-2]]
        assert [x for x in arr["train"][i] if x] == [ids[m] for m in items[:-2]]
        assert [x for x in arr["test_input"][i] if x] == [ids[m] for m in items[:-1]]
        assert arr["n_interactions"][i] == len(items) and str(user) == arr["user_id"][i]
    counts = df.movieId.astype(str).value_counts()
    assert dict(zip(views.item_ids, views.item_counts.tolist(), strict=True)) == counts.to_dict()
    # vocabulary order: descending count, then item id
    assert views.item_ids == sorted(counts.index, key=lambda m: (-counts[m], m))
    assert views.stats["users_evaluated"] == 3 and views.stats["interactions"] == 10


def test_k_core_matches_an_independent_pandas_loop(ray_local) -> None:
    rng = np.random.default_rng(0)
    n = 1500
    df = pd.DataFrame(
        {
            "user_id": [f"u{x}" for x in rng.zipf(1.6, n) % 120],
            "item_id": [f"i{x}" for x in rng.zipf(1.5, n) % 80],
            "timestamp": rng.integers(0, 50, n),  # many ties: broken by item id
            "rating": 4.0,
        }
    )
    k = 4
    rows = ray.data.from_pandas(df).repartition(4)
    views = build_recsys(rows, RecsysConfig(k_core=k, max_sequence_length=10_000))
    # independent: earliest interaction per pair, then the textbook k-core
    first = df.sort_values(["timestamp", "item_id"]).drop_duplicates(["user_id", "item_id"])
    core = pandas_kcore(first, k)
    assert len(core) > 0 and core.user_id.nunique() < first.user_id.nunique()
    assert views.stats["interactions"] == len(core)
    assert views.stats["repeated_pairs_removed"] == n - len(first)
    got = full_sequences(views.to_numpy(10_000), views.item_ids)
    want = {
        u: g.sort_values(["timestamp", "item_id"]).item_id.tolist()
        for u, g in core.groupby("user_id")
    }
    assert got == want  # same users, same items, same chronological order
    assert all(len(s) >= k for s in got.values())
    counts = core.item_id.value_counts()
    assert (counts >= k).all()
    assert dict(zip(views.item_ids, views.item_counts.tolist(), strict=True)) == counts.to_dict()


def test_views_truncate_to_the_most_recent_items() -> None:
    users = pa.Table.from_pylist(
        [
            {"user_id": "a", "items": list("pqrstu"), "timestamps": list(range(6)), "repeats": 0},
            {"user_id": "b", "items": ["p", "q"], "timestamps": [0, 1], "repeats": 0},
        ],
        schema=USER_SCHEMA,
    )
    vocab = {c: n + 1 for n, c in enumerate("pqrstu")}
    t = _views(users, vocab, max_len=2, min_interactions=3).to_pylist()
    assert t[0]["train"] == [3, 4] and t[0]["valid_input"] == [3, 4]  # of p q r s
    assert (t[0]["valid_target"], t[0]["test_target"]) == (5, 6)
    assert t[0]["test_input"] == [4, 5]
    # two interactions: too few to hold out, everything trains, nothing is evaluated
    assert t[1]["train"] == [1, 2] and (t[1]["valid_target"], t[1]["test_target"]) == (0, 0)


def test_views_need_user_ids(ray_local) -> None:
    rows = ray.data.from_items(
        [{"user_id": "", "item_id": "x", "timestamp": 0, "rating": 3.0} for _ in range(3)]
    )
    with pytest.raises(DataError, match="need user ids"):
        build_recsys(rows)
