"""MovieLens ratings (GroupLens), every published layout, auto-detected by file name.

* 100K: ``u.data`` is ``user<TAB>item<TAB>rating<TAB>timestamp``; ``u.item`` is
  ``|``-separated, latin-1, ``item_id|title|...``.
* 1M / 10M: ``ratings.dat`` / ``movies.dat`` with ``::`` separators (``movies.dat`` latin-1
  in 1M, UTF-8 in 10M; both decode as latin-1 without loss of the ids).
* 20M / 25M / 32M / latest: ``ratings.csv`` (``userId,movieId,rating,timestamp`` header)
  and ``movies.csv`` (``movieId,title,genres``, titles quoted when they contain commas).

Ratings are valid from 0.5 to 5 (the 10M and later releases have half stars). There is no
review text: the corpus serves recommendation work, not text classification. A ``.csv``
whose header is not comma-separated gives ``wrong_delimiter`` for every line, so the file
fails with an error that says so.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator, Mapping
from pathlib import Path

from engine.data.registry import bad_row, item_row, register_corpus, review_row
from engine.data.textio import allow_fields_of, decompress, iter_lines

__all__ = [
    "delimiter_problem",
    "ratings_header_problem",
    "read_movielens_items",
    "read_movielens_ratings",
]

RATING_RANGE = (0.5, 5.0)
RATINGS_HEADER = ("userId", "movieId", "rating", "timestamp")
MOVIES_HEADER = ("movieId", "title")
_OTHER_SEPARATORS = (";", "\t", "|", "::")


def _split(text: str, *, seps: tuple[str, ...]) -> list[str]:
    for sep in seps:
        if sep in text:
            return text.split(sep)
    return [text]


def _is_csv(path: str) -> bool:
    return path.endswith((".csv", ".csv.gz"))


def delimiter_problem(header: str, expected: str, wanted: tuple[str, ...]) -> str | None:
    """A description if ``header`` is not ``expected``-separated but holds the ``wanted``
    column names with another separator; else None."""
    if expected in header:
        return None
    for sep in _OTHER_SEPARATORS:
        if sep in header and all(name in header.split(sep) for name in wanted[:2]):
            return f"header is {sep!r}-separated, expected {expected!r}: {header[:200]}"
    return f"header has no {expected!r} separator: {header[:200]}"


def _read_movies_csv(path: str, data: bytes) -> Iterator[dict]:
    body, problem = decompress(data)
    text = body.decode("utf-8", errors="replace").lstrip("\ufeff")
    allow_fields_of(text)
    lines = iter(csv.reader(io.StringIO(text, newline="")))
    try:
        header = next(lines, None)
    except csv.Error as err:
        yield bad_row(path, 1, "malformed_csv", str(err))
        return
    if header is None:
        return
    if len(header) < 2 or tuple(h.strip() for h in header[:2]) != MOVIES_HEADER:
        reason = "wrong_delimiter" if len(header) == 1 else "missing_column"
        yield bad_row(path, 1, reason, ",".join(header))
        return
    number = 1
    while True:
        number += 1
        try:
            fields = next(lines, None)
        except csv.Error as err:  # e.g. a field over csv's limit: the parser cannot go on
            yield bad_row(path, number, "malformed_csv", str(err))
            break
        if fields is None:
            break
        if not fields:
            continue
        if len(fields) < 2:
            yield bad_row(path, number, "malformed_line", ",".join(fields))
            continue
        yield item_row(path, number, item_id=fields[0] or None, item_title=fields[1])
    if problem is not None:
        yield bad_row(path, None, problem)


def read_movielens_items(path: str, data: bytes) -> Iterator[dict]:
    """Item rows (id, title) from ``u.item``, ``movies.dat`` (latin-1) or ``movies.csv``."""
    if _is_csv(path):
        yield from _read_movies_csv(path, data)
        return
    for line in iter_lines(data, encoding="latin-1"):
        if line.text is None:
            yield bad_row(path, line.number, line.problem or "unreadable", line.raw)
            continue
        fields = _split(line.text, seps=("::", "|"))
        if len(fields) < 2:
            yield bad_row(path, line.number, "malformed_line", line.text)
            continue
        yield item_row(
            path, line.number, item_id=fields[0] or None, item_title=fields[1], raw=line.text
        )


def ratings_header_problem(path: Path) -> str | None:
    """What is wrong with a ``ratings.csv`` header, or None. Its columns are read by position
    (``userId,movieId,rating,timestamp``), so a header that names other columns, or these in
    another order (user and item swapped), would be read wrongly without a word. A file with
    no header (a first line of numbers) and one not comma-separated (the reader says so) pass."""
    if not _is_csv(path.name):
        return None
    names = _csv_header(path)
    if names is None or len(names) < 2 or all(_is_number(n) for n in names):
        return None
    if tuple(names) == RATINGS_HEADER:
        return None
    return (
        f"its header names {', '.join(names)}, but a MovieLens ratings.csv is read as "
        f"{', '.join(RATINGS_HEADER)} in that order; rename or reorder the columns (or read "
        "the file as corpus 'table' with data.columns)"
    )


def _csv_header(path: Path) -> list[str] | None:
    """The first line's comma-separated fields, stripped (None: unreadable; the reader
    then reports it with its line)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as fh:
            first = fh.readline().lstrip("\ufeff")
        return [n.strip() for n in next(csv.reader([first]))]
    except (OSError, EOFError, StopIteration, csv.Error):
        return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@register_corpus(
    "movielens",
    default_path="datasets/movielens-100k",
    review_globs=("u.data", "ratings.dat", "ratings.csv", "ratings.csv.gz"),
    item_globs=("u.item", "movies.dat", "movies.csv", "movies.csv.gz"),
    read_items=read_movielens_items,
    has_text=False,
    check_header=ratings_header_problem,
)
def read_movielens_ratings(
    path: str, data: bytes, item_titles: Mapping[str, str]
) -> Iterator[dict]:
    """Rating rows from ``u.data`` (tab), ``ratings.dat`` (``::``) or ``ratings.csv``."""
    csv_layout = _is_csv(path)
    wrong: str | None = None
    for line in iter_lines(data):
        if line.text is None:
            yield bad_row(path, line.number, line.problem or "unreadable", line.raw)
            continue
        if csv_layout and line.number == 1:
            wrong = delimiter_problem(line.text, ",", RATINGS_HEADER)
            if wrong is None and line.text.split(",")[0].strip() == RATINGS_HEADER[0]:
                continue  # the header
        if wrong is not None:
            yield bad_row(
                path, line.number, "wrong_delimiter", wrong if line.number == 1 else line.text
            )
            continue
        fields = line.text.split(",") if csv_layout else _split(line.text, seps=("\t", "::"))
        if len(fields) != 4:
            yield bad_row(path, line.number, "malformed_line", line.text)
            continue
        user, item, rating, seconds = (f.strip() for f in fields)
        yield review_row(
            path,
            line.number,
            user_id=user or None,
            item_id=item or None,
            rating=rating or None,
            timestamp=seconds or None,
            item_title=item_titles.get(item, ""),
            raw=line.text,
            rating_range=RATING_RANGE,
        )
