"""Hostile corpus files (issue 17), fuzzed with hypothesis through every registered reader.

The reader contract (:mod:`engine.data.registry`): a reader never raises for bad input, and
every record becomes one row — valid, or quarantined with its ``reason``. Checked here on
each reader function directly, as the Ray task calls it (one file's bytes in, rows out,
then ``pa.Table.from_pylist(rows, schema=ROW_SCHEMA)``, which is where a value no column can
hold — a lone surrogate, an int beyond int64 — used to fail the whole file). A few files go
through the real Ray path (:func:`engine.data.read.read_corpus`): rows and counted skips,
or one :class:`DataError` line naming the file.

Inputs: random bytes; records with random JSON values (or random strings) in every field;
the same re-encoded (latin-1, UTF-16), gzipped, and cut short at a random byte; lines of
several MB. Examples per reader target (``derandomize=True`` so CI runs the same cases every
time and a red run reproduces; ``FUZZ_EXAMPLES`` scales them for a long local hunt): random
bytes and random records ``EXAMPLES`` each (default 60) for each of the 16 reader × layout
targets, so 2 × 16 × 60 = 1,920 files per run; and ``EXAMPLES`` Hugging Face batches of random
Arrow column types through the per-batch parse (``engine.data.hf._normalise``).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.data import DataError
from engine.data.amazon import (
    read_amazon2014_items,
    read_amazon2023_items,
    read_amazon2023_reviews,
    read_amazon_items,
    read_amazon_reviews,
)
from engine.data.movielens import read_movielens_items, read_movielens_ratings
from engine.data.registry import RAW_CHARS, ROW_SCHEMA
from engine.data.table import read_table
from engine.data.womens import read_womens_reviews

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW_S = 20.0  # one small file; a hang would be far beyond it

Reader = Callable[[str, bytes], Iterator[dict]]


def _reviews(fn: Callable[..., Iterator[dict]]) -> Reader:
    return lambda path, data: fn(path, data, {})


# (file name the reader sees, reader, the record's fields, how a record is written)
JSONL, CSV, TSV, DAT, PIPE, TAB = "jsonl", ",", "\t", "::", "|", "\t "
TARGETS: dict[str, tuple[str, Reader, tuple[str, ...], str]] = {
    "womens": (
        "reviews.csv",
        _reviews(read_womens_reviews),
        ("Clothing ID", "Title", "Review Text", "Rating"),
        CSV,
    ),
    "amazon-2018": (
        "Beauty_5.json.gz",
        _reviews(read_amazon_reviews),
        ("reviewerID", "asin", "overall", "reviewText", "summary", "unixReviewTime"),
        JSONL,
    ),
    "amazon-2023": (
        "All_Beauty.jsonl.gz",
        _reviews(read_amazon2023_reviews),
        ("user_id", "parent_asin", "asin", "rating", "text", "title", "timestamp"),
        JSONL,
    ),
    "amazon-2018-meta": ("meta_Beauty.json.gz", read_amazon_items, ("asin", "title"), JSONL),
    "amazon-2014-meta": ("meta_Beauty.json.gz", read_amazon2014_items, ("asin", "title"), JSONL),
    "amazon-2023-meta": (
        "meta_All_Beauty.jsonl.gz",
        read_amazon2023_items,
        ("parent_asin", "title"),
        JSONL,
    ),
    "movielens-u.data": ("u.data", _reviews(read_movielens_ratings), ("u", "i", "r", "t"), TAB),
    "movielens-ratings.dat": (
        "ratings.dat",
        _reviews(read_movielens_ratings),
        ("u", "i", "r", "t"),
        DAT,
    ),
    "movielens-ratings.csv": (
        "ratings.csv",
        _reviews(read_movielens_ratings),
        ("userId", "movieId", "rating", "timestamp"),
        CSV,
    ),
    "movielens-u.item": ("u.item", read_movielens_items, ("i", "title", "date"), PIPE),
    "movielens-movies.dat": ("movies.dat", read_movielens_items, ("i", "title", "g"), DAT),
    "movielens-movies.csv": (
        "movies.csv",
        read_movielens_items,
        ("movieId", "title", "genres"),
        CSV,
    ),
    "table-csv": (
        "t.csv",
        _reviews(read_table),
        ("user_id", "item_id", "rating", "timestamp", "text"),
        CSV,
    ),
    "table-tsv": (
        "t.tsv",
        _reviews(read_table),
        ("user_id", "item_id", "rating", "timestamp", "text"),
        TSV,
    ),
    "table-jsonl": (
        "t.jsonl",
        _reviews(read_table),
        ("user_id", "item_id", "rating", "timestamp", "text"),
        JSONL,
    ),
    "table-parquet": (
        "t.parquet",
        _reviews(read_table),
        ("user_id", "item_id", "rating", "timestamp", "text"),
        "parquet",
    ),
}
HEADERS = {"womens", "movielens-ratings.csv", "movielens-movies.csv", "table-csv", "table-tsv"}


def read_all(name: str, data: bytes, path: str | None = None) -> list[dict]:
    """Run target ``name`` on ``data`` and check the reader contract on every row."""
    fname, reader, _, _ = TARGETS[name]
    t0 = time.perf_counter()
    rows = list(reader(path or fname, data))
    table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)  # what the Ray task builds
    assert time.perf_counter() - t0 < SLOW_S, "reading took too long"
    assert table.num_rows == len(rows)
    for r in rows:
        assert isinstance(r["reason"], str)
        if r["reason"]:  # quarantined: a short raw excerpt, no values
            assert len(r["raw"]) <= RAW_CHARS
            continue
        assert r["item_id"]  # a valid row has an item; a review a rating in range
        if not math.isnan(r["rating"]):
            assert 0.5 <= r["rating"] <= 5.0
        assert 0 <= r["timestamp"] < 2**63
    return rows


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(),
        st.text(max_size=15),
        st.sampled_from(["5", "4.5", "1e400", "-1", "\udcff", "nan", "Infinity", ""]),
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
field_text = st.one_of(
    st.text(max_size=15),
    st.sampled_from(
        ["5", "3.5", "1e400", "99999999999999999999999", "-3", "", '"', "a\nb", ",", "\t"]
    ),
)


def _encode(name: str, records: list[dict[str, Any]], header: bool) -> bytes:
    """``records`` written in target ``name``'s layout (JSON values as they come; text
    layouts get ``str`` of each value)."""
    _, _, fields, layout = TARGETS[name]
    if layout == JSONL:
        return "".join(json.dumps(r, allow_nan=True) + "\n" for r in records).encode(
            "utf-8", "surrogatepass"
        )
    if layout == "parquet":
        cols = {f: [None if r.get(f) is None else str(r.get(f)) for r in records] for f in fields}
        buf = io.BytesIO()
        safe = {
            f: [v.encode("utf-8", "replace").decode() if v else v for v in c]
            for f, c in cols.items()
        }
        pq.write_table(pa.table(safe), buf)
        return buf.getvalue()
    sep = layout.strip(" ") or layout
    lines = [sep.join(fields)] if header else []
    lines += [sep.join(str(r.get(f, "")) for f in fields) for r in records]
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")


def _damage(data: bytes, how: str, cut: float) -> bytes:
    if how == "gzip":
        return gzip.compress(data)
    if how == "gzip-cut":
        z = gzip.compress(data)
        return z[: max(2, int(len(z) * cut))]
    if how == "latin-1":
        return data.decode("utf-8", "surrogateescape").encode("latin-1", "replace")
    if how == "utf-16":
        return data.decode("utf-8", "surrogateescape").encode("utf-16", "surrogatepass")
    if how == "cut":
        return data[: int(len(data) * cut)]
    return data


@pytest.mark.parametrize("name", sorted(TARGETS))
@FUZZ
@given(data=st.binary(max_size=400))
@example(data=b"\x1f\x8b\x08\x00")  # a gzip header and nothing else
@example(data=b"[" * 5000 + b"\n")  # was RecursionError in the JSON readers
def test_random_bytes(name: str, data: bytes) -> None:
    read_all(name, data)


@pytest.mark.parametrize("name", sorted(TARGETS))
@FUZZ
@given(
    records=st.lists(st.dictionaries(st.text(max_size=6), json_values, max_size=3), max_size=4),
    values=st.lists(json_values, min_size=7, max_size=7),
    header=st.booleans(),
    how=st.sampled_from(["plain", "plain", "gzip", "gzip-cut", "latin-1", "utf-16", "cut"]),
    cut=st.floats(0.05, 0.95),
)
def test_random_records(
    name: str,
    records: list[dict[str, Any]],
    values: list[Any],
    header: bool,
    how: str,
    cut: float,
) -> None:
    """Records with the target's own field names holding random values (and stray keys)."""
    fields = TARGETS[name][2]
    planted = [{**r, **dict(zip(fields, values, strict=False))} for r in records]
    data = _damage(_encode(name, planted, header or name in HEADERS), how, cut)
    rows = read_all(name, data)
    if TARGETS[name][3] == JSONL and how == "plain":  # one row per record, exactly
        assert len(rows) == len(planted)


