"""Contract tests generated from the task registry: every registered task is checked here
without new test code. Samples follow the task's data view: integer targets (class or item
ids) score ``[B, C]`` outputs, float targets (values) ``[B, 1]`` outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.tasks import COST_METRICS, TASKS, Task, get_task

NAMES = TASKS.names()


def _sample(task: Task, n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if np.issubdtype(np.dtype(task.view.target_dtype), np.integer):
        outputs = torch.randn(n, 5, generator=g, dtype=torch.float64)
        # ids 1..4: 0 is a valid class but the padding id of a catalogue
        targets = torch.randint(1, 5, (n,), generator=g)
    else:
        outputs = torch.randn(n, 1, generator=g, dtype=torch.float64)
        targets = torch.randn(n, generator=g, dtype=torch.float64)
    return outputs, targets


@pytest.mark.parametrize("name", NAMES)
def test_every_metric_has_a_direction_and_defaults_are_its_own(name: str) -> None:
    task = get_task(name)
    assert task.name == name
    assert task.metrics, "a task scores at least one metric"
    assert all(d in ("max", "min") for d in task.metrics.values())
    assert task.default_quality_metric in task.metrics
    allowed = task.objective_metrics()
    assert set(allowed) == {f"valid_{m}" for m in task.metrics} | set(COST_METRICS)
    for metric, mode in task.default_objectives:
        assert allowed[metric] == mode
    assert task.view.target in task.view.arrays
    assert task.view.target not in task.view.inputs
    described = task.describe()
    assert described["metrics"] == dict(task.metrics)
    assert described["name"] == name


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_the_mean_of_a_per_example_loop(name: str) -> None:
    task = get_task(name)
    outputs, targets = _sample(task)
    # the loss of each example on its own, one at a time
    loop = [float(task.loss(outputs[i : i + 1], targets[i : i + 1])) for i in range(len(targets))]
    per_example = task.loss_per_example(outputs, targets)
    assert per_example.shape == (len(targets),)
    assert per_example.dtype == outputs.dtype
    torch.testing.assert_close(per_example, torch.tensor(loop, dtype=torch.float64))
    torch.testing.assert_close(task.loss(outputs, targets), per_example.mean())
    assert float(task.loss(outputs, targets)) == pytest.approx(sum(loop) / len(loop), rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_distillation_loss_is_zero_only_at_the_teacher(name: str) -> None:
    task = get_task(name)
    student, _ = _sample(task, seed=1)
    teacher, _ = _sample(task, seed=2)
    for temperature in (1.0, 2.0):
        same = task.distill_loss(student, student.clone(), temperature=temperature)
        assert float(same) == pytest.approx(0.0, abs=1e-12)
        other = task.distill_loss(student, teacher, temperature=temperature)
        assert float(other) > 0
        weighted = task.distill_loss(student, teacher, temperature=temperature, weight=0.25)
        assert float(weighted) == pytest.approx(0.25 * float(other), rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_kd_loss_combines_task_and_distillation(name: str) -> None:
    task = get_task(name)
    outputs, targets = _sample(task, seed=3)
    teacher, _ = _sample(task, seed=4)
    task_only = task.kd_loss(
        outputs, targets, None, temperature=2.0, alpha_distill=0.0, alpha_task=1.0
    )
    assert float(task_only) == pytest.approx(float(task.loss(outputs, targets)), rel=1e-12)
    both = task.kd_loss(
        outputs, targets, teacher, temperature=2.0, alpha_distill=0.7, alpha_task=0.3
    )
    expected = 0.3 * float(task.loss(outputs, targets)) + 0.7 * float(
        task.distill_loss(outputs, teacher, temperature=2.0)
    )
    assert float(both) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="teacher"):
        task.kd_loss(outputs, targets, None, temperature=2.0, alpha_distill=0.5, alpha_task=0.5)


@pytest.mark.parametrize("name", NAMES)
def test_baselines_on_a_planted_constant_target_are_perfect(name: str) -> None:
    """Planted: every train and test target is the same value, so a model-free baseline
    fitted on train is exactly right on test — every max metric 1, every min metric 0."""
    task = get_task(name)
    value = np.array([3], dtype=task.view.target_dtype)[0]
    train = np.full(20, value, dtype=task.view.target_dtype)
    test = np.full(7, value, dtype=task.view.target_dtype)
    t = task.view.target
    splits = {"train": {t: train}, "valid": {t: test}, "test": {t: test}}
    rows = task.baselines(splits, 5)
    assert rows
    for row in rows.values():
        assert set(task.metrics) <= set(row)
        for metric, direction in task.metrics.items():
            assert row[metric] == pytest.approx(1.0 if direction == "max" else 0.0, abs=1e-12)
    assert task.baselines(splits, 5) == rows


@pytest.mark.parametrize("name", NAMES)
def test_scoring_a_split_is_deterministic_and_complete(name: str) -> None:
    task = get_task(name)
    outputs, targets = _sample(task, n=40, seed=5)
    out, y = outputs.float().numpy(), targets.numpy().astype(task.view.target_dtype)
    first = task.score(out, {task.view.target: y})
    assert set(task.metrics) <= set(first)
    assert all(math.isfinite(first[m]) for m in task.metrics)
    assert task.score(out.copy(), {task.view.target: y.copy()}) == first


@pytest.mark.parametrize("name", NAMES)
def test_example_quality_is_per_example_float64(name: str) -> None:
    task = get_task(name)
    outputs, targets = _sample(task, seed=6)
    q = task.example_quality(outputs, targets)
    assert q.shape == (len(targets),) and q.dtype == torch.float64
    loop = [float(task.example_quality(outputs[i : i + 1], targets[i : i + 1])) for i in range(12)]
    assert q.tolist() == loop
