"""The finished-trial ledger (engine/ledger.py): rows round-trip exactly, writes are atomic.

The replay it enables is tested end to end, through a driver kill and ``--resume``, in
tests/e2e/test_resume.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from engine.ledger import (
    LEDGER_DIR,
    attempts,
    config_id,
    finished_row,
    record_attempt,
    record_finished,
    replay_key,
    unknown_finished,
)


def test_row_round_trips_with_numpy_values_and_nan(tmp_path: Path) -> None:
    row = {
        "status": "ok",
        "error": None,
        "accuracy": np.float32(0.625),
        "params": np.int64(15617285),
        "wall_s": 2.81537562000085,
        "valid_accuracy": float("nan"),
        "exit_curve": np.array([1.5, 2.0]),
    }
    assert finished_row(tmp_path, "abc_00001") is None
    path = record_finished(tmp_path, "abc_00001", row)
    assert path == tmp_path / LEDGER_DIR / "abc_00001.json"
    back = finished_row(tmp_path, "abc_00001")
    assert back is not None
    assert back["accuracy"] == 0.625 and type(back["accuracy"]) is float
    assert back["params"] == 15617285 and type(back["params"]) is int
    assert back["wall_s"] == row["wall_s"]  # the exact float, not a rounded print
    assert math.isnan(back["valid_accuracy"])
    assert back["exit_curve"] == [1.5, 2.0]
    assert back["error"] is None and back["status"] == "ok"
    assert finished_row(tmp_path, "abc_00002") is None  # another trial: nothing recorded


def test_unrecordable_value_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cannot record a object in the trial ledger"):
        record_finished(tmp_path, "t1", {"status": "ok", "odd": object()})
    assert finished_row(tmp_path, "t1") is None
    assert list((tmp_path / LEDGER_DIR).iterdir()) == []  # no partial or temporary file


def test_rewrite_replaces_whole_row(tmp_path: Path) -> None:
    record_finished(tmp_path, "t1", {"status": "failed", "error": "x" * 10_000})
    record_finished(tmp_path, "t1", {"status": "ok"})
    assert finished_row(tmp_path, "t1") == {"status": "ok"}
    assert [p.name for p in (tmp_path / LEDGER_DIR).iterdir()] == ["t1.json"]


def test_attempts_append_in_order_beside_the_row(tmp_path: Path) -> None:
    assert attempts(tmp_path, "t1") == []
    first = record_attempt(tmp_path, "t1", {"node_id": "n1", "from_checkpoint": False})
    record_attempt(tmp_path, "t1", {"node_id": "n2", "from_checkpoint": True})
    record_attempt(tmp_path, "t2", {"node_id": "n3", "from_checkpoint": False})
    assert first == tmp_path / LEDGER_DIR / "t1.attempts.jsonl"
    assert [a["node_id"] for a in attempts(tmp_path, "t1")] == ["n1", "n2"]
    assert [a["from_checkpoint"] for a in attempts(tmp_path, "t1")] == [False, True]
    assert [a["node_id"] for a in attempts(tmp_path, "t2")] == ["n3"]
    assert finished_row(tmp_path, "t1") is None  # attempts are not a finished row


def test_config_id_is_order_free_and_tells_values_apart() -> None:
    a = config_id({"pipeline.truncate.keep_layers": 2, "pipeline.distill.temperature": 4.0})
    b = config_id({"pipeline.distill.temperature": 4.0, "pipeline.truncate.keep_layers": 2})
    assert a == b and len(a) == 10
    assert config_id({"pipeline.truncate.keep_layers": 3}) != config_id(
        {"pipeline.truncate.keep_layers": 2}
    )


def test_unknown_finished_holds_only_rows_the_experiment_forgot(tmp_path: Path) -> None:
    two, nine = config_id({"k": 2}), config_id({"k": 9})
    record_finished(tmp_path, "a_00000", {"config_id": two, "seed": 0, "wall_s": 1.0})
    record_finished(tmp_path, "a_00001", {"config_id": nine, "seed": 0, "wall_s": 2.0})
    record_finished(tmp_path, "a_00002", {"config_id": nine, "seed": 1, "wall_s": 3.0})
    record_finished(tmp_path, "a_00003", {"seed": 1, "wall_s": 4.0})  # no config_id: old row
    record_attempt(tmp_path, "a_00004", {"node_id": "n"})  # started, never finished
    rows = unknown_finished(tmp_path, known={"a_00000", "a_00001"})
    # a planted pair of forgotten trials: exactly those, each under its configuration × seed
    assert set(rows) == {replay_key(nine, 1)}
    assert rows[replay_key(nine, 1)] == {
        "config_id": nine,
        "seed": 1,
        "wall_s": 3.0,
        "replayed_from": "a_00002",
    }
    assert unknown_finished(tmp_path, known={f"a_0000{i}" for i in range(5)}) == {}
