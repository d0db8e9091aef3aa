"""Data layer: corpora → validated, de-duplicated, split, tokenised arrays.

Entry point: :func:`prepare_data(cfg, tokenizer_path) -> PreparedData` (needs a running
Ray). Registered corpora: ``womens-ecommerce``, ``amazon-2014``, ``amazon-2018``,
``amazon-2023``, ``movielens`` (every layout; no text: read it with
:func:`engine.data.read.read_corpus` and build recommendation views with
:func:`engine.data.recsys.build_recsys`), ``table`` (Parquet/CSV/JSONL + ``data.columns``)
and ``hf`` (a Hugging Face dataset folder or hub id).

Extension point — a corpus is one plain reader function (no Ray import), registered with
:func:`register_corpus`::

    read_reviews(path: str, data: bytes, item_titles: Mapping[str, str]) -> Iterator[dict]

It gets one file's bytes and yields one row per record, built with
:func:`~engine.data.registry.review_row` (which validates ids and the 1–5 rating) or
:func:`~engine.data.registry.bad_row` (a quarantined record with its reason). It never raises
for bad input; counting, the bad-row policy, dedup and splits are shared. Example::

    @register_corpus("tsv-reviews", default_path="datasets/tsv", review_globs=("*.tsv",))
    def read_tsv(path, data, item_titles):
        for line in iter_lines(data):
            if line.text is None:
                yield bad_row(path, line.number, line.problem, line.raw)
                continue
            user, item, stars, text = line.text.split("\\t")
            yield review_row(path, line.number, user_id=user, item_id=item,
                             rating=stars, text=text, raw=line.text)

Optional item metadata: pass ``item_globs=`` and ``read_items(path, data) -> Iterator[dict]``
yielding :func:`~engine.data.registry.item_row`; titles are joined on ``item_id``.
"""

from __future__ import annotations

# importing the reader modules registers their corpora
from engine.data import amazon, hf, movielens, table, womens  # noqa: F401
from engine.data.config import DataConfig, EvalDataConfig, RecsysConfig
from engine.data.pipeline import PreparedData, prepare_data
from engine.data.read import read_corpus
from engine.data.recsys import RecsysViews, build_recsys
from engine.data.registry import (
    CORPORA,
    DataError,
    FileRecord,
    bad_row,
    item_row,
    register_corpus,
    review_row,
)
from engine.data.textio import iter_lines

__all__ = [
    "CORPORA",
    "DataConfig",
    "DataError",
    "EvalDataConfig",
    "FileRecord",
    "PreparedData",
    "RecsysConfig",
    "RecsysViews",
    "bad_row",
    "build_recsys",
    "item_row",
    "iter_lines",
    "prepare_data",
    "read_corpus",
    "register_corpus",
    "review_row",
]
