"""The corpus registry (engine/data/registry.py): contract tests generated from ``CORPORA``
(every registered corpus reads its fixture or embedded data into the one row schema, in
plain Python), the embedded copies against their cards, duplicate names, and a corpus added
through the documented signature.

A new corpus is covered by the generated tests once its data is where they look:
``tests/assets/data/<name>/`` (or a folder named in ``FIXTURES``), else its embedded
``default_path``; a reader that needs ``data.columns`` gets them from ``OPTIONS``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from engine.data import (
    CORPORA,
    bad_row,
    iter_lines,
    read_corpus,
    register_corpus,
    review_row,
)
from engine.data.paths import REPO_ROOT
from engine.data.read import bind_corpus, resolve_files
from engine.data.registry import ROW_SCHEMA, Corpus
from tests.engine.data.conftest import ASSETS, TABLE_COLUMNS, all_keys, plain_rows, prep

# fixture folders whose names predate the corpus names
FIXTURES = {"amazon-2014": "amazon2014", "amazon-2023": "amazon2023", "amazon-2018": "amazon",
            "womens-ecommerce": "womens"}  # fmt: skip
OPTIONS = {"table": {"columns": TABLE_COLUMNS}}
FILE_CORPORA = sorted(n for n in CORPORA.names() if CORPORA.get(n).opener is None)
OPENER_CORPORA = sorted(n for n in CORPORA.names() if CORPORA.get(n).opener is not None)


def _data_of(name: str) -> Path:
    fixture = ASSETS / FIXTURES.get(name, name)
    if fixture.exists():
        return fixture
    embedded = REPO_ROOT / CORPORA.get(name).default_path
    assert embedded.exists(), (
        f"corpus {name!r} has no test data: add tests/assets/data/{name}/ or ship its "
        f"default_path {CORPORA.get(name).default_path!r}"
    )
    return embedded


def _bound(name: str) -> Corpus:
    opts = OPTIONS.get(name, {})
    source = SimpleNamespace(columns=opts.get("columns"), timestamp_unit="s")
    return bind_corpus(CORPORA.get(name), source)


def _read(corpus: Corpus, files: list[Path], titles: Mapping[str, str]) -> list[dict]:
    return [r for f in files for r in corpus(str(f), f.read_bytes(), titles)]


# --- contract tests generated from the registry (no Ray) ------------------------------------


@pytest.mark.parametrize("name", FILE_CORPORA)
def test_every_file_corpus_reads_its_data_into_the_row_schema(name: str) -> None:
    """Every record is one row of ``ROW_SCHEMA`` (no other keys); a valid row has an item,
    a finite rating, its file and 1-based line; an invalid one says why; reading is
    deterministic; item metadata rows carry an item and a title or a reason."""
    corpus = _bound(name)
    reviews, items = resolve_files(corpus, str(_data_of(name)))
    assert reviews, name
    titles: dict[str, str] = {}
    for f in items:
        assert corpus.read_items is not None
        for row in corpus.read_items(str(f), f.read_bytes()):
            assert row["reason"] or (row["item_id"] and row["item_title"]), row
            if not row["reason"]:
                titles.setdefault(row["item_id"], row["item_title"])
    rows = _read(corpus, reviews, titles)
    table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)  # fails on a type mismatch
    assert all(set(r) == set(ROW_SCHEMA.names) for r in rows)
    valid = [r for r in rows if not r["reason"]]
    assert valid, name
    files = {str(f) for f in reviews}
    for r in valid:
        assert r["item_id"] and isinstance(r["user_id"], str), r
        assert math.isfinite(r["rating"]) and r["timestamp"] >= 0, r
        assert r["source_file"] in files and r["source_line"] >= 1, r
    assert all(r["reason"] and r["source_file"] in files for r in rows if r["reason"])
    if corpus.has_text:
        assert any(r["text"] for r in valid), name
    if titles:  # item metadata joined onto the reviews by item id
        assert any(r["item_title"] == titles.get(r["item_id"]) for r in valid if r["item_title"])
    assert _read(corpus, reviews, titles) == rows  # deterministic
    assert table.num_rows == len(rows)


@pytest.mark.parametrize("name", FILE_CORPORA)
def test_every_file_corpus_survives_a_file_cut_in_half(name: str) -> None:
    """Readers never raise for bad input: a file cut mid-record still gives schema rows,
    no more valid ones than the whole file."""
    corpus = _bound(name)
    reviews, _ = resolve_files(corpus, str(_data_of(name)))
    f = reviews[0]
    data = f.read_bytes()
    whole = [r for r in corpus(str(f), data, {}) if not r["reason"]]
    cut = list(corpus(str(f), data[: len(data) // 2], {}))
    pa.Table.from_pylist(cut, schema=ROW_SCHEMA)
    assert len([r for r in cut if not r["reason"]]) <= len(whole)


@pytest.mark.parametrize("name", OPENER_CORPORA)
def test_every_opener_corpus_reads_a_local_dataset(name: str, ray_local, tmp_path: Path) -> None:
    """A corpus that opens itself (a Hugging Face dataset) reads a local one saved with the
    schema's own column names into valid rows, one per record, bad ones counted."""
    import datasets

    n = 12
    records = {
        "user_id": [f"u{i % 3}" for i in range(n)],
        "item_id": [f"i{i}" for i in range(n)],
        "rating": [float(1 + i % 5) for i in range(n)],
        "text": [f"text {i}" for i in range(n)],
    }
    records["rating"][4] = 0.0  # out of range
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(records)}).save_to_disk(
        str(tmp_path / "ds")
    )
    got = read_corpus(
        name, str(tmp_path / "ds"), max_bad_fraction=0.5, columns={k: k for k in records}
    )
    (rec,) = got.files
    assert (rec.rows_read, rec.rows_kept) == (n, n - 1)
    assert rec.skip_reasons == {"rating_out_of_range": 1}
    rows = got.rows.take_all()
    assert sorted(r["item_id"] for r in rows) == sorted(f"i{i}" for i in range(n) if i != 4)


