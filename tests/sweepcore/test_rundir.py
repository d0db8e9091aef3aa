"""sweepcore.rundir: the run directory's shared names are defined there once, and the analysis
refuses a manifest of a newer schema in one line while runs without a version (the recorded
ones) still read. That the engine stamps the version into a real run's manifest is checked
on the session's smoke run (tests/e2e/test_sweep_cli.py)."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from sweepcore.rundir import SCHEMA_VERSION, schema_problem

REPO = Path(__file__).resolve().parents[2]
SHARED = {"TEACHER_ID", "REFERENCE_STATUS", "ORDER_COL", "STRATEGY_COL", "KD_COL",
          "KEPT_LAYERS_COL", "SCHEMA_VERSION"}  # fmt: skip


def test_the_shared_names_are_assigned_only_in_sweepcore() -> None:
    assigned = {
        (str(f.relative_to(REPO)), t.id)
        for package in ("engine", "analysis", "sweepcore", "bench")
        for f in (REPO / package).rglob("*.py")
        for node in ast.walk(ast.parse(f.read_text()))
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(t, ast.Name) and t.id in SHARED
    }
    assert assigned == {("sweepcore/rundir.py", name) for name in SHARED}


def test_a_run_of_a_newer_schema_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    from analysis.report import main

    run = tmp_path / "run"
    shutil.copytree(REPO / "tests" / "assets" / "runs" / "smoke-rec", run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert "schema" not in manifest  # recorded before the version: read as schema 1
    assert main([str(run)]) == 0
    manifest["schema"] = SCHEMA_VERSION + 1
    (run / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main([str(run)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"error: {run / 'manifest.json'}: written with run-directory schema "
        f"{SCHEMA_VERSION + 1}, newer than this version reads ({SCHEMA_VERSION}); read it "
        "with the version that wrote it"
    )


@pytest.mark.parametrize("schema", [1, "1", None])
def test_schema_values(schema) -> None:
    problem = schema_problem({"schema": schema}, "m.json")
    assert (problem is None) == (schema == 1)
