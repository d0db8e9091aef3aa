"""Corpus registry, the normalised row schema every reader emits, and the data errors.

A corpus is a pair of plain functions (no Ray import) registered under a name:

* ``read_reviews(path, data, item_titles) -> Iterator[dict]`` turns one file's bytes into
  rows built with :func:`review_row` (valid or not) or :func:`bad_row`;
* optionally ``read_items(path, data) -> Iterator[dict]`` turns a side file (item metadata)
  into rows built with :func:`item_row`, whose titles are joined onto reviews by ``item_id``.

Readers never raise for bad input: every record becomes exactly one row, and an invalid one
carries its ``reason``. Counting, quarantine and the ``max_bad_fraction`` policy live in
:mod:`engine.data.read`, once for all corpora.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from sweepcore.registry import Registry

__all__ = [
    "CORPORA",
    "MAX_BAD_ROWS_LISTED",
    "NORMAL_SKIPS",
    "ROW_SCHEMA",
    "TASK_CPUS",
    "Corpus",
    "DataError",
    "FileRecord",
    "ItemReader",
    "ReviewReader",
    "bad_row",
    "item_row",
    "register_corpus",
    "review_row",
]

RAW_CHARS = 500  # how much of a bad record is kept for the report
# Timestamps are stored as int64 seconds; a larger one cannot be a real time.
MAX_SECONDS = 2**63 - 1
_SURROGATES = re.compile("[\ud800-\udfff]")
MAX_BAD_ROWS_LISTED = 1_000  # quarantined rows listed in bad_rows.jsonl
# Skips that are a property of the data, not damage: they never count as "bad".
NORMAL_SKIPS = frozenset({"empty_text", "duplicate", "repeated_user_item", "sampled_out"})
TASK_CPUS = 0.5  # Ray Data read/parse/decide tasks; fractional so actor pools never starve them

ReviewReader = Callable[[str, bytes, Mapping[str, str]], Iterator[dict]]
ItemReader = Callable[[str, bytes], Iterator[dict]]

# One schema for every corpus. ``reason`` is "" for a valid row; ``raw`` is kept only for
# invalid rows. ``source_line`` is 1-based, None where no line applies (a truncated stream).
ROW_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("rating", pa.float64()),
        ("timestamp", pa.int64()),
        ("text", pa.string()),
        ("title", pa.string()),
        ("item_title", pa.string()),
        ("source_file", pa.string()),
        ("source_line", pa.int64()),
        ("reason", pa.string()),
        ("raw", pa.string()),
    ]
)


class DataError(ValueError):
    """A data file cannot be used: missing, unreadable, empty, or too much of it is invalid.

    The message is one line and names the file.
    """


@dataclass(frozen=True)
class FileRecord:
    """What happened to one input file: its checksum and where each row went."""

    path: str
    sha256: str
    rows_read: int
    rows_kept: int
    rows_skipped: int
    skip_reasons: dict[str, int] = field(default_factory=dict)


def _blank(path: str, line: int | None) -> dict:
    return {
        "user_id": "",
        "item_id": "",
        "rating": math.nan,
        "timestamp": 0,
        "text": "",
        "title": "",
        "item_title": "",
        "source_file": path,
        "source_line": line,
        "reason": "",
        "raw": "",
    }


def _storable(text: str) -> str:
    """``text`` as UTF-8 can hold it: lone surrogates (undecodable bytes read with
    ``surrogateescape``, or ``\\udcxx`` escapes in JSON) become U+FFFD."""
    return text.encode("utf-8", "replace").decode("utf-8") if has_surrogates(text) else text


def has_surrogates(text: str) -> bool:
    """True if ``text`` holds a lone surrogate, which no UTF-8 column can store."""
    return _SURROGATES.search(text) is not None


def bad_row(path: str, line: int | None, reason: str, raw: str = "") -> dict:
    """An invalid record: counted, quarantined, never used."""
    row = _blank(path, line)
    row.update(reason=reason, raw=_storable(raw[:RAW_CHARS]))
    return row


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def review_row(
    path: str,
    line: int,
    *,
    user_id: object,
    item_id: object,
    rating: object,
    timestamp: object = None,
    text: object = None,
    title: object = None,
    item_title: str = "",
    raw: str = "",
    rating_range: tuple[float, float] = (1.0, 5.0),
    timestamp_scale: int = 1,
) -> dict:
    """Validate and normalise one review; return a :func:`bad_row` if it is invalid.

    ``user_id`` None means the field is missing (invalid); ``""`` means the corpus has no
    users (e.g. women's reviews), which turns off the (user, item) de-duplication for it.
    ``timestamp`` None means unknown and becomes 0. Empty text is valid here: whether a row
    needs text is the task's decision, not the reader's. ``rating_range`` is the corpus's
    valid scale (MovieLens 10M+ has half stars from 0.5); ``timestamp_scale`` divides the
    timestamp into seconds (1000 for Amazon 2023's milliseconds).
    """
    if user_id is None or item_id is None or _text(item_id) == "" or rating is None:
        return bad_row(path, line, "missing_field", raw)
    if isinstance(rating, bool):
        return bad_row(path, line, "invalid_rating", raw)
    try:
        value = float(rating)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond float
        return bad_row(path, line, "invalid_rating", raw)
    if math.isnan(value):
        return bad_row(path, line, "invalid_rating", raw)
    if not rating_range[0] <= value <= rating_range[1]:
        return bad_row(path, line, "rating_out_of_range", raw)
    seconds = 0
    if timestamp not in (None, ""):
        try:
            whole = timestamp if isinstance(timestamp, int) else int(float(timestamp))  # type: ignore[arg-type]
            seconds = whole // timestamp_scale
        except (TypeError, ValueError, OverflowError):  # OverflowError: inf, 1e400
            return bad_row(path, line, "invalid_timestamp", raw)
        if not 0 <= seconds <= MAX_SECONDS:
            return bad_row(path, line, "invalid_timestamp", raw)
    fields = {
        "user_id": _text(user_id),
        "item_id": _text(item_id),
        "text": _text(text),
        "title": _text(title),
        "item_title": item_title,
    }
    if any(has_surrogates(v) for v in fields.values()):  # e.g. a "\udcff" escape in JSON
        return bad_row(path, line, "non_utf8", raw)
    return {
        "user_id": fields["user_id"],
        "item_id": fields["item_id"],
        "rating": value,
        "timestamp": seconds,
        "text": fields["text"],
        "title": fields["title"],
        "item_title": item_title,
        "source_file": path,
        "source_line": line,
        "reason": "",
        "raw": "",
    }


def item_row(path: str, line: int, *, item_id: object, item_title: object, raw: str = "") -> dict:
    """One item's metadata (only ``item_id`` and ``item_title`` are used)."""
    if item_id is None or _text(item_id) == "":
        return bad_row(path, line, "missing_field", raw)
    if has_surrogates(_text(item_id)) or has_surrogates(_text(item_title)):
        return bad_row(path, line, "non_utf8", raw)
    row = _blank(path, line)
    row.update(item_id=_text(item_id), item_title=_text(item_title))
    return row


@dataclass(frozen=True)
class Corpus:
    """A registered corpus: its readers and where its files are by default.

    ``default_path`` is relative to the repository root. When a path is a directory, files
    matching ``review_globs`` are reviews and files matching ``item_globs`` are item
    metadata (never both). For a single review file, item files are looked for beside it.
    """

    name: str
    read_reviews: ReviewReader
    default_path: str
    review_globs: tuple[str, ...]
    item_globs: tuple[str, ...] = ()
    read_items: ItemReader | None = None
    has_text: bool = True
    # keyword options of ``read_reviews`` set from the study file ("columns": the column
    # mapping and timestamp unit), bound by :func:`engine.data.read.bind_corpus`
    options: tuple[str, ...] = ()
    # a corpus that is not a set of files (a Hugging Face dataset) opens itself:
    # ``opener(source_config) -> (ray Dataset of ROW_SCHEMA rows, record name, checksum)``
    opener: Callable[..., tuple] | None = None
    # ``check_header(path) -> problem | None``: what is wrong with a review file's header,
    # read before Ray starts (:mod:`engine.data.check`); None: the corpus checks none
    check_header: Callable[[Path], str | None] | None = None

    def __call__(self, path: str, data: bytes, item_titles: Mapping[str, str]) -> Iterator[dict]:
        return self.read_reviews(path, data, item_titles)


CORPORA: Registry[Corpus] = Registry("corpus")


def register_corpus(
    name: str,
    *,
    default_path: str,
    review_globs: tuple[str, ...],
    item_globs: tuple[str, ...] = (),
    read_items: ItemReader | None = None,
    has_text: bool = True,
    options: tuple[str, ...] = (),
    opener: Callable[..., tuple] | None = None,
    check_header: Callable[[Path], str | None] | None = None,
) -> Callable[[ReviewReader], ReviewReader]:
    """Decorator: register ``read_reviews`` as corpus ``name`` (a duplicate name is an error)."""

    def deco(read_reviews: ReviewReader) -> ReviewReader:
        corpus = Corpus(
            name=name,
            read_reviews=read_reviews,
            default_path=default_path,
            review_globs=tuple(review_globs),
            item_globs=tuple(item_globs),
            read_items=read_items,
            has_text=has_text,
            options=tuple(options),
            opener=opener,
            check_header=check_header,
        )
        CORPORA.register(name)(corpus)
        return read_reviews

    return deco
