"""``data:`` checks before Ray (:func:`engine.data.check.problems`): unknown corpus names,
reader options for a corpus that takes none, and column mappings against planted file
headers (CSV, TSV, Parquet)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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
