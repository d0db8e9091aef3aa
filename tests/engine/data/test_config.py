"""The data section (engine/data/config.py): a column mapping names normalised columns only."""

from __future__ import annotations

import pytest

from engine.data import DataConfig


def test_data_config_rejects_unknown_mapping_targets() -> None:
    with pytest.raises(ValueError, match="unknown normalised column"):
        DataConfig(corpus="table", columns={"stars": "rating"})
