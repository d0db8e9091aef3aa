"""The plain-table reader (engine/data/table.py): CSV, JSON lines and Parquet give the same
rows under a column mapping; a corpus without users; a mapping naming a missing column.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine.data.table import read_table
from tests.engine.data.conftest import ASSETS, TABLE_COLUMNS, plain_rows


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
