"""Hugging Face datasets: a hub id or a local folder, through ``datasets`` and Ray Data.

``data.corpus: hf`` with ``data.path`` either a folder written by
``datasets.Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``), or anything
``datasets.load_dataset`` takes: a hub id such as ``McAuley-Lab/Amazon-Reviews-2023`` (with
``data.hf_name: raw_review_All_Beauty``) or a local folder of data files. ``data.hf_split``
picks the split. The hub is only contacted when ``HF_HUB_OFFLINE=0``; the engine sets it to 1.

Columns go through the same mapping as plain tables (``data.columns``, see
:mod:`engine.data.table`); for Amazon 2023 on the hub: ``columns: {item_id: parent_asin}``
and ``timestamp_unit: ms``. The dataset becomes a Ray dataset with
``ray.data.from_huggingface`` and is normalised by a ``map_batches`` task; the driver adds a
row-number column (8 bytes a row) so quarantined rows can be located.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from engine.data.paths import locate
from engine.data.registry import ROW_SCHEMA, TASK_CPUS, DataError, register_corpus
from engine.data.table import REQUIRED, mapped_row, source_columns

__all__ = ["load_hf", "open_hf"]

ROW_NUMBER = "__row_number"


def _local(path: str) -> Path | None:
    where = locate(path)
    return where.resolve() if where is not None else None


def load_hf(path: str, name: str | None, split: str) -> tuple[Any, str]:
    """The ``datasets.Dataset`` for ``path`` and the name it is recorded under.

    Raises a one-line :class:`DataError` naming ``path`` when it cannot be loaded.
    """
    import datasets

    local = _local(path)
    label = str(local) if local is not None else path
    try:
        if (
            local is not None
            and local.is_dir()
            and ((local / "state.json").exists() or (local / "dataset_dict.json").exists())
        ):
            ds = datasets.load_from_disk(str(local))
        else:
            ds = datasets.load_dataset(str(local) if local else path, name, split=split)
    except Exception as err:  # datasets raises many types (hub, offline, format errors)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DataError(
            f"{label}: cannot load as a Hugging Face dataset ({type(err).__name__}: {first})"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{label}: no split {split!r} (splits: {', '.join(ds)})")
        ds = ds[split]
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"{label}: not a Hugging Face Dataset ({type(ds).__name__})")
    return ds, label


def _normalise(
    batch: pa.Table, label: str, columns: Mapping[str, str] | None, scale: int
) -> pa.Table:
    src = source_columns(columns)
    explicit = set(columns or {})
    rows: list[dict] = []
    records: list[int] = []
    for record in batch.to_pylist():
        number = int(record.pop(ROW_NUMBER))
        row = mapped_row(label, number, record, src, explicit, scale, "")
        if row["reason"]:
            row["raw"] = json.dumps(record, default=str)[:500]
        rows.append(row)
        records.append(number - 1)
    t = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
    return t.append_column("record", pa.array(records, pa.int64()))


def open_hf(source: Any) -> tuple[ray.data.Dataset, str, str]:
    """Open ``source.path`` as rows of :data:`ROW_SCHEMA` (+ ``record``) on Ray Data."""
    if not source.path:
        raise DataError("data.path: the 'hf' corpus needs a hub id or a local dataset folder")
    ds, label = load_hf(source.path, source.hf_name, source.hf_split)
    if len(ds) == 0:
        raise DataError(f"{label}: no records in dataset (split {source.hf_split!r})")
    src = source_columns(source.columns)
    missing = [src[n] for n in REQUIRED if src[n] not in ds.column_names]
    if missing:
        raise DataError(
            f"{label}: no column(s) {missing} (columns: {', '.join(ds.column_names)}); "
            "map them with data.columns"
        )
    wanted = [c for c in dict.fromkeys(src.values()) if c in ds.column_names]
    ds = ds.select_columns(wanted).add_column(ROW_NUMBER, np.arange(1, len(ds) + 1))
    rows = _to_ray(ds).map_batches(
        _normalise,
        batch_format="pyarrow",
        fn_kwargs={
            "label": label,
            "columns": source.columns,
            "scale": 1000 if source.timestamp_unit == "ms" else 1,
        },
        num_cpus=TASK_CPUS,
    )
    return rows, label, str(ds._fingerprint)


def _to_ray(ds: Any) -> ray.data.Dataset:
    """``ray.data.from_huggingface``; without ``aiohttp`` (which Ray 2.60 imports there for its
    hub-parquet probe) the same thing it does for an in-memory ``Dataset``: ``from_arrow`` of
    the dataset's Arrow table (memory-mapped by ``datasets``, copied into the object store)."""
    try:
        return ray.data.from_huggingface(ds)
    except ImportError:
        return ray.data.from_arrow(ds.with_format("arrow")[:])


def _not_files(path: str, data: bytes, item_titles: Mapping[str, str]) -> Iterator[dict]:
    raise DataError("the 'hf' corpus is opened by engine.data.hf.open_hf, not file by file")


register_corpus("hf", default_path="", review_globs=(), options=("columns",), opener=open_hf)(
    _not_files
)
