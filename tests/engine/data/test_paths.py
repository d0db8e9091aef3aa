"""One path resolver for every corpus (:mod:`engine.data.paths`): the current directory
first, then the repository root; globs the same way; one message for a missing path."""

from __future__ import annotations

from pathlib import Path

from engine.data.paths import REPO_ROOT, glob_files, is_pattern, locate, not_found

WOMENS = "datasets/womens-ecommerce-reviews/reviews.csv"


def test_repo_root_holds_the_embedded_datasets() -> None:
    assert (REPO_ROOT / "sweeps").is_dir() and (REPO_ROOT / WOMENS).is_file()


def test_current_directory_wins_then_repo_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert locate(WOMENS) == REPO_ROOT / WOMENS  # not here: the repository's copy
    mine = tmp_path / WOMENS
    mine.parent.mkdir(parents=True)
    mine.write_text("x")
    assert locate(WOMENS).resolve() == mine.resolve()  # here: this one
    assert locate("no/such/thing.csv") is None
    assert locate(str(tmp_path / "absent.csv")) is None  # absolute: only as is


def test_home_is_expanded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "r.csv").write_text("x")
    assert locate("~/r.csv") == tmp_path / "r.csv"


def test_globs_fall_back_to_the_repo_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert is_pattern("datasets/*/reviews.csv") and not is_pattern(WOMENS)
    assert glob_files("datasets/womens-*/reviews.csv") == [REPO_ROOT / WOMENS]
    (tmp_path / "a.csv").write_text("x")
    (tmp_path / "b.csv").write_text("y")
    (tmp_path / "dir.csv").mkdir()  # a directory is never a file match
    assert [p.name for p in glob_files("*.csv")] == ["a.csv", "b.csv"]
    assert glob_files("*.nothing") == []


def test_not_found_names_the_path_and_where_it_looked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    msg = not_found("x/y.csv")
    assert msg.startswith("x/y.csv: no such file or directory (looked in ")
    assert str(tmp_path) in msg and str(REPO_ROOT) in msg and "\n" not in msg


def test_hf_and_file_corpora_resolve_a_folder_alike(tmp_path: Path, monkeypatch) -> None:
    """The ``hf`` corpus's local-folder lookup and the file corpora share :func:`locate`."""
    from engine.data.hf import _local

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds").mkdir()
    assert _local("ds") == (tmp_path / "ds").resolve() == locate("ds").resolve()
    assert _local("McAuley-Lab/Amazon-Reviews-2023") is None  # a hub id: not a local path