# Values that used to escape a reader as an exception (a traceback in the Ray task, the
# whole file lost): one plain test each, through the reader that met it.
REGRESSIONS = [
    ("amazon-2018", {"reviewerID": "u", "asin": "a", "overall": 5, "unixReviewTime": 10**30}),
    ("amazon-2018", {"reviewerID": "u", "asin": "a", "overall": 10**400}),
    ("amazon-2018", {"reviewerID": "u", "asin": "a", "overall": 5, "unixReviewTime": 1e400}),
    ("amazon-2023", {"user_id": "u", "parent_asin": "a", "rating": 5, "timestamp": "1e400"}),
    ("amazon-2023", {"user_id": "u", "parent_asin": "a", "rating": 5, "text": "\udcff"}),
    ("amazon-2023-meta", {"parent_asin": "\udcff", "title": "t"}),
    ("table-jsonl", {"item_id": "a", "rating": 5, "timestamp": 2**64}),
]


@pytest.mark.parametrize(
    ("name", "record"), REGRESSIONS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(REGRESSIONS)]
)
def test_hostile_value_is_one_quarantined_row(name: str, record: dict[str, Any]) -> None:
    good = {f: v for f, v in record.items()}
    for f in good:
        if f in ("overall", "rating"):
            good[f] = 4
        elif f in ("unixReviewTime", "timestamp"):
            good[f] = 1_600_000_000_000
        else:
            good[f] = "ok"
    data = _encode(name, [good, record, good], header=False)
    rows = read_all(name, data)
    assert [r["reason"] == "" for r in rows] == [True, False, True]
    assert rows[1]["source_line"] == 2
    assert rows[1]["reason"] in {"invalid_rating", "invalid_timestamp", "non_utf8"}


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        # a lone surrogate (bad byte) in a record whose field count is wrong: was a
        # UnicodeEncodeError when Arrow stored the quarantined raw text
        ("womens", b"Clothing ID,Rating\n1,5\n2,4,\xff\n3,3\n", "malformed_csv"),
        ("table-csv", b"item_id;rating\n1;5\xff\n", "wrong_delimiter"),
        # a field over csv's 128 KiB limit: was csv.Error out of movies.csv; now read
        ("movielens-movies.csv", b"movieId,title\n1," + b"a" * 200_000 + b"\n", ""),
        ("movielens-u.data", b"1\t2\t3\t99999999999999999999999\n", "invalid_timestamp"),
        ("movielens-ratings.dat", b"1::2::3::1e400\n", "invalid_timestamp"),
        ("amazon-2014-meta", b"{[1]: 2}\n", "malformed_json"),  # was TypeError (literal_eval)
        ("table-jsonl", b'{"a":' * 3000 + b"\n", "malformed_json"),
    ],
    ids=[
        "womens-surrogate",
        "table-csv-surrogate",
        "movies-csv-field-limit",
        "u.data-ts",
        "ratings.dat-ts",
        "2014-meta-unhashable",
        "jsonl-deep",
    ],
)
def test_hostile_file_is_counted_not_raised(name: str, data: bytes, reason: str) -> None:
    rows = read_all(name, data)
    assert reason in [r["reason"] for r in rows]


