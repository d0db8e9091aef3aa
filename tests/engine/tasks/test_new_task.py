"""A second task fits without touching stages or trials: a rating-regression task defined
and registered here (not shipped) runs through the real teacher fine-tuning, the distill
stage inside ``engine.trial.build_student``, ``engine.assess``, the importance methods and
the study validation.

Regression has one float output, so nothing class-shaped can pass silently: cross-entropy on
``[B, 1]`` outputs against float targets raises, and a classification scorer would report
``accuracy``, not ``rmse``.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForSequenceClassification

from engine.assess import assess
from engine.config import ConfigError, StudyConfig, validate
from engine.importance.compute import score_methods
from engine.importance.config import ImportanceConfig
from engine.importance.runner import calibration_batches
from engine.measure import evaluate
from engine.tasks import TASKS, DataView, Task, get_task, register_task
from engine.teacher import TeacherConfig, finetune, load_model
from engine.trial import SharedInputs, build_student
from tests.conftest import tiny_bert

NAME = "test_rating_regression"


class RatingRegression(Task):
    """Predict the rating as a number: MSE loss, RMSE (min), distillation = MSE to the
    teacher's prediction, baseline = the training mean."""

    view = DataView(("input_ids", "attention_mask", "labels"), "labels", np.float32)
    metrics = MappingProxyType({"rmse": "min"})
    default_objectives = (("valid_rmse", "min"), ("gflops", "min"))
    default_quality_metric = "rmse"

    def head_outputs(self, num_labels):
        return 1

    def build_model(self, name, num_outputs, *, attn_implementation="sdpa", seed=0):
        return tiny_bert(num_layers=2, num_labels=num_outputs, seed=seed).train()

    def model_from_config(self, config):
        return AutoModelForSequenceClassification.from_config(AutoConfig.for_model(**config))

    def loss(self, outputs, targets):
        return F.mse_loss(outputs.squeeze(-1), targets.to(outputs.dtype))

    def loss_per_example(self, outputs, targets):
        return (outputs.squeeze(-1) - targets.to(outputs.dtype)).pow(2)

    def distill_loss(self, student, teacher, *, temperature, weight=1.0):
        return weight * F.mse_loss(student.squeeze(-1), teacher.squeeze(-1).to(student.dtype))

    def example_quality(self, outputs, targets):
        return -(outputs.squeeze(-1).double() - targets.double()).pow(2)

    def score(self, outputs, split):
        targets = split["labels"]
        err = np.asarray(outputs, np.float64).reshape(-1) - np.asarray(targets, np.float64)
        return {"rmse": float(np.sqrt(np.mean(err**2)))}

    def baselines(self, splits, num_outputs):
        mean = float(np.mean(np.asarray(splits["train"]["labels"], np.float64)))
        test = splits["test"]
        return {"mean": self.score(np.full(len(test["labels"]), mean), test)}


if NAME not in TASKS:
    register_task(NAME)(RatingRegression)
TASK = get_task(NAME)


