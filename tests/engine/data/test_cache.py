"""The prepared-data cache: a hit gives back exactly what preparing gave (every array with its
dtype, shape and order; the labels, file records, bad rows and statistics), for each kind of
study's data; the key follows every input that shapes the data, and a damaged entry is a miss.

The oracle is the preparation itself, run fresh through Ray Data on the real embedded corpora.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.config import load_study
from engine.data.cache import data_key, load_data, save_data
from engine.data.pipeline import PreparedData
from engine.models import EMBEDDED_TEACHER, embedded_model_path
from engine.tasks import get_task
from tests.conftest import REPO

WOMENS = REPO / "datasets" / "womens-ecommerce-reviews" / "reviews.csv"
SMALL = ["data.max_length=32", "data.train_size=96", "data.valid_size=32", "data.test_size=48"]
CASES = {
    "review text (rating_classification)": ("smoke", []),
    "ratings with user and item ids (rating_regression)": ("rating", SMALL),
    "item sequences (next_item)": ("smoke-rec", []),
    "text sequences and a transfer domain (next_item)": (
        "cross-domain-rec",
        ["data.valid_size=60", "data.test_size=80", "data.transfer.limit=3000"],
    ),
}


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, default=lambda o: o.item())


@pytest.mark.slow  # four real preparations through Ray Data
@pytest.mark.parametrize("study,overrides", CASES.values(), ids=CASES.keys())
def test_a_hit_gives_back_exactly_what_was_prepared(
    ray_local, tmp_path: Path, study: str, overrides: list[str]
) -> None:
    cfg = load_study(study, overrides)
    fresh = get_task(cfg.task).prepare(cfg.data, cfg.teacher.model)
    key = data_key(cfg.task, cfg.data, cfg.teacher.model)
    assert key is not None and load_data(key, tmp_path) is None  # a cold cache: a miss
    assert save_data(key, fresh, tmp_path) == tmp_path / "data" / key
    hit = load_data(key, tmp_path)
    assert isinstance(hit, PreparedData)
    for split in ("train", "valid", "test", "transfer"):
        made, kept = getattr(fresh, split), getattr(hit, split)
        if made is None:
            assert kept is None, split
            continue
        assert list(kept) == list(made), split  # the same arrays, in the same order
        for name, array in made.items():
            assert kept[name].dtype == array.dtype, (split, name)
            assert kept[name].shape == array.shape, (split, name)
            assert np.array_equal(kept[name], array), (split, name)
    if study == "cross-domain-rec":
        assert fresh.transfer is not None and len(fresh.transfer["labels"]) > 0
    assert hit.num_labels == fresh.num_labels
    assert hit.label_names == list(fresh.label_names)
    assert hit.files == fresh.files and all(len(f.sha256) == 64 for f in hit.files)
    for part in ("bad_rows", "stats"):  # written to the manifest as JSON: the same JSON
        assert _json(getattr(hit, part)) == _json(getattr(fresh, part)), part


def _smoke_data(path: Path, *more: str):
    return load_study("smoke", [f"data.path={path}", *more]).data


def test_the_key_follows_the_files_the_settings_the_tokenizer_and_the_task(
    tmp_path: Path,
) -> None:
    task = "rating_classification"
    copy = tmp_path / "a" / "reviews.csv"
    copy.parent.mkdir()
    shutil.copy(WOMENS, copy)
    data = _smoke_data(copy)
    key = data_key(task, data, EMBEDDED_TEACHER)
    assert key is not None and data_key(task, data, EMBEDDED_TEACHER) == key

    original = copy.read_bytes()
    at = original.index(b"dress")  # one letter of one review
    copy.write_bytes(original[:at] + b"D" + original[at + 1 :])
    assert data_key(task, data, EMBEDDED_TEACHER) != key
    copy.write_bytes(original)  # the same bytes again (a newer mtime): the same key
    assert data_key(task, data, EMBEDDED_TEACHER) == key

    moved = tmp_path / "b" / "reviews.csv"  # the same bytes elsewhere: the records name paths
    moved.parent.mkdir()
    shutil.copy(copy, moved)
    assert data_key(task, _smoke_data(moved), EMBEDDED_TEACHER) != key

    assert data_key(task, _smoke_data(copy, "data.train_size=161"), EMBEDDED_TEACHER) != key
    assert data_key(task, _smoke_data(copy, "data.seed=1"), EMBEDDED_TEACHER) != key
    assert data_key("rating_regression", data, EMBEDDED_TEACHER) != key

    # a teacher given as a folder: its tokenizer files are part of the key
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded_model_path() / name, folder / name)
    by_folder = data_key(task, data, str(folder))
    assert by_folder not in (None, key)
    (folder / "config.json").write_text("{}")  # not a tokenizer file
    assert data_key(task, data, str(folder)) == by_folder
    with (folder / "vocab.txt").open("a") as f:
        f.write("newword\n")
    assert data_key(task, data, str(folder)) != by_folder


def test_inputs_that_cannot_be_fingerprinted_have_no_key(tmp_path: Path) -> None:
    hub = load_study("smoke", ["data.corpus=hf", "data.hf_name=someone/reviews"]).data
    assert data_key("rating_classification", hub, EMBEDDED_TEACHER) is None
    gone = tmp_path / "reviews.csv"
    shutil.copy(WOMENS, gone)
    data = _smoke_data(gone)
    gone.unlink()  # preparing it says the file is missing; the cache does not
    assert data_key("rating_classification", data, EMBEDDED_TEACHER) is None


def _tiny(**train: np.ndarray) -> PreparedData:
    split = {"labels": np.arange(3), **train}
    return PreparedData(split, split, split, 5, list("abcde"), [], [], {"kept": 9})


def test_a_damaged_entry_is_a_miss_and_objects_are_not_pickled(tmp_path: Path) -> None:
    d = save_data("k", _tiny(text=np.array(["x", "y", "z"])), tmp_path)
    assert d is not None and load_data("k", tmp_path) is not None
    npz = d / "splits.npz"
    npz.write_bytes(npz.read_bytes()[:100])  # cut short
    assert load_data("k", tmp_path) is None
    save_data("k", _tiny(), tmp_path)
    (d / "meta.json").unlink()  # meta.json is written last: without it, no entry
    assert load_data("k", tmp_path) is None
    # an array of Python objects would need a pickle: not cached, nothing written
    assert save_data("o", _tiny(ids=np.array([1, "a", None], dtype=object)), tmp_path) is None
    assert not (tmp_path / "data" / "o").exists()
