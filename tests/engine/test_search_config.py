"""engine.search_config: every declared search algorithm and scheduler is held to the facts it
declares (generated from the registries, so a new entry is tested without new test code), and
the section imports without Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.search_config import SCHEDULER_KINDS, SEARCH_ALGORITHMS, SearchConfig

REPO = Path(__file__).resolve().parents[2]
TWO = [{"metric": "valid_accuracy", "mode": "max"}, {"metric": "gflops", "mode": "min"}]
ONE = TWO[:1]


def _ok(**search: object) -> bool:
    try:
        SearchConfig.model_validate(search)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("name", SEARCH_ALGORITHMS.names())
def test_every_algorithm_is_held_to_its_declared_facts(name: str) -> None:
    spec = SEARCH_ALGORITHMS.get(name)
    assert _ok(algorithm=name, space={"a.b": [1, 2]}, objectives=TWO)
    assert _ok(algorithm=name, space={"a.b": {"low": 1.0, "high": 2.0}}, objectives=TWO) == (
        not spec.needs_lists
    )
    assert _ok(algorithm=name, space={"a.b": [[1], [2]]}, objectives=TWO) == (
        not spec.chooses_points
    )
    assert _ok(algorithm=name, extra=[{"a.b": 1}], objectives=TWO) == (not spec.chooses_points)
    assert _ok(algorithm=name, objectives=ONE) == (not spec.multi_objective)


@pytest.mark.parametrize("name", SCHEDULER_KINDS.names())
def test_every_scheduler_is_held_to_its_declared_facts(name: str) -> None:
    spec = SCHEDULER_KINDS.get(name)
    assert _ok(scheduler={"name": name}, report_every_steps=1, objectives=TWO)
    assert _ok(scheduler={"name": name}, objectives=TWO) == (not spec.stops_early)
    assert _ok(scheduler={"name": name}, report_every_steps=1, objectives=ONE) == (
        not spec.multi_objective
    )


@pytest.mark.slow
def test_the_search_section_and_the_study_loader_import_without_ray_tune() -> None:
    code = "import sys, engine.config; print('ray.tune' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
