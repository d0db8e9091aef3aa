"""Women's E-Commerce Clothing Reviews (Kaggle, CC0): one CSV with quoted, multi-line fields.

Columns used: ``Clothing ID`` (item), ``Title``, ``Review Text``, ``Rating``. There are no
user ids or timestamps, so ``user_id`` is ``""`` (no (user, item) de-duplication) and
``timestamp`` is 0. ``source_line`` is the physical line a record starts on: review texts
contain newlines, so records and lines differ.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping

from engine.data.registry import bad_row, register_corpus, review_row
from engine.data.textio import decompress, has_bad_bytes

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
    body, problem = decompress(data)
    text = body.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        return
    except csv.Error as err:
        yield bad_row(path, 1, "malformed_csv", str(err))
        return
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        yield bad_row(path, 1, "missing_column", f"missing {missing} in header {header}")
        return
    col = {name: i for i, name in enumerate(header)}
    records: list[tuple[int, list[str]]] = []
    start = reader.line_num + 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            records.append((start, [f"<{err}>"]))
            problem = problem or "malformed_csv"
            break
        if fields:  # csv yields [] for a blank line: not a record
            records.append((start, fields))
        start = reader.line_num + 1
    if problem is not None and records:
        # a cut-short stream: the last record may be cut mid-field, so it is not trusted
        line, fields = records.pop()
        yield bad_row(path, line, problem, ",".join(fields))
    elif problem is not None:
        yield bad_row(path, None, problem)
    for line, fields in records:
        raw = ",".join(fields)
        if len(fields) != len(header):
            yield bad_row(path, line, "malformed_csv", raw)
        elif any(has_bad_bytes(f) for f in fields):
            yield bad_row(path, line, "non_utf8", raw.encode("utf-8", "replace").decode())
        else:
            yield review_row(
                path,
                line,
                user_id="",
                item_id=fields[col["Clothing ID"]],
                rating=fields[col["Rating"]] or None,
                text=fields[col["Review Text"]] if "Review Text" in col else None,
                title=fields[col["Title"]] if "Title" in col else None,
                raw=raw,
            )
