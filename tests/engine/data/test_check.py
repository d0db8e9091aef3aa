"""``data:`` checks before Ray (:func:`engine.data.check.problems`): unknown corpus names,
reader options for a corpus that takes none, and column mappings against planted file
headers (CSV, TSV, Parquet)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.config import ConfigError, load_study
from engine.data.check import problems
from engine.data.config import DataConfig, EvalDataConfig

SRC = "study.yaml"


def _csv(tmp_path: Path, header: str, sep: str = ",", name: str = "t.csv") -> Path:
    f = tmp_path / name
    f.write_text(header.replace(",", sep) + "\n" + sep.join(["u1", "i1", "5", "fine"]) + "\n")
    return f


def test_unknown_corpus_names_key_value_nearest_and_known() -> None:
    [line] = problems(DataConfig(corpus="amazon2018"), SRC)
    assert line.startswith("study.yaml: data.corpus: ")
    assert "'amazon2018'" in line and "did you mean 'amazon-2018'" in line
    for known in ("womens-ecommerce", "table", "hf", "movielens"):
        assert known in line


def test_unknown_eval_corpus_is_reported_under_data_eval() -> None:
    cfg = DataConfig(eval=EvalDataConfig(corpus="womens"))
    [line] = problems(cfg, SRC)
    assert line.startswith("study.yaml: data.eval.corpus: ") and "'womens'" in line


def test_reader_options_on_a_corpus_that_reads_its_own_fields() -> None:
    out = problems(DataConfig(columns={"rating": "stars"}, timestamp_unit="ms"), SRC)
    assert len(out) == 2
    assert out[0].startswith("study.yaml: data.columns: ") and "'womens-ecommerce'" in out[0]
    assert "{'rating': 'stars'}" in out[0] and "hf, table" in out[0]
    assert out[1].startswith("study.yaml: data.timestamp_unit: ") and "'ms'" in out[1]


@pytest.mark.parametrize(("sep", "name"), [(",", "t.csv"), ("\t", "t.tsv")])
def test_mapped_column_missing_from_the_header(tmp_path: Path, sep: str, name: str) -> None:
    f = _csv(tmp_path, "reviewer,product,stars,body", sep, name)
    cfg = DataConfig(corpus="table", path=str(f), columns={"item_id": "product", "rating": "star"})
    assert problems(cfg, SRC) == [
        f"study.yaml: data.columns.rating: source column 'star' is not in {name} "
        "(its columns: reviewer, product, stars, body)"
    ]


def test_required_field_without_a_column(tmp_path: Path) -> None:
    f = _csv(tmp_path, "reviewer,product,stars,body")
    [line] = problems(DataConfig(corpus="table", path=str(f), columns={"rating": "stars"}), SRC)
    assert line.startswith("study.yaml: data.columns: t.csv has no 'item_id' column")
    assert "data.columns.item_id" in line


def test_parquet_schema_is_the_header(tmp_path: Path) -> None:
    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"asin": ["i1"], "stars": [5.0]}), f)
    ok = DataConfig(corpus="table", path=str(f), columns={"item_id": "asin", "rating": "stars"})
    assert problems(ok, SRC) == []
    bad = DataConfig(corpus="table", path=str(f), columns={"item_id": "asin", "text": "body"})
    out = problems(bad, SRC)
    # 'body' is mapped but absent; 'rating' is unmapped and absent
    assert sorted(line.split(": ")[1] for line in out) == ["data.columns", "data.columns.text"]


def test_a_good_mapping_a_missing_file_and_jsonl_pass(tmp_path: Path) -> None:
    f = _csv(tmp_path, "reviewer,product,stars,body")
    good = {"user_id": "reviewer", "item_id": "product", "rating": "stars", "text": "body"}
    assert problems(DataConfig(corpus="table", path=str(f), columns=good), SRC) == []
    # a path that does not exist is the reader's to report (one message for every corpus)
    gone = DataConfig(corpus="table", path=str(tmp_path / "nope.csv"), columns=good)
    assert problems(gone, SRC) == []
    # JSON Lines records need not share keys: no header to check against
    j = tmp_path / "t.jsonl"
    j.write_text('{"a": 1}\n')
    assert problems(DataConfig(corpus="table", path=str(j), columns=good), SRC) == []


def test_the_shipped_corpus_defaults_pass() -> None:
    assert problems(DataConfig(), SRC) == []


def test_data_config_rejects_unknown_mapping_targets() -> None:
    with pytest.raises(ValueError, match="unknown normalised column"):
        DataConfig(corpus="table", columns={"stars": "rating"})


ML_ROWS = ["1,31,2.5,1260759144", "1,1029,3.0,1260759179", "2,31,4.0,1260759185"]


@pytest.mark.parametrize(
    "header",
    ["movieId,userId,rating,timestamp", "user_id,item_id,rating,ts", "userId,movieId,stars,time"],
    ids=["user-and-item-swapped", "other-names", "other-value-names"],
)
def test_a_movielens_ratings_csv_header_that_would_be_misread(tmp_path: Path, header: str) -> None:
    """Issue 33: a ratings.csv with userId and movieId swapped was silently read by position
    (users as items); one whose header names other columns was misread. One line, before
    Ray, naming the columns found and the ones expected in their order."""
    f = tmp_path / "ratings.csv"
    f.write_text("\n".join([header, *ML_ROWS]) + "\n")
    with pytest.raises(ConfigError) as err:
        load_study("smoke-rec", [f"data.path={f}"])
    (line,) = err.value.problems
    found = ", ".join(header.split(","))
    assert line == (
        f"sweeps/smoke-rec.yaml: data.path: ratings.csv: its header names {found}, but a "
        "MovieLens ratings.csv is read as userId, movieId, rating, timestamp in that order; "
        "rename or reorder the columns (or read the file as corpus 'table' with data.columns)"
    )


@pytest.mark.parametrize("first", ["userId,movieId,rating,timestamp", None, "userId;movieId"])
def test_movielens_headers_that_read_right_pass(tmp_path: Path, first: str | None) -> None:
    """The published header, no header (numbers: read by position), and a file that is not
    comma-separated (its reader reports the delimiter, with the line) pass this check."""
    import gzip

    f = tmp_path / "ratings.csv.gz"
    f.write_bytes(
        gzip.compress(("\n".join([*([first] if first else []), *ML_ROWS]) + "\n").encode())
    )
    assert load_study("smoke-rec", [f"data.path={f}"]).data.path == str(f)
    assert load_study("smoke-rec", []).data.corpus == "movielens"  # the shipped u.data
