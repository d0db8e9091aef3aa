"""Helpers shared by the data-layer tests: the fixture folder and the one preparation call."""

from __future__ import annotations

from pathlib import Path

from engine.data import DataConfig, PreparedData, prepare_data
from engine.models import embedded_model_path

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "data"
SPLITS = ("train", "valid", "test")
TOKENIZER = str(embedded_model_path())


def prep(num_blocks: int | None = None, **kw: object) -> PreparedData:
    """``prepare_data`` on a ``data:`` section given as keywords, with MiniLM's tokenizer."""
    return prepare_data(DataConfig(**kw), TOKENIZER, num_blocks=num_blocks)


def all_keys(d: PreparedData) -> list[str]:
    """The row keys of every split, in split order."""
    return [k for s in SPLITS for k in getattr(d, s)["row_key"].tolist()]
