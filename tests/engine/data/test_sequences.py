"""Next-item splits from the embedded MovieLens-100K, checked against an independent pandas
reading of ``u.data``: leave-one-out targets, every training prefix, the seen-item lists, and
that no training example holds a user's valid or test item."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.data import DataError
from engine.data.config import DataConfig
from engine.data.sequences import left_pad, negatives_for, prepare_sequences, sequence_splits

ROOT = Path(__file__).resolve().parents[3]
WIDTH = 8


@pytest.fixture(scope="module")
def movielens():
    """The pandas oracle: per user, item ids (vocabulary by descending count, then id) in
    time order (ties: the item id as text, the engine's rule)."""
    df = pd.read_csv(
        ROOT / "datasets" / "movielens-100k" / "u.data",
        sep="\t",
        names=["user", "item", "rating", "ts"],
        dtype={"user": str, "item": str},
    )
    counts = df["item"].value_counts()
    order = sorted(counts.index, key=lambda i: (-counts[i], i))
    vocab = {item: n + 1 for n, item in enumerate(order)}
    df = df.sort_values(["user", "ts", "item"])
    hist = {u: [vocab[i] for i in g["item"]] for u, g in df.groupby("user", sort=True)}
    return hist, len(vocab)


@pytest.fixture(scope="module")
def prepared(ray_local):
    return prepare_sequences(DataConfig(corpus="movielens", max_length=WIDTH))


def _unpad(row: np.ndarray) -> list[int]:
    return [int(x) for x in row if x]


@pytest.mark.slow
def test_valid_and_test_are_each_users_two_latest_items(prepared, movielens) -> None:
    hist, n_items = movielens
    assert prepared.num_labels == n_items + 1
    for split, cut in (("valid", 2), ("test", 1)):
        s = getattr(prepared, split)
        assert list(s["row_key"]) == sorted(hist)  # every user has ≥ 20 ratings
        for i, user in enumerate(s["row_key"]):
            h = hist[user]
            assert s["labels"][i] == h[-cut]
            assert _unpad(s["input_ids"][i]) == h[:-cut][-WIDTH:]
            assert _unpad(s["seen"][i]) == h[:-cut]  # never truncated
            assert list(s["attention_mask"][i]) == [int(x != 0) for x in s["input_ids"][i]]


def test_training_rows_are_every_prefix_and_hold_no_held_out_item(prepared, movielens) -> None:
    hist, _ = movielens
    train = prepared.train
    expected = {
        f"{u}:{t}": (h[:-2][max(0, t - WIDTH) : t], h[:-2][t])
        for u, h in hist.items()
        for t in range(1, len(h) - 2)
    }
    assert len(train["labels"]) == len(expected)
    for key, ids, label in zip(train["row_key"], train["input_ids"], train["labels"], strict=True):
        inputs, target = expected[key]
        assert _unpad(ids) == inputs and label == target
        user = key.split(":")[0]
        held = set(hist[user][-2:])  # the user's valid and test items
        assert label not in held and not held & set(_unpad(ids))


@pytest.mark.slow
def test_train_size_keeps_a_seeded_subset_of_the_same_rows(prepared, ray_local) -> None:
    a = prepare_sequences(DataConfig(corpus="movielens", max_length=WIDTH, train_size=500))
    b = prepare_sequences(DataConfig(corpus="movielens", max_length=WIDTH, train_size=500))
    assert len(a.train["labels"]) == 500
    np.testing.assert_array_equal(a.train["input_ids"], b.train["input_ids"])
    full = dict(zip(prepared.train["row_key"], prepared.train["labels"], strict=True))
    assert len(set(a.train["row_key"])) == 500
    assert all(full[k] == y for k, y in zip(a.train["row_key"], a.train["labels"], strict=True))


def test_sampled_negatives_are_distinct_unseen_items_fixed_per_user() -> None:
    history = [1, 2, 3, 5, 8]
    got = negatives_for("u1", history, 30, 12, seed=4)
    assert len(set(got)) == 12 and not set(got) & set(history)
    assert all(1 <= g <= 30 for g in got)
    assert negatives_for("u1", history, 30, 12, seed=4) == got
    assert negatives_for("u2", history, 30, 12, seed=4) != got
    with pytest.raises(DataError, match="unseen"):
        negatives_for("u1", history, 10, 6, seed=0)  # only 5 unseen items


def test_sampled_protocol_adds_negatives_to_the_evaluation_splits() -> None:
    cfg = DataConfig(
        corpus="movielens", max_length=8, recsys={"ranking": "sampled", "negatives": 5}
    )
    users = [{"user_id": "a", "history": [1, 2, 3, 4]}, {"user_id": "b", "history": [5, 6]}]
    out = sequence_splits(users, 12, cfg)
    assert list(out["test"]["row_key"]) == ["a"]  # b has too few items to hold any out
    assert list(out["test"]["protocol"]) == ["sampled"]
    neg = out["test"]["negatives"][0]
    assert len(set(neg)) == 5 and not set(neg) & {1, 2, 3, 4}
    # b trains on its whole history: one prefix ([5] → 6); a on [1, 2]: one prefix ([1] → 2)
    assert sorted(out["train"]["row_key"]) == ["a:1", "b:1"]
    # full ranking keeps the side negatives unless a user has fewer unseen items than N
    full = DataConfig(corpus="movielens", max_length=8, recsys={"negatives": 9})
    assert "negatives" in sequence_splits(users, 13, full)["test"]
    assert "negatives" not in sequence_splits(users, 12, full)["test"]  # 12 − 4 seen < 9


def test_left_pad_right_aligns_the_most_recent_items() -> None:
    got = left_pad([[1, 2, 3, 4], [7], []], 3)
    np.testing.assert_array_equal(got, [[2, 3, 4], [0, 0, 7], [0, 0, 0]])


@pytest.mark.slow
def test_title_init_carries_each_items_title_vector(ray_local, movielens) -> None:
    """``data.recsys.item_init: titles``: the train split carries the embedded MiniLM's
    mean-pooled encoding of each item's title from u.item (oracle: pandas + the stock
    encoder), row 0 (padding) zeros; the other splits are unchanged."""
    import torch
    from transformers import AutoTokenizer, BertModel

    from engine.data.config import RecsysConfig
    from engine.models import resolve_model_path

    data = prepare_sequences(
        DataConfig(corpus="movielens", max_length=WIDTH, recsys=RecsysConfig(item_init="titles"))
    )
    _, n_items = movielens
    vectors = data.train["title_vectors"]
    assert vectors.shape == (n_items + 1, 384) and not vectors[0].any()
    assert "title_vectors" not in data.test
    items = pd.read_csv(
        ROOT / "datasets" / "movielens-100k" / "u.item",
        sep="|",
        header=None,
        encoding="latin-1",
        usecols=[0, 1],
        names=["item", "title"],
        dtype={"item": str},
    ).set_index("item")["title"]
    path = resolve_model_path("embedded:all-MiniLM-L6-v2")
    tok = AutoTokenizer.from_pretrained(path)
    stock = BertModel.from_pretrained(path, add_pooling_layer=False).eval()
    for i in (1, 2, n_items):
        title = " ".join(items[data.label_names[i]].split())
        with torch.no_grad():
            h = stock(**tok(title, truncation=True, max_length=32, return_tensors="pt"))
        np.testing.assert_allclose(vectors[i], h.last_hidden_state[0].mean(0).numpy(), atol=1e-5)
