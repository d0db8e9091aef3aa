"""Amazon review data (McAuley lab): the 2014, 2018 and 2023 releases, JSON Lines (gzipped).

* **2018** (Ni, Li & McAuley): ``reviewerID, asin, overall, reviewText, summary,
  unixReviewTime``; ``meta_*.json.gz`` gives ``asin`` → ``title``.
* **2014** (McAuley et al.): the same review fields (``reviews_<Category>_5.json.gz``); its
  ``meta_*.json.gz`` lines are Python dict literals (single quotes), parsed with
  :func:`ast.literal_eval` when they are not JSON.
* **2023** (Hou et al.): ``rating, title, text, asin, parent_asin, user_id, timestamp`` with
  the timestamp in *milliseconds*; the item is ``parent_asin`` (the product, not its colour or
  size variant), and ``meta_<Category>.jsonl.gz`` gives ``parent_asin`` → ``title``.

In every release the review's own headline (``summary`` / ``title``) becomes ``title``, and
the item's name from metadata becomes ``item_title``.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterator, Mapping

from engine.data.registry import bad_row, item_row, register_corpus, review_row
from engine.data.textio import iter_lines

__all__ = [
    "read_amazon2014_items",
    "read_amazon2023_items",
    "read_amazon2023_reviews",
    "read_amazon_items",
    "read_amazon_reviews",
]

_JSON_GLOBS = ("*.json.gz", "*.jsonl.gz", "*.json", "*.jsonl")
_META_GLOBS = tuple(f"meta_{g}" for g in _JSON_GLOBS)


RowMaker = Callable[[int, dict, str], dict]


def _loads(text: str, *, python_literals: bool) -> object:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than ~1000
        if not python_literals:
            return None
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None  # TypeError: an unhashable key, e.g. {[1]: 2}


def _rows(
    path: str, data: bytes, make: RowMaker, *, python_literals: bool = False
) -> Iterator[dict]:
    """One row per non-blank line: ``make(line, object, raw)`` for a JSON object, else a bad row."""
    for line in iter_lines(data):
        if line.text is None or line.number is None:
            yield bad_row(path, line.number, line.problem or "unreadable", line.raw)
            continue
        obj = _loads(line.text, python_literals=python_literals)
        if not isinstance(obj, dict):
            yield bad_row(path, line.number, "malformed_json", line.text)
            continue
        yield make(line.number, obj, line.text)


def read_amazon_items(path: str, data: bytes) -> Iterator[dict]:
    """Item metadata rows (``asin``, ``title``) from a 2018 ``meta_*.json.gz`` file."""

    def make(number: int, obj: dict, raw: str) -> dict:
        return item_row(
            path, number, item_id=obj.get("asin") or None, item_title=obj.get("title"), raw=raw
        )

    return _rows(path, data, make)


def read_amazon2014_items(path: str, data: bytes) -> Iterator[dict]:
    """Item rows from a 2014 ``meta_*.json.gz`` file (Python dict literals or JSON)."""

    def make(number: int, obj: dict, raw: str) -> dict:
        return item_row(
            path, number, item_id=obj.get("asin") or None, item_title=obj.get("title"), raw=raw
        )

    return _rows(path, data, make, python_literals=True)


def read_amazon2023_items(path: str, data: bytes) -> Iterator[dict]:
    """Item rows (``parent_asin``, ``title``) from a 2023 ``meta_*.jsonl.gz`` file."""

    def make(number: int, obj: dict, raw: str) -> dict:
        return item_row(
            path,
            number,
            item_id=obj.get("parent_asin") or None,
            item_title=obj.get("title"),
            raw=raw,
        )

    return _rows(path, data, make)


def read_amazon_reviews(path: str, data: bytes, item_titles: Mapping[str, str]) -> Iterator[dict]:
    """Review rows from one 2014- or 2018-release review file (``*_5.json.gz`` or full)."""

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


def read_amazon2023_reviews(
    path: str, data: bytes, item_titles: Mapping[str, str]
) -> Iterator[dict]:
    """Review rows from one 2023-release file (``<Category>.jsonl.gz``); ms → s."""

    def make(number: int, obj: dict, raw: str) -> dict:
        item = obj.get("parent_asin") or obj.get("asin") or None
        return review_row(
            path,
            number,
            user_id=obj.get("user_id") or None,
            item_id=item,
            rating=obj.get("rating"),
            timestamp=obj.get("timestamp"),
            text=obj.get("text"),
            title=obj.get("title"),
            item_title=item_titles.get(str(item), "") if item is not None else "",
            raw=raw,
            timestamp_scale=1000,
        )

    return _rows(path, data, make)


register_corpus(
    "amazon-2018",
    default_path="datasets/amazon-2018",
    review_globs=_JSON_GLOBS,
    item_globs=_META_GLOBS,
    read_items=read_amazon_items,
)(read_amazon_reviews)
register_corpus(
    "amazon-2014",
    default_path="datasets/amazon-2014",
    review_globs=_JSON_GLOBS,
    item_globs=_META_GLOBS,
    read_items=read_amazon2014_items,
)(read_amazon_reviews)
register_corpus(
    "amazon-2023",
    default_path="datasets/amazon-2023",
    review_globs=_JSON_GLOBS,
    item_globs=_META_GLOBS,
    read_items=read_amazon2023_items,
)(read_amazon2023_reviews)
