"""The teacher's cache: its key changes exactly when what the fine-tuned weights depend on
changes, and a saved teacher reloads equal (weights, train logits, config, metrics)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config import ConfigError, load_study
from engine.teacher import (
    TeacherArtifacts,
    cache_dir,
    load_cache,
    load_model,
    save_cache,
    teacher_key,
)
from tests.conftest import tiny_bert, toy_batches


def _train(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(5, 200, (16, 12)).astype(np.int64),
        "attention_mask": np.ones((16, 12), dtype=np.int64),
        "labels": rng.integers(0, 5, 16).astype(np.int64),
    }


def test_teacher_key_changes_with_data_and_settings_and_nothing_else() -> None:
    cfg = load_study("smoke").teacher
    train = _train()
    key = teacher_key(cfg, train, 5)
    # the same inputs, rebuilt: the same key
    assert (
        teacher_key(load_study("smoke").teacher, {k: v.copy() for k, v in train.items()}, 5) == key
    )
    # arrays the fine-tuning does not read do not enter the key
    assert teacher_key(cfg, {**train, "review_id": np.arange(16)}, 5) == key
    changed = []
    for name in ("input_ids", "attention_mask", "labels"):  # one value changed in each array
        other = {k: v.copy() for k, v in train.items()}
        flat = other[name].reshape(-1)
        flat[7] = (flat[7] + 1) % 2 if name == "attention_mask" else flat[7] % 4 + 1
        changed.append(teacher_key(cfg, other, 5))
    changed.append(teacher_key(cfg, {k: v[:15] for k, v in train.items()}, 5))  # one row fewer
    changed.append(teacher_key(cfg, train, 6))  # another label count
    changed.append(teacher_key(load_study("smoke", ["teacher.lr=0.0002"]).teacher, train, 5))
    changed.append(teacher_key(load_study("smoke", ["teacher.seed=1"]).teacher, train, 5))
    changed.append(teacher_key(cfg, train, 5, precision="auto/gpu"))
    assert len(set(changed)) == len(changed) and key not in changed
    assert len(key) == 16 and int(key, 16) >= 0  # a hex digest, usable as a folder name


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COMPRESSION_SWEEPS_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("COMPRESSION_SWEEPS_CACHE")
    assert cache_dir().name == ".cache"


def test_cache_round_trip_returns_equal_artifacts(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COMPRESSION_SWEEPS_CACHE", str(tmp_path))
    model = tiny_bert(num_layers=2)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    logits = np.random.default_rng(0).standard_normal((16, 5)).astype(np.float32)
    metrics = {"valid_accuracy": 0.25, "test_macro_f1": 0.125, "device": "cpu", "oom_retries": 0}
    art = TeacherArtifacts(model.config.to_dict(), state, logits, metrics, key="0123abcd")
    assert load_cache("0123abcd") is None  # nothing saved yet
    where = save_cache(art)
    assert where == tmp_path / "teachers" / "0123abcd"
    got = load_cache("0123abcd")
    assert got is not None and got.cached and got.key == "0123abcd"
    assert got.state_dict.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(got.state_dict[k], v), k
    assert got.train_logits.dtype == np.float32 and np.array_equal(got.train_logits, logits)
    assert got.metrics == metrics
    assert got.config["num_hidden_layers"] == 2 and len(got.config["id2label"]) == 5
    # the reloaded teacher computes what the saved one did
    batch = toy_batches(1, 4, 10)[0]
    rebuilt = load_model(got.config, got.state_dict)
    with torch.no_grad():
        want = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        have = rebuilt(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(have.logits, want.logits)
    assert not rebuilt.training
    # a damaged entry is a cache miss, not an error
    (where / "train_logits.npy").write_bytes(b"not a numpy file")
    assert load_cache("0123abcd") is None


@pytest.mark.parametrize("missing", ["meta.json", "state_dict.safetensors", "train_logits.npy"])
def test_an_incomplete_cache_entry_is_a_miss(tmp_path: Path, missing: str) -> None:
    art = TeacherArtifacts({"model_type": "bert"}, {"w": torch.ones(2)}, np.zeros((1, 2)), {}, "k")
    where = save_cache(art, root=tmp_path)
    assert load_cache("k", root=tmp_path) is not None
    (where / missing).unlink()
    assert load_cache("k", root=tmp_path) is None


# ----------------------------------------------------------------------------- safe loading


def _header(path: Path) -> dict:
    """A safetensors file's header, read by its definition: 8 bytes little-endian length,
    then that many bytes of JSON (tensor name → dtype, shape, offsets)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


