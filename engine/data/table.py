"""Plain tables: Parquet, CSV/TSV or JSON Lines files with a column mapping from the study.

``data.corpus: table`` and ``data.columns: {user_id: reviewer, rating: stars, text: body}``
map the normalised names (:data:`~engine.data.config.NORMALISED_COLUMNS`) to the file's
columns; a name not mapped is looked for under its own name. ``item_id`` and ``rating`` are
required; without a ``user_id`` column the corpus has no users (no (user, item) dedup).
``data.timestamp_unit: ms`` reads millisecond timestamps. Formats go by file name:
``*.parquet``, ``*.csv[.gz]``, ``*.tsv[.gz]``, ``*.jsonl[.gz]`` / ``*.json[.gz]``.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine.data.movielens import delimiter_problem
from engine.data.registry import bad_row, register_corpus, review_row
from engine.data.textio import csv_records, iter_lines

__all__ = ["TABLE_GLOBS", "header_columns", "mapped_row", "read_table", "source_columns"]

TABLE_GLOBS = (
    "*.parquet",
    "*.csv",
    "*.csv.gz",
    "*.tsv",
    "*.tsv.gz",
    "*.jsonl",
    "*.jsonl.gz",
    "*.json",
    "*.json.gz",
)
REQUIRED = ("item_id", "rating")
FIELDS = ("user_id", "item_id", "rating", "timestamp", "text", "title", "item_title")


def source_columns(columns: Mapping[str, str] | None) -> dict[str, str]:
    """Normalised name → source column, unmapped names standing for themselves."""
    mapping = dict(columns or {})
    return {name: mapping.get(name, name) for name in FIELDS}


def mapped_row(
    path: str,
    number: int | None,
    record: Mapping[str, object],
    src: dict[str, str],
    explicit: set[str],
    scale: int,
    raw: str,
) -> dict:
    def get(name: str) -> object:
        value = record.get(src[name])
        return None if value is None or value == "" else value

    # an unmapped user_id column that the file lacks means "no users", not a missing field
    has_users = "user_id" in explicit or src["user_id"] in record
    return review_row(
        path,
        number or 0,
        user_id=get("user_id") if has_users else "",
        item_id=get("item_id"),
        rating=get("rating"),
        timestamp=get("timestamp"),
        text=get("text"),
        title=get("title"),
        item_title=str(get("item_title") or ""),
        raw=raw,
        timestamp_scale=scale,
    )


def _parquet(
    path: str, data: bytes, src: dict[str, str], explicit: set[str], scale: int
) -> Iterator[dict]:
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as err:
        yield bad_row(path, None, "unreadable_parquet", str(err))
        return
    missing = [src[n] for n in REQUIRED if src[n] not in table.column_names]
    if missing:
        yield bad_row(path, None, "missing_column", f"missing {missing} in {table.column_names}")
        return
    wanted = [c for c in dict.fromkeys(src.values()) if c in table.column_names]
    number = 0
    for batch in table.select(wanted).to_batches(max_chunksize=8192):
        for record in batch.to_pylist():
            number += 1
            yield mapped_row(path, number, record, src, explicit, scale, "")


def _delimited(
    path: str, data: bytes, sep: str, src: dict[str, str], explicit: set[str], scale: int
) -> Iterator[dict]:
    rows = csv_records(data, sep)
    head = next(rows, None)
    if head is None:
        return
    if head.fields is None:
        yield bad_row(path, 1, head.problem or "malformed_csv", head.raw)
        return
    header = head.fields
    missing = [src[n] for n in REQUIRED if src[n] not in header]
    if missing:
        wrong = delimiter_problem(sep.join(header), sep, tuple(src[n] for n in REQUIRED))
        if len(header) == 1 and wrong is not None:
            yield bad_row(path, 1, "wrong_delimiter", wrong)
        else:
            yield bad_row(path, 1, "missing_column", f"missing {missing} in header {header}")
        return
    for row in rows:
        if row.fields is None:
            yield bad_row(path, row.line, row.problem or "malformed_csv", row.raw)
        else:
            record = dict(zip(header, row.fields, strict=True))
            yield mapped_row(path, row.line, record, src, explicit, scale, row.raw)


def _jsonl(
    path: str, data: bytes, src: dict[str, str], explicit: set[str], scale: int
) -> Iterator[dict]:
    for line in iter_lines(data):
        if line.text is None or line.number is None:
            yield bad_row(path, line.number, line.problem or "unreadable", line.raw)
            continue
        try:
            obj = json.loads(line.text)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than ~1000
            obj = None
        if not isinstance(obj, dict):
            yield bad_row(path, line.number, "malformed_json", line.text)
            continue
        yield mapped_row(path, line.number, obj, src, explicit, scale, line.text)


def header_columns(path: Path) -> list[str] | None:
    """The column names of a Parquet file (its schema) or a CSV/TSV file (its first line),
    read without reading the rows; None for JSON Lines (records need not share keys) or a
    file whose head cannot be read (the reader then reports it, with its line)."""
    name = path.name.removesuffix(".gz")
    try:
        if name.endswith(".parquet"):
            return list(pq.read_schema(path).names)
        if not name.endswith((".csv", ".tsv")):
            return None
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="surrogateescape", newline="") as fh:
            first = fh.readline().lstrip("\ufeff")
        sep = "," if name.endswith(".csv") else "\t"
        return [n.strip() for n in next(csv.reader([first], delimiter=sep))]  # as csv_records
    except (OSError, ValueError, StopIteration, csv.Error, pa.ArrowException):
        return None


def read_table(
    path: str,
    data: bytes,
    item_titles: Mapping[str, str],
    *,
    columns: Mapping[str, str] | None = None,
    timestamp_scale: int = 1,
) -> Iterator[dict]:
    """Rows from one Parquet / CSV / TSV / JSON Lines file through the column mapping."""
    src = source_columns(columns)
    explicit = set(columns or {})
    name = path.removesuffix(".gz")
    if name.endswith(".parquet"):
        yield from _parquet(path, data, src, explicit, timestamp_scale)
    elif name.endswith(".csv"):
        yield from _delimited(path, data, ",", src, explicit, timestamp_scale)
    elif name.endswith(".tsv"):
        yield from _delimited(path, data, "\t", src, explicit, timestamp_scale)
    else:
        yield from _jsonl(path, data, src, explicit, timestamp_scale)


register_corpus(
    "table", default_path="datasets/table", review_globs=TABLE_GLOBS, options=("columns",)
)(read_table)
