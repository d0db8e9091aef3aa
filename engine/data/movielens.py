"""MovieLens ratings (GroupLens): the 100K layout (``u.data`` + ``u.item``) and ``::`` files.

``u.data`` is ``user<TAB>item<TAB>rating<TAB>timestamp``; ``u.item`` is ``|``-separated,
latin-1, ``item_id|title|...``. The 1M/10M ``ratings.dat``/``movies.dat`` use ``::``.
There is no review text: the corpus serves recommendation work, not text classification.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from engine.data.registry import bad_row, item_row, register_corpus, review_row
from engine.data.textio import iter_lines

__all__ = ["read_movielens_items", "read_movielens_ratings"]


def _split(text: str, *, seps: tuple[str, ...]) -> list[str]:
    for sep in seps:
        if sep in text:
            return text.split(sep)
    return [text]


def read_movielens_items(path: str, data: bytes) -> Iterator[dict]:
    """Item rows (id, title) from ``u.item`` or ``movies.dat`` (latin-1)."""
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


@register_corpus(
    "movielens",
    default_path="datasets/movielens-100k",
    review_globs=("u.data", "ratings.dat"),
    item_globs=("u.item", "movies.dat"),
    read_items=read_movielens_items,
    has_text=False,
)
def read_movielens_ratings(
    path: str, data: bytes, item_titles: Mapping[str, str]
) -> Iterator[dict]:
    """Rating rows from ``u.data`` (tab) or ``ratings.dat`` (``::``)."""
    for line in iter_lines(data):
        if line.text is None:
            yield bad_row(path, line.number, line.problem or "unreadable", line.raw)
            continue
        fields = _split(line.text, seps=("\t", "::"))
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
        )
