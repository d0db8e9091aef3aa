"""Every user mistake is reported before Ray starts: ``python -m engine.sweep smoke <bad
override>`` exits 2 with a line naming the key, the bad value and the allowed values, and
neither starts Ray nor creates the run directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_mistake_exits_2_before_ray(tmp_path: Path, mistake: str) -> None:
    overrides, expected = MISTAKES[mistake]
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
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert all(part in errors[0] for part in expected), errors[0]
    assert "Traceback" not in proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr  # "Started a local Ray instance" never printed
    assert not out.exists()
