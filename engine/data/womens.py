"""Women's E-Commerce Clothing Reviews (Kaggle, CC0): one CSV with quoted, multi-line fields.

Columns used: ``Clothing ID`` (item), ``Title``, ``Review Text``, ``Rating``. There are no
user ids or timestamps, so ``user_id`` is ``""`` (no (user, item) de-duplication) and
``timestamp`` is 0. ``source_line`` is the physical line a record starts on: review texts
contain newlines, so records and lines differ.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from engine.data.registry import bad_row, register_corpus, review_row
from engine.data.textio import csv_records

__all__ = ["read_womens_reviews"]

REQUIRED_COLUMNS = ("Clothing ID", "Rating")


@register_corpus(
    "womens-ecommerce",
    default_path="datasets/womens-ecommerce-reviews/reviews.csv",
    review_globs=("*.csv", "*.csv.gz"),
)
def read_womens_reviews(path: str, data: bytes, item_titles: Mapping[str, str]) -> Iterator[dict]:
    """Review rows from the CSV; one row (valid or quarantined) per CSV record.

    Bytes are decoded with ``surrogateescape`` so one bad byte spoils only its record
    (``non_utf8``). A CSV syntax error (e.g. an unclosed quote) ends the file there, since
    the parser cannot find the next record boundary; the rest is one ``malformed_csv`` row.
    """
    rows = csv_records(data)
    head = next(rows, None)
    if head is None:
        return
    if head.fields is None:
        yield bad_row(path, 1, head.problem or "malformed_csv", head.raw)
        return
    header = head.fields
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        yield bad_row(path, 1, "missing_column", f"missing {missing} in header {header}")
        return
    col = {name: i for i, name in enumerate(header)}
    records = list(rows)
    problem = None
    if records and records[-1].line is None:  # a cut-short gzip stream
        problem = records.pop().problem
    if records and records[-1].ends:  # the parser stopped at a syntax error
        problem = problem or "malformed_csv"
    if problem is not None and records:
        # a cut-short stream: the last record may be cut mid-field, so it is not trusted
        last = records.pop()
        yield bad_row(path, last.line, problem, last.raw)
    elif problem is not None:
        yield bad_row(path, None, problem)
    for row in records:
        if row.fields is None:
            yield bad_row(path, row.line, row.problem or "malformed_csv", row.raw)
            continue
        fields = row.fields
        yield review_row(
            path,
            row.line,
            user_id="",
            item_id=fields[col["Clothing ID"]],
            rating=fields[col["Rating"]] or None,
            text=fields[col["Review Text"]] if "Review Text" in col else None,
            title=fields[col["Title"]] if "Title" in col else None,
            raw=row.raw,
        )
