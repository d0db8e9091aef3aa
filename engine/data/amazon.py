"""Amazon review data, 2018 release (Ni, Li & McAuley): gzipped JSON Lines.

Reviews carry ``reviewerID, asin, overall, reviewText, summary, unixReviewTime``; the
review's ``summary`` becomes ``title``. ``meta_*.json.gz`` files in the same folder give
item titles (``asin`` → ``title``), joined onto reviews as ``item_title``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping

from engine.data.registry import bad_row, item_row, register_corpus, review_row
from engine.data.textio import iter_lines

__all__ = ["read_amazon_items", "read_amazon_reviews"]

_JSON_GLOBS = ("*.json.gz", "*.jsonl.gz", "*.json", "*.jsonl")


RowMaker = Callable[[int, dict, str], dict]


def _rows(path: str, data: bytes, make: RowMaker) -> Iterator[dict]:
    """One row per non-blank line: ``make(line, object, raw)`` for a JSON object, else a bad row."""
    for line in iter_lines(data):
        if line.text is None or line.number is None:
            yield bad_row(path, line.number, line.problem or "unreadable", line.raw)
            continue
        try:
            obj = json.loads(line.text)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            yield bad_row(path, line.number, "malformed_json", line.text)
            continue
        yield make(line.number, obj, line.text)


def read_amazon_items(path: str, data: bytes) -> Iterator[dict]:
    """Item metadata rows (``asin``, ``title``) from a ``meta_*.json.gz`` file."""

    def make(number: int, obj: dict, raw: str) -> dict:
        return item_row(
            path, number, item_id=obj.get("asin") or None, item_title=obj.get("title"), raw=raw
        )

    return _rows(path, data, make)


@register_corpus(
    "amazon-2018",
    default_path="datasets/amazon-2018",
    review_globs=_JSON_GLOBS,
    item_globs=tuple(f"meta_{g}" for g in _JSON_GLOBS),
    read_items=read_amazon_items,
)
def read_amazon_reviews(path: str, data: bytes, item_titles: Mapping[str, str]) -> Iterator[dict]:
    """Review rows from one 2018-release review file (``*_5.json.gz`` or a full category)."""

    def make(number: int, obj: dict, raw: str) -> dict:
        asin = obj.get("asin") or None
        return review_row(
            path,
            number,
            user_id=obj.get("reviewerID") or None,
            item_id=asin,
            rating=obj.get("overall"),
            timestamp=obj.get("unixReviewTime"),
            text=obj.get("reviewText"),
            title=obj.get("summary"),
            item_title=item_titles.get(str(asin), "") if asin is not None else "",
            raw=raw,
        )

    return _rows(path, data, make)
