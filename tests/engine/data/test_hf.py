"""Hugging Face datasets (engine/data/hf.py): a local saved dataset read through Ray Data
with a column mapping, millisecond timestamps and a split; errors in one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.data import DataError, read_corpus


def test_hf_local_dataset_through_from_huggingface(ray_local, tmp_path: Path) -> None:
    import datasets

    n = 30
    records = {
        "reviewer": [f"H{i % 7}" for i in range(n)],
        "product": [f"I{i}" for i in range(n)],
        "stars": [float(1 + i % 5) for i in range(n)],
        "body": [f"hf review {i}" for i in range(n)],
        "ms": [1_650_000_000_000 + i * 1000 for i in range(n)],
    }
    records["stars"][7] = 9.0  # rating_out_of_range, row 8
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(records), "test": datasets.Dataset.from_dict(records)}
    ).save_to_disk(str(tmp_path / "hfds"))
    mapping = {"user_id": "reviewer", "item_id": "product", "rating": "stars", "text": "body"}
    got = read_corpus(
        "hf",
        str(tmp_path / "hfds"),
        max_bad_fraction=0.1,
        columns=mapping | {"timestamp": "ms"},
        timestamp_unit="ms",
        hf_split="test",
    )
    (rec,) = got.files
    assert (rec.rows_read, rec.rows_kept, rec.skip_reasons) == (30, 29, {"rating_out_of_range": 1})
    assert [(b["line"], b["reason"]) for b in got.bad_rows] == [(8, "rating_out_of_range")]
    rows = sorted(got.rows.take_all(), key=lambda r: int(r["item_id"][1:]))
    assert [r["timestamp"] for r in rows[:2]] == [1_650_000_000, 1_650_000_001]
    assert rows[0]["user_id"] == "H0" and rows[0]["text"] == "hf review 0"
    with pytest.raises(DataError, match="no split 'valid'"):
        read_corpus("hf", str(tmp_path / "hfds"), columns=mapping, hf_split="valid")
    with pytest.raises(DataError, match=r"no column\(s\) \['rating'\]") as err:
        read_corpus("hf", str(tmp_path / "hfds"), columns={"item_id": "product"})
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="cannot load as a Hugging Face dataset") as err:
        read_corpus("hf", str(tmp_path / "missing"), columns=mapping)
    assert "\n" not in str(err.value) and "missing" in str(err.value)
