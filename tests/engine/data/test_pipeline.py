"""The preparation pipeline (engine/data/pipeline.py) on the Amazon 2014 / 2023 fixtures:
counts and quarantine, hash splits, ``data.limit``, ``data.sample_fraction``, cross-domain
evaluation, and the errors that name the file (real local Ray, no mocks). The readers
themselves: test_amazon.py, test_movielens.py, test_table.py, test_hf.py, test_registry.py.

Fixture contents and their planted rows are listed in tests/assets/data/make_fixtures.py.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import numpy as np
import pytest

from engine.data import DataError, PreparedData, read_corpus
from tests.engine.data.conftest import ASSETS, SPLITS, TABLE_COLUMNS, all_keys, prep


def pair_key(user: str, item: str) -> str:
    return hashlib.sha1(f"u\x1f{user}\x1f{item}".encode()).hexdigest()


def keys_of(d: PreparedData, split: str) -> list[str]:
    return getattr(d, split)["row_key"].tolist()


def bucket(key: str, seed: int = 0) -> str:
    b = zlib.crc32(f"{seed}:{key}".encode()) % 10_000
    return "train" if b < 8000 else "valid" if b < 9000 else "test"


# --- readers in plain Python: exact counts and the normalised schema -----------------------


# --- through the Ray pipeline -----------------------------------------------------------------


@pytest.fixture(scope="module")
def beauty(ray_local) -> PreparedData:
    return prep(corpus="amazon-2023", path=str(ASSETS / "amazon2023"), max_bad_fraction=0.5)


BEAUTY_PAIRS = [(f"AU{i % 4}", f"PB{i % 6}") for i in range(12)]


def test_amazon_2023_pipeline_counts_quarantine_and_disjoint_pairs(beauty: PreparedData) -> None:
    recs = {Path(r.path).name: r for r in beauty.files}
    rev, meta = recs["Beauty.jsonl.gz"], recs["meta_Beauty.jsonl.gz"]
    assert (rev.rows_read, rev.rows_kept, rev.rows_skipped) == (20, 12, 8)
    assert rev.skip_reasons == {
        "duplicate": 1,
        "empty_text": 1,
        "invalid_timestamp": 1,
        "malformed_json": 1,
        "missing_field": 1,
        "non_utf8": 1,
        "rating_out_of_range": 1,
        "repeated_user_item": 1,
    }
    assert (meta.rows_read, meta.rows_kept, meta.skip_reasons) == (6, 5, {"missing_field": 1})
    assert [
        (b["line"], b["reason"])
        for b in beauty.bad_rows
        if Path(b["path"]).name == "Beauty.jsonl.gz"
    ] == [
        (15, "rating_out_of_range"),
        (16, "missing_field"),
        (17, "malformed_json"),
        (19, "invalid_timestamp"),
        (20, "non_utf8"),
    ]
    keys = all_keys(beauty)
    assert sorted(keys) == sorted(pair_key(u, i) for u, i in BEAUTY_PAIRS)  # each pair once
    for split in SPLITS:
        assert all(bucket(k) == split for k in keys_of(beauty, split))
    assert beauty.stats["item_titles"] == 5


def test_each_split_carries_the_user_and_item_its_row_key_hashes(beauty: PreparedData) -> None:
    """``user_id``/``item_id`` ride through tokenisation beside the other arrays, row for row:
    the row key is the hash of exactly that (user, item) pair."""
    for split in SPLITS:
        arrays = getattr(beauty, split)
        n = len(arrays["labels"])
        assert len(arrays["user_id"]) == len(arrays["item_id"]) == n
        pairs = zip(arrays["user_id"].tolist(), arrays["item_id"].tolist(), strict=True)
        assert [pair_key(u, i) for u, i in pairs] == keys_of(beauty, split)
    carried = {(u, i) for s in SPLITS for u, i in zip(getattr(beauty, s)["user_id"].tolist(),
               getattr(beauty, s)["item_id"].tolist(), strict=True)}  # fmt: skip
    assert carried == set(BEAUTY_PAIRS)


def test_amazon_2023_split_does_not_depend_on_block_count(beauty: PreparedData, ray_local) -> None:
    one = prep(1, corpus="amazon-2023", path=str(ASSETS / "amazon2023"), max_bad_fraction=0.5)
    for split in SPLITS:
        for name, arr in getattr(beauty, split).items():
            np.testing.assert_array_equal(getattr(one, split)[name], arr)


def test_amazon_2014_pipeline_counts(ray_local) -> None:
    got = prep(corpus="amazon-2014", path=str(ASSETS / "amazon2014"), max_bad_fraction=0.5)
    recs = {Path(r.path).name: r for r in got.files}
    rev = recs["reviews_Toys_5.json.gz"]
    assert (rev.rows_read, rev.rows_kept) == (15, 10)
    assert rev.skip_reasons == {
        "duplicate": 1,
        "invalid_rating": 1,
        "malformed_json": 1,
        "missing_field": 1,
        "rating_out_of_range": 1,
    }
    assert recs["meta_Toys.json.gz"].skip_reasons == {"malformed_json": 1}
    assert sorted(all_keys(got)) == sorted(pair_key(f"R{i}", f"A{i % 3}") for i in range(10))


def test_limit_reads_the_first_records_in_file_order_before_dedup(ray_local) -> None:
    # files sorted by path: Games_5 (11 records) then Toys_5; limit 15 = Games + 4 Toys
    got = prep(corpus="amazon-2018", path=str(ASSETS / "amazon"), max_bad_fraction=0.5, limit=15)
    recs = {Path(r.path).name: r for r in got.files}
    assert recs["Games_5.json.gz"].rows_read == 11 and recs["Toys_5.json.gz"].rows_read == 4
    assert got.stats["read"] == 15 and got.stats["limit_reached"] is True
    # Games' (U7, T2) review repeats a Toys pair past the limit, so here it is kept
    want = [(f"G{i}", f"M{i % 3}") for i in range(10)] + [("U7", "T2")]
    want += [(f"U{i}", f"T{i % 5}") for i in range(4)]
    assert sorted(all_keys(got)) == sorted(pair_key(u, i) for u, i in want)


def test_sample_fraction_keeps_hash_chosen_pairs(ray_local) -> None:
    got = prep(
        corpus="amazon-2023",
        path=str(ASSETS / "amazon2023"),
        max_bad_fraction=0.5,
        sample_fraction=0.5,
        seed=3,
    )
    chosen = {
        pair_key(u, i)
        for u, i in BEAUTY_PAIRS
        if zlib.crc32(f"sample:3:{pair_key(u, i)}".encode()) < 0.5 * 2**32
    }
    assert 0 < len(chosen) < 12
    assert sorted(all_keys(got)) == sorted(chosen)
    # the duplicate and the repeat of (AU0, PB0) follow their pair's decision
    dropped_rows = 12 - len(chosen) + (2 if pair_key("AU0", "PB0") not in chosen else 0)
    assert got.stats["sampled_out"] == dropped_rows


@pytest.mark.slow
def test_cross_domain_test_split_comes_from_the_eval_corpus(
    beauty: PreparedData, ray_local
) -> None:
    got = prep(
        corpus="amazon-2023",
        path=str(ASSETS / "amazon2023"),
        max_bad_fraction=0.5,
        eval={"corpus": "amazon-2014", "path": str(ASSETS / "amazon2014")},
    )
    assert sorted(keys_of(got, "test")) == sorted(pair_key(f"R{i}", f"A{i % 3}") for i in range(10))
    for split in ("train", "valid"):
        assert keys_of(got, split) == keys_of(beauty, split)
    cross = got.stats["cross_domain"]
    assert cross["test_corpus"] == "amazon-2014" and cross["train_corpus"] == "amazon-2023"
    assert cross["in_domain_test_rows_unused"] == len(keys_of(beauty, "test"))
    assert cross["eval_pairs_dropped_as_in_train_corpus"] == 0
    names = {Path(r.path).name for r in got.files}
    assert {"Beauty.jsonl.gz", "reviews_Toys_5.json.gz", "meta_Toys.json.gz"} <= names
    assert any("reviews_Toys_5" in b["path"] for b in got.bad_rows)


# --- bad input: errors that name the file ----------------------------------------------------


def test_wrong_delimiter_csv_is_one_line_error_naming_the_file(ray_local, tmp_path: Path) -> None:
    ml = tmp_path / "ml"
    ml.mkdir()
    (ml / "ratings.csv").write_text("userId;movieId;rating;timestamp\n1;2;4.0;100\n2;3;5.0;101\n")
    with pytest.raises(DataError, match=r"ratings\.csv: no valid rows .*wrong_delimiter=3") as err:
        read_corpus("movielens", str(ml))
    assert "\n" not in str(err.value)
    (tmp_path / "t.csv").write_text("reviewer;product;stars;body\nV1;P1;4;fine\n")
    with pytest.raises(DataError, match=r"t\.csv: no valid rows .*wrong_delimiter=1") as err:
        prep(corpus="table", path=str(tmp_path / "t.csv"), columns=TABLE_COLUMNS)
    assert "\n" not in str(err.value)


def test_columns_for_a_corpus_that_does_not_take_them_is_an_error(ray_local) -> None:
    with pytest.raises(DataError, match="apply only to corpora"):
        prep(corpus="amazon-2018", columns={"rating": "stars"})
