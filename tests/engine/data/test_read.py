"""Reading and preparing a corpus (engine/data/read.py and the preparation it feeds): exact
counts on planted-bad fixtures, dedup, deterministic splits, errors, and the embedded real
corpora end to end (real local Ray, no mocks). Byte-level helpers: test_textio.py; the
corpus registry's contract: test_registry.py.

Fixture contents and their planted rows are listed in tests/assets/data/make_fixtures.py.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.data import (
    DataError,
    PreparedData,
    read_corpus,
)
from engine.data.paths import REPO_ROOT
from tests.engine.data.conftest import ASSETS, SPLITS, all_keys, prep

WOMENS = ASSETS / "womens" / "reviews.csv"
AMAZON = ASSETS / "amazon"


def pair_key(user: str, item: str) -> str:
    """The documented row key of a corpus with users: sha1 of the (user, item) pair."""
    return hashlib.sha1(f"u\x1f{user}\x1f{item}".encode()).hexdigest()


@pytest.fixture(scope="module")
def womens(ray_local) -> PreparedData:
    return prep(path=str(WOMENS), max_bad_fraction=0.5)


@pytest.fixture(scope="module")
def amazon(ray_local) -> PreparedData:
    return prep(corpus="amazon-2018", path=str(AMAZON), max_bad_fraction=0.5)


# --- planted-bad fixtures ----------------------------------------------------------------


@pytest.mark.slow
def test_womens_fixture_exact_counts_and_quarantine(womens: PreparedData) -> None:
    (rec,) = womens.files
    assert rec.path == str(WOMENS.resolve())
    assert rec.sha256 == hashlib.sha256(WOMENS.read_bytes()).hexdigest()
    assert (rec.rows_read, rec.rows_kept, rec.rows_skipped) == (52, 40, 12)
    assert rec.skip_reasons == {
        "duplicate": 2,
        "empty_text": 2,
        "invalid_rating": 1,
        "malformed_csv": 1,
        "missing_field": 2,
        "non_utf8": 1,
        "rating_not_integer": 1,
        "rating_out_of_range": 2,
    }
    # physical lines: record 4 has a newline in its text, so later records start one line on
    assert [(b["line"], b["reason"]) for b in womens.bad_rows] == [
        (47, "rating_out_of_range"),
        (48, "rating_out_of_range"),
        (49, "invalid_rating"),
        (50, "missing_field"),
        (51, "missing_field"),
        (52, "rating_not_integer"),
        (53, "malformed_csv"),
        (54, "non_utf8"),
    ]
    assert all(b["path"] == rec.path and b["raw"] for b in womens.bad_rows)
    s = womens.stats
    assert (s["read"], s["bad"], s["duplicates_removed"], s["repeated_pairs_removed"]) == (
        52,
        8,
        2,
        0,
    )
    assert sum(s["split_sizes"].values()) == 40
    assert womens.num_labels == 5 and womens.label_names[0] == "1 star"
    # independent: the fixture's 40 valid reviews have ratings 1 + i % 5, eight of each
    hist = np.sum([s["label_histogram"][k] for k in SPLITS], axis=0)
    assert hist.tolist() == [8, 8, 8, 8, 8]


def test_tokenised_arrays_have_the_promised_shapes(womens: PreparedData) -> None:
    for split in SPLITS:
        d = getattr(womens, split)
        n = len(d["labels"])
        assert d["input_ids"].shape == (n, 64) and d["input_ids"].dtype == np.int64
        assert d["attention_mask"].shape == (n, 64) and d["attention_mask"].dtype == np.int64
        assert d["labels"].dtype == np.int64 and set(d["labels"]) <= {0, 1, 2, 3, 4}
        assert d["row_key"].shape == (n,)
        assert (d["input_ids"][:, 0] == 101).all()  # [CLS]: real MiniLM tokenizer output
    keys = all_keys(womens)
    assert len(keys) == len(set(keys)) == 40  # splits are disjoint


@pytest.mark.slow
def test_splits_follow_the_hash_rule_and_ignore_block_count(
    womens: PreparedData, ray_local
) -> None:
    for split, (lo, hi) in {
        "train": (0, 8000),
        "valid": (8000, 9000),
        "test": (9000, 10_000),
    }.items():
        hashes = [zlib.crc32(f"0:{k}".encode()) for k in getattr(womens, split)["row_key"]]
        assert all(lo <= h % 10_000 < hi for h in hashes)
        assert hashes == sorted(hashes)  # each split in (hash, row_key) order
    one_block = prep(1, path=str(WOMENS), max_bad_fraction=0.5)  # the fixture used 4 blocks
    for split in SPLITS:
        for name, arr in getattr(womens, split).items():
            np.testing.assert_array_equal(getattr(one_block, split)[name], arr)


@pytest.mark.slow
def test_seed_changes_the_split_and_caps_take_smallest_hashes(
    womens: PreparedData, ray_local
) -> None:
    capped = prep(path=str(WOMENS), max_bad_fraction=0.5, seed=7, train_size=5, test_size=2)
    # independent: the kept rows do not depend on the seed; re-bucket them under seed 7
    h7 = {k: zlib.crc32(f"7:{k}".encode()) for k in all_keys(womens)}
    train7 = sorted((h, k) for k, h in h7.items() if h % 10_000 < 8000)
    valid7 = {k for k, h in h7.items() if 8000 <= h % 10_000 < 9000}
    test7 = sorted((h, k) for k, h in h7.items() if h % 10_000 >= 9000)
    assert capped.train["row_key"].tolist() == [k for _, k in train7[:5]]
    assert set(capped.valid["row_key"]) == valid7 != set(womens.valid["row_key"])
    assert capped.test["row_key"].tolist() == [k for _, k in test7[:2]]
    assert capped.stats["split_sizes_before_caps"]["train"] == len(train7)


@pytest.mark.slow
def test_amazon_fixture_counts_dedup_and_disjoint_pairs(amazon: PreparedData) -> None:
    recs = {Path(r.path).name: r for r in amazon.files}
    toys, games, meta = recs["Toys_5.json.gz"], recs["Games_5.json.gz"], recs["meta_Toys.json.gz"]
    assert (toys.rows_read, toys.rows_kept) == (31, 20)  # the blank line is not a record
    assert toys.skip_reasons == {
        "duplicate": 2,
        "empty_text": 1,
        "invalid_rating": 1,
        "malformed_json": 2,
        "missing_field": 1,
        "non_utf8": 1,
        "rating_out_of_range": 1,
        "repeated_user_item": 2,
    }
    assert (games.rows_read, games.rows_kept, games.skip_reasons) == (
        11,
        10,
        {"repeated_user_item": 1},
    )
    assert (meta.rows_read, meta.rows_kept, meta.skip_reasons) == (5, 4, {"malformed_json": 1})
    assert amazon.stats["duplicates_removed"] == 2
    assert amazon.stats["repeated_pairs_removed"] == 3
    assert [(b["line"], b["reason"]) for b in amazon.bad_rows if "Toys_5" in b["path"]] == [
        (26, "malformed_json"),
        (28, "malformed_json"),
        (29, "non_utf8"),
        (30, "missing_field"),
        (31, "rating_out_of_range"),
        (32, "invalid_rating"),
    ]
    # which copy survives: the earliest review of each pair, wherever it is in the files
    label = {
        k: lab
        for s in SPLITS
        for k, lab in zip(*(getattr(amazon, s)[c] for c in ("row_key", "labels")), strict=True)
    }
    assert label[pair_key("U6", "T1")] == 4  # 5 stars, written later but dated earlier
    assert label[pair_key("U5", "T0")] == 0  # the 1-star original, not the later 2-star
    assert label[pair_key("U7", "T2")] == 2  # Toys' 3 stars beat Games' later 1 star
    pairs = [(f"U{i}", f"T{i % 5}") for i in range(20)] + [
        (f"G{i}", f"M{i % 3}") for i in range(10)
    ]
    by_key = {pair_key(u, i): (u, i) for u, i in pairs}
    seen = [by_key[k] for k in all_keys(amazon)]
    assert sorted(seen) == sorted(pairs)  # every pair once, none in two splits


def test_amazon_item_titles_are_joined(ray_local) -> None:
    got = read_corpus("amazon-2018", str(AMAZON), max_bad_fraction=0.5)
    titles = {r["item_id"]: r["item_title"] for r in got.rows.take_all()}
    assert titles["T1"] == "Toy number 1" and titles["T4"] == ""
    assert got.item_titles == {f"T{i}": f"Toy number {i}" for i in range(4)}


def test_movielens_reads_for_recommendation_but_not_for_text(ray_local) -> None:
    got = read_corpus("movielens", str(ASSETS / "movielens"), max_bad_fraction=0.5)
    assert got.rows.count() == 10
    assert [(b["line"], b["reason"]) for b in got.bad_rows] == [
        (5, "rating_out_of_range"),
        (9, "malformed_line"),
    ]
    assert got.item_titles["5"] == "Café Society (1999)"  # latin-1 decoded
    with pytest.raises(DataError, match="'movielens' has no review text"):
        prep(corpus="movielens", path=str(ASSETS / "movielens"))


# --- errors --------------------------------------------------------------------------------


def test_too_many_bad_rows_is_one_line_naming_the_file(ray_local) -> None:
    with pytest.raises(DataError) as err:
        prep(path=str(WOMENS))  # default max_bad_fraction 1 %; the fixture has 15 %
    msg = str(err.value)
    assert "\n" not in msg and str(WOMENS.resolve()) in msg and "max_bad_fraction" in msg


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: d / "missing.csv", "no such file or directory"),
        (lambda d: (d / "empty.csv").touch() or d / "empty.csv", "file is empty"),
        (lambda d: d / "*.nothing", "no files match"),
        (lambda d: d, "no review files"),
    ],
)
def test_unusable_paths_raise_data_error(ray_local, tmp_path: Path, make, match: str) -> None:
    with pytest.raises(DataError, match=match) as err:
        prep(path=str(make(tmp_path)))
    assert "\n" not in str(err.value)


def test_unknown_corpus_names_the_nearest_match(ray_local) -> None:
    with pytest.raises(DataError, match="did you mean 'amazon-2018'"):
        prep(corpus="amazon2018")


def _toy_lines(n: int) -> bytes:
    return "".join(
        json.dumps(
            {
                "reviewerID": f"U{i}",
                "asin": f"T{i % 9}",
                "overall": 1.0 + i % 5,
                "reviewText": f"a fine toy, number {i}",
                "unixReviewTime": 1_500_000_000 + i,
            }
        )
        + "\n"
        for i in range(n)
    ).encode()


@pytest.mark.slow
def test_truncated_gzip_keeps_the_complete_lines(ray_local, tmp_path: Path) -> None:
    cut = gzip.compress(_toy_lines(400), mtime=0)
    cut = cut[: len(cut) * 2 // 3]
    (tmp_path / "Toys_5.json.gz").write_bytes(cut)
    prefix = zlib.decompressobj(wbits=31).decompress(cut)  # independent: what is readable
    complete = prefix.count(b"\n")
    got = prep(corpus="amazon-2018", path=str(tmp_path), max_bad_fraction=0.05)
    (rec,) = got.files
    assert rec.rows_kept == complete and rec.skip_reasons == {"truncated_gzip": 1}
    (bad,) = got.bad_rows
    assert bad["reason"] == "truncated_gzip"
    assert bad["line"] == (complete + 1 if not prefix.endswith(b"\n") else None)


def test_truncated_gzip_with_nothing_readable_raises(ray_local, tmp_path: Path) -> None:
    f = tmp_path / "Toys_5.json.gz"
    f.write_bytes(gzip.compress(_toy_lines(50), mtime=0)[:30])
    with pytest.raises(DataError, match=r"Toys_5\.json\.gz: no valid rows .*truncated_gzip"):
        prep(corpus="amazon-2018", path=str(f), max_bad_fraction=1.0)


# --- the embedded real data -----------------------------------------------------------------


@pytest.mark.slow
def test_embedded_womens_reviews_end_to_end(ray_local) -> None:
    got = prep(train_size=300, valid_size=50, test_size=50)
    (rec,) = got.files
    assert Path(rec.path) == REPO_ROOT / "datasets/womens-ecommerce-reviews/reviews.csv"
    assert rec.sha256 == "bd93cc515747ad1f87b8bc863c9e40da758509e6db6506a96d06976e61e36ee0"
    assert (rec.rows_read, rec.rows_kept) == (23_486, 22_640)
    assert rec.skip_reasons == {"empty_text": 845, "duplicate": 1}
    assert got.stats["split_sizes"] == {"train": 300, "valid": 50, "test": 50}
    assert got.train["input_ids"].shape == (300, 64)
    assert len(set(all_keys(got))) == 400


@pytest.mark.slow
def test_embedded_all_beauty_has_no_surviving_duplicates(ray_local) -> None:
    path = REPO_ROOT / "datasets/amazon-2018/All_Beauty_5.json.gz"
    got = prep(corpus="amazon-2018", path=str(path))
    # independent computation in pandas: drop empty texts, keep each pair's earliest review
    df = pd.read_json(path, lines=True, compression="gzip")
    df["line"] = np.arange(1, len(df) + 1)
    df = df[df["reviewText"].fillna("").str.strip() != ""]
    df = df.sort_values(["unixReviewTime", "line"]).drop_duplicates(["reviewerID", "asin"])
    rec = next(r for r in got.files if r.path == str(path))
    assert rec.rows_kept == len(df) == sum(got.stats["split_sizes"].values())
    assert rec.rows_read == 5_269
    keys = all_keys(got)
    assert len(keys) == len(set(keys))
    expected = {
        pair_key(u, i): int(r) - 1
        for u, i, r in zip(df.reviewerID, df.asin, df.overall, strict=True)
    }
    got_labels = {
        k: int(lab)
        for s in SPLITS
        for k, lab in zip(getattr(got, s)["row_key"], getattr(got, s)["labels"], strict=True)
    }
    assert got_labels == expected
