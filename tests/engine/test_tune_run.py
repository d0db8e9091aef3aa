"""How many trials the sweep runs at once, as the terminal says it, against a hand count of
trials packed into the cluster's CPUs and GPUs."""

from __future__ import annotations

import pytest

from engine.config import load_study
from engine.tune_run import concurrency_line, trials_at_once


def _packed(cpus: float, gpus: float, have_cpu: float, have_gpu: float, cap: int | None) -> int:
    """Place trials one by one until the next does not fit (the definition)."""
    n, cpu, gpu = 0, have_cpu, have_gpu
    while cpu >= cpus and gpu >= gpus and (cap is None or n < cap):
        n, cpu, gpu = n + 1, cpu - cpus, gpu - gpus
    return n


@pytest.mark.parametrize(
    ("cpus", "gpus", "have", "cap"),
    [
        (1, 0, {"CPU": 2.0}, None),
        (2, 0, {"CPU": 2.0}, None),
        (1, 0, {"CPU": 3.0}, None),
        (0.5, 0, {"CPU": 2.0}, 3),
        (1, 0.25, {"CPU": 16.0, "GPU": 1.0}, None),
        (1, 0.5, {"CPU": 1.0, "GPU": 2.0}, None),
        (1, 1, {"CPU": 8.0}, None),  # a GPU study on a machine without one: none fit
    ],
)
def test_trials_at_once_is_how_many_fit(cpus, gpus, have, cap) -> None:
    overrides = [f"resources.cpus={cpus}", f"resources.gpus={gpus}"]
    if cap is not None:
        overrides.append(f"search.max_concurrent_trials={cap}")
    cfg = load_study("smoke", overrides)
    expected = _packed(cpus, gpus, have.get("CPU", 0.0), have.get("GPU", 0.0), cap)
    assert trials_at_once(cfg, have) == expected


def test_the_line_says_trials_threads_and_reuse() -> None:
    cfg = load_study("smoke", ["resources.cpus=1", "threads_per_trial=1"])
    assert concurrency_line(cfg, {"CPU": 2.0}) == (
        "2 trials at once: 1 CPU and 1 torch thread each, on the cluster's 2 CPUs now "
        "(workers reused between trials: yes)"
    )
    cfg = load_study("smoke", ["resources.cpus=2", "search.reuse_actors=false"])
    assert concurrency_line(cfg, {"CPU": 2.0}).startswith("1 trial at once: 2 CPUs and 2 torch")