@pytest.mark.parametrize("name", ["womens", "amazon-2023", "movielens-u.data", "table-jsonl"])
def test_huge_lines_are_read_in_linear_time(name: str) -> None:
    """A 4 MB line among good ones: one row for it, the others intact, in seconds."""
    fields = TARGETS[name][2]
    good = {
        f: (
            "4"
            if f in ("Rating", "rating", "r")
            else "1600000000"
            if f in ("timestamp", "t")
            else "x"
        )
        for f in fields
    }
    huge = {**good, fields[-1]: "y" * 4_000_000}
    data = _encode(name, [good, huge, good], header=name in HEADERS)
    t0 = time.perf_counter()
    rows = read_all(name, data)
    assert time.perf_counter() - t0 < SLOW_S
    assert len(rows) == 3


# ---------------------------------------------------------------- through the real Ray path


def test_hostile_files_through_read_corpus(ray_local, tmp_path: Path) -> None:
    """The fixed cases through Ray Data: rows and counted skips, or one DataError line."""
    from engine.data.read import read_corpus

    # MovieLens u.data: 3 good ratings, one with a timestamp beyond int64 (was a RayTaskError)
    ml = tmp_path / "ml"
    ml.mkdir()
    (ml / "u.data").write_bytes(
        b"1\t10\t4\t100\n2\t10\t5\t200\n3\t11\t3\t300\n4\t11\t3\t" + b"9" * 25 + b"\n"
    )
    got = read_corpus("movielens", str(ml), max_bad_fraction=0.5)
    (rec,) = got.files
    assert (rec.rows_read, rec.rows_kept, rec.skip_reasons) == (4, 3, {"invalid_timestamp": 1})
    assert [b["line"] for b in got.bad_rows] == [4]

    # Amazon 2023, gzipped and cut short, with a JSON "\udcff" escape in one text
    az = tmp_path / "az"
    az.mkdir()
    recs = [
        {"user_id": f"u{i}", "parent_asin": f"p{i}", "rating": 4, "text": "fine"} for i in range(40)
    ]
    recs[5]["text"] = "\udcff"
    body = "".join(json.dumps(r) + "\n" for r in recs).encode()
    z = gzip.compress(body)
    (az / "All_Beauty.jsonl.gz").write_bytes(z[: len(z) - 8])  # the trailer is gone
    got = read_corpus("amazon-2023", str(az), max_bad_fraction=0.5)
    (rec,) = got.files
    assert rec.rows_kept == 39
    assert rec.skip_reasons == {"non_utf8": 1, "truncated_gzip": 1}
    assert [(b["line"], b["reason"]) for b in got.bad_rows] == [
        (6, "non_utf8"),
        (None, "truncated_gzip"),
    ]

    # women's reviews in UTF-16: every record unusable, one line naming the file
    wm = tmp_path / "wm"
    wm.mkdir()
    (wm / "reviews.csv").write_bytes("Clothing ID,Rating,Review Text\n1,5,ok\n".encode("utf-16"))
    with pytest.raises(DataError) as err:
        read_corpus("womens-ecommerce", str(wm / "reviews.csv"))
    assert "reviews.csv" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------- Hugging Face: the per-batch parse


