"""Helpers shared by the data-layer tests: the fixture folder, the one preparation call, and
reading a fixture folder with a registered reader in plain Python (no Ray)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from engine.data import CORPORA, DataConfig, PreparedData, prepare_data
from engine.data.read import bind_corpus, resolve_files
from engine.models import embedded_model_path

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "data"
SPLITS = ("train", "valid", "test")


@cache
def tokenizer() -> str:
    """MiniLM's tokenizer folder, looked up on first use (not at import, so that ``pytest -m gpu``
    collects this folder on a machine without the embedded teacher's package)."""
    return str(embedded_model_path())


def prep(num_blocks: int | None = None, **kw: object) -> PreparedData:
    """``prepare_data`` on a ``data:`` section given as keywords, with MiniLM's tokenizer."""
    return prepare_data(DataConfig(**kw), tokenizer(), num_blocks=num_blocks)


def all_keys(d: PreparedData) -> list[str]:
    """The row keys of every split, in split order."""
    return [k for s in SPLITS for k in getattr(d, s)["row_key"].tolist()]


TABLE_COLUMNS = {
    "user_id": "reviewer",
    "item_id": "product",
    "rating": "stars",
    "text": "body",
    "title": "headline",
    "timestamp": "when",
}


def plain_rows(name: str, sub: str, columns: dict[str, str] | None = None) -> tuple[list, dict]:
    """Read a fixture folder with the registered reader, without Ray."""
    corpus = bind_corpus(CORPORA.get(name), DataConfig(corpus=name, columns=columns))
    reviews, items = resolve_files(corpus, str(ASSETS / sub))
    titles: dict[str, str] = {}
    for f in items:
        assert corpus.read_items is not None
        for row in corpus.read_items(str(f), f.read_bytes()):
            if not row["reason"]:
                titles.setdefault(row["item_id"], row["item_title"])
    rows = [r for f in reviews for r in corpus(str(f), f.read_bytes(), titles)]
    return rows, titles
