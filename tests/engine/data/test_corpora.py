"""The corpora added for issue 3: Amazon 2014 / 2023, MovieLens 1M and 25M layouts, plain
tables with a column mapping, Hugging Face datasets; ``data.limit``, ``data.sample_fraction``,
cross-domain evaluation and the wrong-delimiter error (real local Ray, no mocks).

Fixture contents and their planted rows are listed in tests/assets/data/make_fixtures.py.
"""

from __future__ import annotations

import csv
import hashlib
import json
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.data import CORPORA, DataConfig, DataError, PreparedData, prepare_data, read_corpus
from engine.data.read import bind_corpus, resolve_files
from engine.data.registry import ROW_SCHEMA
from engine.data.table import read_table
from engine.models import embedded_model_path

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "data"
SPLITS = ("train", "valid", "test")
TOKENIZER = str(embedded_model_path())
TABLE_COLUMNS = {
    "user_id": "reviewer",
    "item_id": "product",
    "rating": "stars",
    "text": "body",
    "title": "headline",
    "timestamp": "when",
}


def prep(num_blocks: int | None = None, **kw: object) -> PreparedData:
    return prepare_data(DataConfig(**kw), TOKENIZER, num_blocks=num_blocks)


def pair_key(user: str, item: str) -> str:
    return hashlib.sha1(f"u\x1f{user}\x1f{item}".encode()).hexdigest()


def keys_of(d: PreparedData, split: str) -> list[str]:
    return getattr(d, split)["row_key"].tolist()


def all_keys(d: PreparedData) -> list[str]:
    return [k for s in SPLITS for k in keys_of(d, s)]


def bucket(key: str, seed: int = 0) -> str:
    b = zlib.crc32(f"{seed}:{key}".encode()) % 10_000
    return "train" if b < 8000 else "valid" if b < 9000 else "test"


def plain_rows(name: str, sub: str, columns: dict[str, str] | None = None) -> tuple[list, dict]:
    """Read a fixture folder with the registered reader, without Ray."""
    corpus = bind_corpus(CORPORA.get(name), DataConfig(corpus=name, columns=columns))
    reviews, items = resolve_files(corpus, str(ASSETS / sub))
    titles: dict[str, str] = {}
    for f in items:
        assert corpus.read_items is not None
        for row in corpus.read_items(str(f), f.read_bytes()):
            if not row["reason"]:
                titles.setdefault(row["item_id"], row["item_title"])
    rows = [r for f in reviews for r in corpus(str(f), f.read_bytes(), titles)]
    return rows, titles


# --- readers in plain Python: exact counts and the normalised schema -----------------------

READER_CASES = {
    # name, folder: (records, {reason: count}, [(line, reason) of invalid rows])
    ("amazon-2023", "amazon2023"): (
        20,
        {"": 15, "rating_out_of_range": 1, "missing_field": 1, "malformed_json": 1}
        | {"invalid_timestamp": 1, "non_utf8": 1},
        [
            (15, "rating_out_of_range"),
            (16, "missing_field"),
            (17, "malformed_json"),
            (19, "invalid_timestamp"),
            (20, "non_utf8"),
        ],
    ),
    ("amazon-2014", "amazon2014"): (
        15,
        {"": 11, "rating_out_of_range": 1, "missing_field": 1, "malformed_json": 1}
        | {"invalid_rating": 1},
        [
            (12, "rating_out_of_range"),
            (13, "missing_field"),
            (14, "malformed_json"),
            (15, "invalid_rating"),
        ],
    ),
    ("movielens", "movielens"): (12, {"": 10, "rating_out_of_range": 1, "malformed_line": 1}, None),
    ("movielens", "movielens1m"): (
        10,
        {"": 8, "rating_out_of_range": 1, "malformed_line": 1},
        [(4, "rating_out_of_range"), (7, "malformed_line")],
    ),
    ("movielens", "movielens25m"): (
        13,
        {"": 10, "rating_out_of_range": 1, "malformed_line": 1, "missing_field": 1},
        [(5, "rating_out_of_range"), (8, "malformed_line"), (14, "missing_field")],
    ),
}


@pytest.mark.parametrize(("name", "sub"), sorted(READER_CASES))
def test_reader_counts_and_schema_on_planted_fixtures(name: str, sub: str) -> None:
    records, reasons, bad_lines = READER_CASES[(name, sub)]
    rows, _ = plain_rows(name, sub)
    table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)  # fails on a schema mismatch
    assert table.num_rows == records
    assert Counter(table["reason"].to_pylist()) == reasons
    if bad_lines is not None:
        assert [(r["source_line"], r["reason"]) for r in rows if r["reason"]] == bad_lines
    valid = [r for r in rows if not r["reason"]]
    assert all(r["user_id"] and r["item_id"] and r["timestamp"] > 0 for r in valid)


def test_amazon_2023_fields_item_is_parent_asin_and_ms_become_seconds() -> None:
    rows, titles = plain_rows("amazon-2023", "amazon2023")
    first = rows[0]
    assert (first["user_id"], first["item_id"], first["rating"]) == ("AU0", "PB0", 1.0)
    assert first["timestamp"] == 1_600_000_000  # 1_600_000_000_000 ms
    assert (first["title"], first["text"]) == ("headline 0", "beauty text 0")
    assert rows[5]["timestamp"] == 1_600_000_000 + 5 * 3600
    assert titles == {f"PB{k}": f"Beauty product {k}" for k in range(5)}
    assert first["item_title"] == "Beauty product 0" and rows[5]["item_title"] == ""  # PB5


