"""The text family's splits (:mod:`engine.data.text_sequences`) on the embedded Amazon Gift Cards
(titles from its metadata) with MovieLens-100K as the transfer domain, against an independent
pandas/gzip reading of the files: each user's text is the titles of their latest earlier items,
most recent first; the catalogue vectors are the stock encoder's mean-pooled titles; the
transfer split is the other domain's users with its own catalogue and counts."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer, BertModel

from engine.data.config import DataConfig, RecsysConfig, TransferDataConfig
from engine.data.sequences import catalogue_titles
from engine.data.text_sequences import SEPARATOR, prepare_text_sequences
from engine.data.text_sequences import user_texts as texts_of
from engine.models import resolve_model_path

ROOT = Path(__file__).resolve().parents[3]
GIFT = ROOT / "datasets" / "amazon-2018"
NAME = "text:embedded:all-MiniLM-L6-v2"
N_TEXT = 3
LIMIT = 4000  # MovieLens records read for the transfer domain (file order)


@pytest.fixture(scope="module")
def gift_cards():
    """Per user, asins in time order (ties: asin), a repeated item kept once; asin → title."""
    with gzip.open(GIFT / "Gift_Cards_5.json.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    df = pd.DataFrame(rows)[["reviewerID", "asin", "unixReviewTime"]]
    df = df.sort_values(["reviewerID", "unixReviewTime", "asin"]).drop_duplicates(
        ["reviewerID", "asin"]
    )
    hist = {u: list(g["asin"]) for u, g in df.groupby("reviewerID", sort=True)}
    titles: dict[str, str] = {}
    with gzip.open(GIFT / "meta_Gift_Cards.json.gz", "rt") as f:
        meta = [json.loads(line) for line in f]
    for m in meta:
        t = " ".join(str(m.get("title") or "").split())
        if t and m["asin"] not in titles:
            titles[m["asin"]] = t
    return hist, titles


@pytest.fixture(scope="module")
def prepared(ray_local):
    cfg = DataConfig(
        corpus="amazon-2018",
        path=str(GIFT / "Gift_Cards_5.json.gz"),
        max_length=64,
        recsys=RecsysConfig(text_items=N_TEXT, negatives=20),
        transfer=TransferDataConfig(corpus="movielens", limit=LIMIT),
    )
    return prepare_text_sequences(cfg, NAME)


def test_user_texts_are_the_latest_titles_most_recent_first() -> None:
    titles = ["a", "b", "c", "d"]
    ids = np.array([[0, 0, 3, 1, 2], [4, 4, 1, 0, 0], [0, 0, 0, 0, 0]])
    assert texts_of(ids, titles, 2) == [f"b{SEPARATOR}a", f"a{SEPARATOR}d", ""]
    assert texts_of(ids[:1], titles, 9) == [SEPARATOR.join(["b", "a", "c"])]
    assert catalogue_titles(["x", "y"], {"x": "  Gift  card "}) == (["Gift card", "item y"], 1)


@pytest.mark.slow
def test_each_test_users_text_is_their_earlier_titles(prepared, gift_cards) -> None:
    hist, titles = gift_cards
    tok = AutoTokenizer.from_pretrained(resolve_model_path("embedded:all-MiniLM-L6-v2"))
    test = prepared.test
    assert len(test["labels"]) == sum(len(h) >= 3 for h in hist.values())
    for row, user in enumerate(test["row_key"]):
        h = hist[str(user)]
        assert prepared.label_names[int(test["labels"][row])] == h[-1]  # the latest item
        earlier = [titles.get(a, f"item {a}") for a in reversed(h[:-1][-N_TEXT:])]
        want = tok(SEPARATOR.join(earlier), truncation=True, max_length=64)["input_ids"]
        got = [
            int(t)
            for t, m in zip(test["input_ids"][row], test["attention_mask"][row], strict=True)
            if m
        ]
        assert got == want, user
    n_items = prepared.num_labels - 1
    assert prepared.stats["items_without_title"] == sum(
        a not in titles for a in prepared.label_names[1:]
    )
    for split in ("train", "valid", "test"):
        assert getattr(prepared, split)["item_vectors"].shape == (n_items + 1, 384)


def test_item_vectors_are_the_stock_encoders_mean_pooled_titles(prepared, gift_cards) -> None:
    _, titles = gift_cards
    path = resolve_model_path("embedded:all-MiniLM-L6-v2")
    tok = AutoTokenizer.from_pretrained(path)
    stock = BertModel.from_pretrained(path, add_pooling_layer=False).eval()
    vectors = prepared.train["item_vectors"]
    assert not vectors[0].any()  # padding
    for i in (1, 7, prepared.num_labels - 1):
        title = titles.get(prepared.label_names[i], f"item {prepared.label_names[i]}")
        with torch.no_grad():
            h = stock(**tok(title, truncation=True, max_length=32, return_tensors="pt"))
        want = h.last_hidden_state[0].mean(0).numpy()  # no padding: the plain mean
        np.testing.assert_allclose(vectors[i], want, atol=1e-5)


def test_transfer_split_is_the_other_domain_with_its_own_catalogue(prepared) -> None:
    """Oracle: MovieLens' first LIMIT records in pandas — users with ≥ 3 distinct movies, the
    count of training prefixes (every item after the first of each history without its last
    two; a user with fewer than 3 held-out-able items trains on the whole history) and the
    catalogue size."""
    df = pd.read_csv(
        ROOT / "datasets" / "movielens-100k" / "u.data",
        sep="\t",
        names=["user", "item", "rating", "ts"],
        nrows=LIMIT,
    ).drop_duplicates(["user", "item"])
    sizes = df.groupby("user").size()
    transfer = prepared.transfer
    assert transfer is not None
    assert len(transfer["labels"]) == int((sizes >= 3).sum())
    items = df["item"].nunique()
    assert transfer["item_vectors"].shape == (items + 1, 384)
    assert prepared.stats["transfer"]["items"] == items
    counts = transfer["item_counts"]
    assert counts.shape == (items + 1,) and counts[0] == 0
    assert counts.sum() == int(sum(n - 3 if n >= 3 else n - 1 for n in sizes))
    assert transfer["labels"].min() >= 1 and transfer["labels"].max() <= items
    # the transfer users' texts are movie titles: their vectors differ from the gift cards'
    assert transfer["user_vectors"].shape == (len(transfer["labels"]), 384)