arrow_columns = st.sampled_from(
    [
        pa.int64(),
        pa.float64(),
        pa.string(),
        pa.bool_(),
        pa.list_(pa.int64()),
        pa.struct([("a", pa.string())]),
        pa.timestamp("s"),
        pa.null(),
    ]
)


@st.composite
def hf_batches(draw: st.DrawFn) -> pa.Table:
    """A batch as ``open_hf`` hands it over: the mapped columns, each of a random Arrow type
    with random values (nulls included), and the row number."""
    from engine.data.hf import ROW_NUMBER

    n = draw(st.integers(1, 5))
    cols: dict[str, pa.Array] = {}
    for name in ("user_id", "item_id", "rating", "timestamp", "text"):
        typ = draw(arrow_columns)
        value = st.none() if pa.types.is_null(typ) else st.none() | _arrow_value(typ)
        values = draw(st.lists(value, min_size=n, max_size=n))
        cols[name] = pa.array(values, type=typ)
    cols[ROW_NUMBER] = pa.array(range(1, n + 1), pa.int64())
    return pa.table(cols)


def _arrow_value(typ: pa.DataType) -> st.SearchStrategy:
    if pa.types.is_int64(typ):
        return st.integers(-(2**63), 2**63 - 1)
    if pa.types.is_float64(typ):
        return st.floats()
    if pa.types.is_string(typ):
        return st.text(max_size=10).map(lambda s: s.encode("utf-8", "replace").decode())
    if pa.types.is_boolean(typ):
        return st.booleans()
    if pa.types.is_list(typ):
        return st.lists(st.integers(-5, 5), max_size=3)
    if pa.types.is_struct(typ):
        return st.fixed_dictionaries(
            {"a": st.text(max_size=5).map(lambda s: s.encode("utf-8", "replace").decode())}
        )
    return st.integers(-(10**10), 10**11)  # timestamp("s") from seconds


@FUZZ
@given(batch=hf_batches())
def test_hf_batches_are_rows_or_quarantined(batch: pa.Table) -> None:
    """Every record of a Hugging Face batch, whatever its column types, is one row."""
    from engine.data.hf import _normalise

    out = _normalise(batch, "hub/dataset", None, 1)
    assert out.num_rows == batch.num_rows
    assert out.schema.remove(out.schema.get_field_index("record")).equals(ROW_SCHEMA)
    assert out["record"].to_pylist() == list(range(batch.num_rows))
