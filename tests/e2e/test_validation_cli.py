"""Every user mistake is reported before Ray starts: ``python -m engine.sweep smoke <bad
override>`` exits 2 with a line naming the key, the bad value and the allowed values, and
neither starts Ray nor creates the run directory. One mistake runs as a user types it, in a
process of its own; the others through the same entry point (``engine.sweep.main``) in this
process, which checks that no Ray started (``tests.conftest.sweep_in_process``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import sweep_in_process

REPO = Path(__file__).resolve().parents[2]


def _table(tmp_path: Path) -> Path:
    f = tmp_path / "reviews.csv"
    f.write_text("reviewer,product,stars,body\nu1,i1,5,fine\n")
    return f


MISTAKES = {
    "corpus": (
        lambda d: ["data.corpus=womens-ecomerce"],
        ["data.corpus", "'womens-ecomerce'", "did you mean 'womens-ecommerce'", "table"],
    ),
    "columns": (
        lambda d: [
            "data.corpus=table",
            f"data.path={_table(d)}",
            "data.columns={item_id: product, rating: star}",
        ],
        ["data.columns.rating", "'star'", "reviewer, product, stars, body"],
    ),
    "hybrid": (
        lambda d: ["importance.hybrid_weights={fisher: 1.0, gradiant: 1.0}"],
        ["importance.hybrid_weights.gradiant", "'gradiant'", "did you mean 'gradient'", "taylor"],
    ),
    "consensus": (
        lambda d: ["importance.consensus_methods=[fisher, ablaton]"],
        ["importance.consensus_methods.1", "'ablaton'", "did you mean 'ablation'", "taylor"],
    ),
}


def _one_line(proc: subprocess.CompletedProcess[str], expected: list[str], out: Path) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert all(part in errors[0] for part in expected), errors[0]
    assert "Traceback" not in proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr  # "Started a local Ray instance" never printed
    assert not out.exists()


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_mistake_exits_2_before_ray(tmp_path: Path, mistake: str) -> None:
    """Through the CLI's entry point in this process (which also checks that no Ray started)."""
    overrides, expected = MISTAKES[mistake]
    out = tmp_path / "run"
    env = {"COMPRESSION_SWEEPS_CACHE": str(tmp_path / "cache")}
    _one_line(sweep_in_process("smoke", *overrides(tmp_path), out=out, env=env), expected, out)


@pytest.mark.slow
def test_a_mistake_in_the_real_cli_exits_2_before_ray(tmp_path: Path) -> None:
    """The same as a user types it: ``python -m engine.sweep`` in a process of its own."""
    overrides, expected = MISTAKES["corpus"]
    out = tmp_path / "run"
    env = {**os.environ, "COMPRESSION_SWEEPS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "engine.sweep", "smoke", *overrides(tmp_path), "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    _one_line(proc, expected, out)


# ------------------------------------------------------------------ preflight: the run directory


def _sweep(out: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {"COMPRESSION_SWEEPS_CACHE": str(tmp_path / "cache")}
    return sweep_in_process("--out", str(out), *extra, "smoke", env=env)


def _one_error_before_ray(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr  # "Started a local Ray instance" never printed
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_a_run_directory_under_a_file_is_refused_before_ray(tmp_path: Path) -> None:
    """Fails for root too: no directory can be made under a regular file."""
    (tmp_path / "a-file").write_text("not a directory\n")
    out = tmp_path / "a-file" / "run"
    error = _one_error_before_ray(_sweep(out, tmp_path))
    assert error == f"error: cannot write the run directory {out}: Not a directory"


def test_a_uri_as_the_run_directory_is_refused_before_ray(tmp_path: Path) -> None:
    """``s3://`` is not a path: taken as one it became a local ``s3:/`` directory."""
    error = _one_error_before_ray(_sweep("s3://bucket/run", tmp_path))  # type: ignore[arg-type]
    assert error.startswith("error: --out s3://bucket/run is a URI;"), error
    assert "shared NFS/EFS mount" in error
    assert not (REPO / "s3:").exists()


def test_a_read_only_directory_is_refused_before_ray(tmp_path: Path) -> None:
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        if os.access(parent, os.W_OK):  # root writes anyway: the test above covers root
            pytest.skip("this user can write a 0o500 directory")
        out = parent / "run"
        error = _one_error_before_ray(_sweep(out, tmp_path))
        assert error == f"error: cannot write the run directory {out}: Permission denied"
        assert not out.exists()
    finally:
        parent.chmod(0o700)


def test_a_run_directory_without_room_is_refused_before_ray(tmp_path: Path) -> None:
    """More than the whole filesystem holds can never be free; the directories the check
    made are removed again."""
    need = shutil.disk_usage(tmp_path).total // 2**20 + 1
    out = tmp_path / "new" / "run"
    error = _one_error_before_ray(_sweep(out, tmp_path, "--min-free-mb", str(need)))
    assert f"MB free for the run directory {out}; a run needs {need} MB" in error
    assert not (tmp_path / "new").exists()