def _split(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 200, (n, 10)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[: n // 2, 7:] = 0
    ids[mask == 0] = 0
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": rng.integers(1, 6, n).astype(np.float32),
    }


def _rmse_by_hand(model: torch.nn.Module, data: dict[str, np.ndarray]) -> float:
    """One example at a time, the squared error summed in Python."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(len(data["labels"])):
            out = model(
                input_ids=torch.as_tensor(data["input_ids"][i : i + 1]),
                attention_mask=torch.as_tensor(data["attention_mask"][i : i + 1]),
            ).logits
            total += (float(out[0, 0]) - float(data["labels"][i])) ** 2
    return math.sqrt(total / len(data["labels"]))


@pytest.fixture(scope="module")
def teacher():
    splits = {"train": _split(32, 0), "valid": _split(16, 1), "test": _split(16, 2)}
    cfg = TeacherConfig(max_steps=4, batch_size=8, lr=1e-3, warmup_ratio=0.0)
    art = finetune(
        cfg, splits["train"], {"valid": splits["valid"], "test": splits["test"]}, 1,
        key="regression", threads=1, task=NAME,
    )  # fmt: skip
    return art, splits


def _study(**pipeline) -> StudyConfig:
    return StudyConfig.model_validate(
        {
            "name": "regression",
            "description": "a rating-regression task defined in a test",
            "task": NAME,
            "data": {"max_length": 10},
            "pipeline": pipeline,
            "measure": {"latency_repeats": 1, "warmup": 0, "batch_size": 4},
        }
    )


def test_teacher_finetunes_and_scores_with_the_task(teacher) -> None:
    art, splits = teacher
    assert set(art.metrics) >= {"valid_rmse", "test_rmse"}
    assert not any("accuracy" in k or "f1" in k for k in art.metrics)
    assert art.train_logits.shape == (32, 1)
    assert TASK.head_outputs(5) == 1  # five rating values, one predicted number
    model = load_model(art.config, art.state_dict, NAME)
    assert art.metrics["test_rmse"] == pytest.approx(_rmse_by_hand(model, splits["test"]), rel=1e-5)


def test_evaluate_asks_the_task_to_score(teacher) -> None:
    art, splits = teacher
    model = load_model(art.config, art.state_dict, NAME)
    outputs, metrics = evaluate(model, splits["valid"], task=NAME, batch_size=5, device="cpu")
    assert outputs.shape == (16, 1)
    assert metrics == {"rmse": pytest.approx(_rmse_by_hand(model, splits["valid"]), rel=1e-5)}


def test_distill_stage_in_a_trial_then_assess(teacher) -> None:
    art, splits = teacher
    study = _study(order=["distill"], distill={"epochs": 2, "batch_size": 8, "lr": 1e-3})
    assert [o.metric for o in study.search.objectives] == ["valid_rmse", "gflops"]
    assert study.report.quality_metric == "rmse"
    shared = SharedInputs(art.config, art.state_dict, art.train_logits, splits, 1, {})
    model, record = build_student(study, shared, seed=0, device=torch.device("cpu"))
    assert record["distill"]["steps"] == 2 * 4
    assert math.isfinite(record["distill"]["final_loss"])
    teacher_model = load_model(art.config, art.state_dict, NAME)
    moved = any(
        not torch.equal(a, b)
        for a, b in zip(
            model.state_dict().values(), teacher_model.state_dict().values(), strict=True
        )
    )
    assert moved, "the distill stage trained the student"
    row = assess(
        model, {"valid": splits["valid"], "test": splits["test"]}, study, torch.device("cpu")
    )
    assert row["rmse"] == pytest.approx(_rmse_by_hand(model, splits["test"]), rel=1e-5)
    assert row["valid_rmse"] == pytest.approx(_rmse_by_hand(model, splits["valid"]), rel=1e-5)
    assert "accuracy" not in row and row["gflops"] > 0


def test_kd_loss_is_mse_to_the_teacher_prediction() -> None:
    s = torch.tensor([[1.0], [2.0], [4.0]])
    t = torch.tensor([[1.5], [2.0], [3.0]])
    y = torch.tensor([1.0, 3.0, 4.0])
    got = TASK.kd_loss(s, y, t, temperature=4.0, alpha_distill=0.5, alpha_task=2.0)
    task = (0.0 + 1.0 + 0.0) / 3
    distill = (0.25 + 0.0 + 1.0) / 3
    assert float(got) == pytest.approx(2.0 * task + 0.5 * distill)


def test_importance_methods_use_the_task_loss(teacher) -> None:
    art, splits = teacher
    model = load_model(art.config, art.state_dict, NAME)
    cfg = ImportanceConfig(methods=("fisher", "ablation"), num_batches=2, batch_size=8, task=NAME)
    batches = [
        {k: torch.from_numpy(v) for k, v in b.items()}
        for b in calibration_batches(splits["train"], cfg)
    ]
    assert batches[0]["labels"].dtype == torch.float32  # targets keep the task's dtype
    scores = score_methods(model, batches, cfg.methods, cfg)
    for m in ("fisher", "ablation"):
        assert len(scores[m].scores) == 2 and np.isfinite(scores[m].scores).all()


def test_validation_takes_objectives_and_quality_from_the_task() -> None:
    raw = {"name": "r", "description": "d", "task": NAME, "pipeline": {"order": ["distill"]}}
    cfg = validate(raw, "r.yaml")
    assert cfg.importance.task == NAME
    bad = {**raw, "search": {"objectives": [{"metric": "valid_accuracy", "mode": "max"}]}}
    with pytest.raises(ConfigError) as err:
        validate({**bad, "report": {"quality_metric": "accuracy"}}, "r.yaml")
    text = str(err.value)
    assert "search.objectives.0.metric: 'valid_accuracy' is not a metric of task" in text
    assert "allowed: valid_rmse, gflops" in text
    assert "report.quality_metric: 'accuracy'" in text