def test_amazon_2014_meta_python_literals_and_review_fields() -> None:
    rows, titles = plain_rows("amazon-2014", "amazon2014")
    assert titles == {"A0": "Kid's Toy 0", "A1": "Toy 1", "A2": "Toy 2"}
    r = rows[3]
    assert (r["user_id"], r["item_id"], r["rating"], r["timestamp"]) == (
        "R3",
        "A0",
        4.0,
        1_300_000_000 + 3 * 86_400,
    )
    assert (r["title"], r["text"], r["item_title"]) == ("summary 3", "toy review 3", "Kid's Toy 0")


def test_movielens_csv_layout_half_stars_and_quoted_titles() -> None:
    rows, titles = plain_rows("movielens", "movielens25m")
    assert titles["2"] == "American President, The (1995)"
    assert titles["5"] == "Father of the Bride Part II, The (1995)"
    valid = [r for r in rows if not r["reason"]]
    assert [r["rating"] for r in valid] == [0.5 * k for k in range(1, 11)]
    assert valid[1]["item_title"] == "American President, The (1995)"
    _, titles_1m = plain_rows("movielens", "movielens1m")
    assert titles_1m["12"] == "Amélie (2001)"  # latin-1 movies.dat


def test_table_reader_same_rows_from_csv_jsonl_and_parquet(tmp_path: Path) -> None:
    csv_rows, _ = plain_rows("table", "table", TABLE_COLUMNS)
    assert Counter(r["reason"] for r in csv_rows) == {
        "": 8,
        "rating_out_of_range": 1,
        "malformed_csv": 1,
    }
    valid = [r for r in csv_rows if not r["reason"]]
    assert (valid[0]["user_id"], valid[0]["item_id"], valid[0]["text"]) == (
        "V0",
        "P0",
        "body of review 0",
    )
    # independent copies of the file's records in the two other formats
    with open(ASSETS / "table" / "reviews.csv", newline="") as fh:
        records = [r for r in csv.DictReader(fh) if r.get("when")]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "r.parquet")
    fields = ("user_id", "item_id", "rating", "timestamp", "text", "title")
    want = [tuple(r[f] for f in fields) for r in valid]
    for name in ("r.jsonl", "r.parquet"):
        data = (tmp_path / name).read_bytes()
        got = list(read_table(str(tmp_path / name), data, {}, columns=TABLE_COLUMNS))
        assert [tuple(r[f] for f in fields) for r in got if not r["reason"]] == want
        assert [r["reason"] for r in got if r["reason"]] == ["rating_out_of_range"]


def test_table_reader_without_users_and_with_a_wrong_mapping() -> None:
    data = b"product,stars,body\nP1,4,good\nP2,2,bad\n"
    rows = list(
        read_table(
            "x.csv", data, {}, columns={"item_id": "product", "rating": "stars", "text": "body"}
        )
    )
    assert [(r["user_id"], r["item_id"], r["rating"], r["reason"]) for r in rows] == [
        ("", "P1", 4.0, ""),
        ("", "P2", 2.0, ""),
    ]
    (bad,) = read_table("x.csv", data, {}, columns={"item_id": "sku", "rating": "stars"})
    assert bad["reason"] == "missing_column" and "sku" in bad["raw"]


def test_data_config_rejects_unknown_mapping_targets() -> None:
    with pytest.raises(ValueError, match="unknown normalised column"):
        DataConfig(corpus="table", columns={"stars": "rating"})


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


def test_hf_local_dataset_through_from_huggingface(ray_local, tmp_path: Path) -> None:
    import datasets

    n = 30
    records = {
        "reviewer": [f"H{i % 7}" for i in range(n)],
        "product": [f"I{i}" for i in range(n)],
        "stars": [float(1 + i % 5) for i in range(n)],
        "body": [f"hf review {i}" for i in range(n)],
        "ms": [1_650_000_000_000 + i * 1000 for i in range(n)],
    }
    records["stars"][7] = 9.0  # rating_out_of_range, row 8
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(records), "test": datasets.Dataset.from_dict(records)}
    ).save_to_disk(str(tmp_path / "hfds"))
    mapping = {"user_id": "reviewer", "item_id": "product", "rating": "stars", "text": "body"}
    got = read_corpus(
        "hf",
        str(tmp_path / "hfds"),
        max_bad_fraction=0.1,
        columns=mapping | {"timestamp": "ms"},
        timestamp_unit="ms",
        hf_split="test",
    )
    (rec,) = got.files
    assert (rec.rows_read, rec.rows_kept, rec.skip_reasons) == (30, 29, {"rating_out_of_range": 1})
    assert [(b["line"], b["reason"]) for b in got.bad_rows] == [(8, "rating_out_of_range")]
    rows = sorted(got.rows.take_all(), key=lambda r: int(r["item_id"][1:]))
    assert [r["timestamp"] for r in rows[:2]] == [1_650_000_000, 1_650_000_001]
    assert rows[0]["user_id"] == "H0" and rows[0]["text"] == "hf review 0"
    with pytest.raises(DataError, match="no split 'valid'"):
        read_corpus("hf", str(tmp_path / "hfds"), columns=mapping, hf_split="valid")
    with pytest.raises(DataError, match=r"no column\(s\) \['rating'\]") as err:
        read_corpus("hf", str(tmp_path / "hfds"), columns={"item_id": "product"})
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="cannot load as a Hugging Face dataset") as err:
        read_corpus("hf", str(tmp_path / "missing"), columns=mapping)
    assert "\n" not in str(err.value) and "missing" in str(err.value)


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