def test_cache_weights_are_safetensors(tmp_path: Path) -> None:
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}
    state["tied"] = state["w"]  # tied weights share memory: still written (as a copy)
    art = TeacherArtifacts({"model_type": "bert"}, state, np.zeros((1, 2)), {}, "k")
    where = save_cache(art, root=tmp_path)
    assert sorted(p.name for p in where.iterdir()) == [
        "meta.json",
        "state_dict.safetensors",
        "train_logits.npy",
    ]
    header = _header(where / "state_dict.safetensors")
    assert {k: (v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"} == {
        "w": ("F32", [2, 3]),
        "b": ("F32", [3]),
        "tied": ("F32", [2, 3]),
    }
    got = load_cache("k", root=tmp_path)
    assert got is not None and all(torch.equal(got.state_dict[k], v) for k, v in state.items())


def _legacy_entry(root: Path, key: str, weights: object) -> Path:
    """A cache entry as written before safetensors: ``torch.save`` of the weights."""
    d = root / "teachers" / key
    d.mkdir(parents=True)
    torch.save(weights, d / "state_dict.pt")
    np.save(d / "train_logits.npy", np.ones((2, 3), dtype=np.float32))
    (d / "meta.json").write_text(json.dumps({"config": {"model_type": "bert"}, "metrics": {}}))
    return d


def test_a_legacy_pickled_entry_still_loads(tmp_path: Path) -> None:
    state = {"w": torch.randn(4, 2), "n": torch.tensor([3])}
    _legacy_entry(tmp_path, "old", state)
    got = load_cache("old", root=tmp_path)
    assert got is not None and got.state_dict.keys() == state.keys()
    assert all(torch.equal(got.state_dict[k], v) for k, v in state.items())


class _Payload:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_payload_in_the_cache_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    _legacy_entry(tmp_path, "evil", {"w": torch.ones(1), "x": _Payload(marker)})
    torch.load(tmp_path / "teachers" / "evil" / "state_dict.pt", weights_only=False)
    assert marker.exists()  # control: a plain unpickle of this file runs the payload
    marker.unlink()
    assert load_cache("evil", root=tmp_path) is None  # refused: a cache miss
    assert not marker.exists()


def test_an_ensemble_keeps_each_members_cache_key_that_of_its_own_recipe() -> None:
    """``teacher.ensemble`` is not hashed: member 0's key is the key the study has without an
    ensemble (a cached teacher is reused), member k's the recipe's with ``seed + k``."""
    from engine.ensemble import member_configs

    train = _train()
    single = load_study("smoke").teacher
    ensemble = load_study("smoke", ["teacher.ensemble=3"]).teacher
    assert ensemble.ensemble == 3 and single.ensemble is None
    keys = [teacher_key(m, train, 5) for m in member_configs(ensemble)]
    assert keys[0] == teacher_key(single, train, 5)
    for k in (1, 2):
        assert keys[k] == teacher_key(load_study("smoke", [f"teacher.seed={k}"]).teacher, train, 5)
    assert len(set(keys)) == 3


@pytest.mark.parametrize("value", ["1", "0", "-2", "true"])
def test_an_ensemble_of_fewer_than_two_members_is_one_clear_error(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_study("rating", [f"teacher.ensemble={value}"])
    assert len(err.value.problems) == 1
    line = err.value.problems[0]
    assert line.startswith("sweeps/rating.yaml: teacher.ensemble: ")
    assert "at least 2 members" in line


def test_an_ensemble_size_must_be_a_whole_number() -> None:
    with pytest.raises(ConfigError) as err:
        load_study("rating", ["teacher.ensemble=three"])
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith("sweeps/rating.yaml: teacher.ensemble: ")
    assert "'three'" in err.value.problems[0]
