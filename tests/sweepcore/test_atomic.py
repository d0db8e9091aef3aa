"""sweepcore.atomic: a writer SIGKILLed half-way through leaves the final path absent or with
its previous complete content; a writer that raises leaves it untouched; a finished write has
the bytes and permissions of a plain write, with no temporary file left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sweepcore.atomic import atomic_path, write_atomic
from tests.conftest import kill_writer_half_way

NEW = b"N" * (8 * 2**20)  # 8 MiB: the child writes half, says so, then blocks until killed


def test_a_killed_writer_leaves_the_previous_content(tmp_path: Path) -> None:
    target = tmp_path / "results.parquet"
    old = os.urandom(3 * 2**20)
    target.write_bytes(old)
    kill_writer_half_way(target, NEW)
    assert target.read_bytes() == old


def test_a_killed_writer_of_a_new_file_leaves_none(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    kill_writer_half_way(target, NEW)
    assert not target.exists()
    # the stray temporary name is matched by no glob of the final file's kind
    assert list(tmp_path.glob("*.json")) == []


def test_a_writer_that_raises_leaves_the_target_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    target.write_text("old report\n")
    with pytest.raises(RuntimeError, match="planted"), atomic_path(target) as tmp:
        tmp.write_text("new half")
        raise RuntimeError("planted")
    assert target.read_text() == "old report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_a_finished_write_is_a_plain_write(tmp_path: Path) -> None:
    """Same bytes and mode bits as ``Path.write_bytes`` in the same directory (the umask
    applies: no 0600 temporary-file mode leaks onto reports); parents are created."""
    data = os.urandom(100_000)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(data)
    target = tmp_path / "deeper" / "dir" / "atomic.bin"
    assert write_atomic(target, data) == target
    assert target.read_bytes() == data
    assert target.stat().st_mode == plain.stat().st_mode
    write_atomic(target, "é\n")  # text is UTF-8
    assert target.read_bytes() == "é\n".encode()
    assert [p.name for p in target.parent.iterdir()] == ["atomic.bin"]
