"""Data flows one way: ``engine`` writes the run directory, ``analysis`` reads it, and what
both need lives in ``sweepcore``. No module of one imports the other (read from the source's
import statements), ``sweepcore`` imports neither, and importing the report and the plots
loads neither the engine nor Ray."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _imported(path: Path) -> set[str]:
    """Every module name an ``import`` / ``from ... import`` in the file names (any depth:
    function-local imports count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _offenders(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        bad = sorted(
            n for n in _imported(path) if any(n == f or n.startswith(f + ".") for f in forbidden)
        )
        if bad:
            out[str(path.relative_to(REPO))] = bad
    return out


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("engine", ("analysis",)),
        ("analysis", ("engine", "ray")),
        ("sweepcore", ("engine", "analysis", "ray")),
    ],
)
def test_no_import_against_the_flow(package: str, forbidden: tuple[str, ...]) -> None:
    assert _offenders(package, forbidden) == {}


def test_the_walk_sees_a_planted_import(tmp_path: Path) -> None:
    """The checker itself: a function-local ``from analysis.frontier import x`` is found."""
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef g():\n    from analysis.frontier import config_front\n")
    assert "analysis.frontier" in _imported(f)


def test_report_and_plots_load_neither_engine_nor_ray() -> None:
    code = (
        "import json, sys\n"
        "import analysis, analysis.report, analysis.plots\n"
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('engine', 'ray'))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