# --- every reader on its planted-bad fixture: exact counts and the normalised schema ------

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


# --- the embedded copies, duplicate names, a corpus added by a user -------------------------

CARD_ROWS = {"womens-ecommerce": 23_486, "amazon-2018": 5_269 + 2_972, "movielens": 100_000}


@pytest.mark.parametrize("name", sorted(CARD_ROWS))
def test_every_corpus_reads_its_embedded_copy_in_plain_python(name: str) -> None:
    """Each registered reader, called without Ray, turns its embedded files into rows of
    the one schema, with no invalid row and the row count stated on the dataset card."""
    assert set(CORPORA.names()) >= set(CARD_ROWS)
    corpus = CORPORA.get(name)
    reviews, items = resolve_files(corpus, None)
    titles: dict[str, str] = {}
    for f in items:
        assert corpus.read_items is not None
        for row in corpus.read_items(str(f), f.read_bytes()):
            titles.setdefault(row["item_id"], row["item_title"])
    rows = [r for f in reviews for r in corpus(str(f), f.read_bytes(), titles)]
    table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
    assert table.num_rows == CARD_ROWS[name]
    assert set(table["reason"].to_pylist()) == {""}
    ratings = np.asarray(table["rating"])
    assert ratings.min() >= 1 and ratings.max() <= 5
    if name == "movielens":
        assert titles["1"] == "Toy Story (1995)"
        assert sum(bool(t) for t in table["item_title"].to_pylist()) == 100_000


def test_registering_a_duplicate_corpus_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_corpus("amazon-2018", default_path="x", review_globs=("*.x",))(
            lambda path, data, titles: iter(())
        )


def test_custom_corpus_plugs_in_through_the_documented_signature(ray_local, tmp_path: Path) -> None:
    if "test-tsv" not in CORPORA:

        @register_corpus("test-tsv", default_path="unused", review_globs=("*.tsv",))
        def read_tsv(path: str, data: bytes, item_titles: Mapping[str, str]) -> Iterator[dict]:
            for line in iter_lines(data):
                if line.text is None:
                    yield bad_row(path, line.number, line.problem or "", line.raw)
                    continue
                user, item, stars, text = line.text.split("\t")
                yield review_row(
                    path, line.number, user_id=user, item_id=item, rating=stars, text=text
                )

    rows = [f"u{i}\ti{i}\t{1 + i % 5}\treview {i}" for i in range(30)] + ["u0\ti0\t3\tagain"]
    (tmp_path / "r.tsv").write_text("\n".join(rows) + "\n")
    got = prep(corpus="test-tsv", path=str(tmp_path))
    assert got.files[0].skip_reasons == {"repeated_user_item": 1}
    assert len(all_keys(got)) == 30
