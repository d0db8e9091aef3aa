"""The pipeline section derived from the stage registry keeps the keys, defaults and
section order the hand-written ``PipelineConfig`` had before stages declared their own."""

from __future__ import annotations

from engine.compress.pipeline import order_problems, pipeline_config, resumable
from engine.config import PipelineConfig, StudyConfig

# the defaults as engine/config.py spelled them out before the renovation
BEFORE = {
    "order": ("truncate", "distill"),
    "truncate": {"keep_layers": None, "keep_ratio": 0.5, "strategy": "fisher"},
    "distill": {
        "kd": True, "temperature": 2.0, "alpha_distill": 0.5, "alpha_task": 0.5,
        "epochs": 1.0, "max_steps": None, "lr": 1e-4, "batch_size": 32, "weight_decay": 0.01,
        "warmup_ratio": 0.1, "freeze_embeddings": True, "alpha_hidden": 0.0,
        "alpha_attention": 0.0, "layer_map": None, "teacher_weights": None, "teachers": None,
    },
    "prune": {
        # criterion and recovery_lr changed on purpose (issue 18: weight-Taylor and 3e-4 measured
        # best; "auto" is magnitude for the masked methods)
        "method": "structured", "criterion": "auto", "head_sparsity": 0.25,
        "neuron_sparsity": 0.25, "weight_sparsity": 0.5, "initial_sparsity": 0.0,
        "exponent": 3.0, "steps": 0, "prune_every": 1, "score_batches": 4,
        "head_ranking": "global",  # added later (issue 18); default keeps the old global ranking
        "reconstruct": "none",  # added later (issue 18, a flag at first); off: no refit, as before
        "neuron_ranking": "per_layer",  # added later (issue 18); uniform widths, as before
        "lr": 1e-4,
        "batch_size": 32, "weight_decay": 0.01, "kd": True, "temperature": 2.0,
        "alpha_distill": 0.5, "alpha_task": 0.5, "recovery_steps": 0, "recovery_lr": 3e-4,
        "recovery_warmup_ratio": 0.1, "freeze_embeddings": True,
    },
    "quantize": {
        "backend": "auto", "bits": 8, "quant_type": "nf4", "compute_dtype": "bfloat16",
        "int8_threshold": 6.0, "skip_classifier": True,
    },
    "early_exit": {
        "exit_layers": None, "threshold": 0.9, "thresholds": (0.5, 0.7, 0.8, 0.9, 0.95, 0.99),
        "steps": 200, "lr": 1e-3, "batch_size": 32, "kd": True, "temperature": 2.0,
        "alpha_distill": 0.5, "alpha_task": 0.5,
    },
}  # fmt: skip
TEACHER_BEFORE = {
    "epochs": 2.0, "max_steps": None, "lr": 1e-4, "batch_size": 32, "weight_decay": 0.01,
    "warmup_ratio": 0.1, "freeze_embeddings": True, "seed": 0,
}  # fmt: skip


def test_derived_pipeline_keeps_every_key_and_default() -> None:
    dumped = PipelineConfig().model_dump()
    assert list(dumped) == list(BEFORE)  # section order: order, then the stages as before
    for section, values in BEFORE.items():
        assert dumped[section] == values, section
    assert pipeline_config() is PipelineConfig  # no stage registered since import


def test_teacher_keeps_its_fine_tuning_defaults() -> None:
    teacher = StudyConfig(name="x", description="y").teacher.model_dump()
    assert {k: teacher[k] for k in TEACHER_BEFORE} == TEACHER_BEFORE
    assert set(teacher) == {*TEACHER_BEFORE, "model", "ensemble", "early_stopping"}
    assert teacher["ensemble"] is None  # one teacher unless a study asks for an ensemble
    assert teacher["early_stopping"] is None  # the whole budget unless the study (task) asks


def test_placement_rules_and_resumable_stages_as_before() -> None:
    assert [resumable(n) for n in BEFORE if n != "order"] == [False, True, True, False, True]
    assert not resumable("no_such_stage")
    assert order_problems(["truncate", "distill", "prune", "quantize"]) == []
    assert order_problems(["truncate", "prune", "early_exit"]) == []
    for bad in (["quantize", "distill"], ["early_exit", "prune"], ["early_exit", "quantize"],
                ["quantize", "early_exit"]):  # fmt: skip
        assert order_problems(bad), bad


def test_a_stage_on_a_task_it_does_not_declare_is_one_error_wherever_the_order_is() -> None:
    """``early_exit`` declares the classification task (it exits on softmax confidence): a
    regression or next-item study that runs it — as its order, in a search arm or among
    searched orders — gets one line naming the stage, its tasks and the study's."""
    import pytest

    from engine.config import ConfigError, load_study

    orders = [
        ["pipeline.order=[truncate,distill,early_exit]"],
        ["search.extra=[{pipeline.order: [truncate, distill, early_exit]}]"],
        ["search.space={pipeline.order: [[truncate, distill], [distill, early_exit]]}"],
    ]
    for study, task in (("rating", "rating_regression"), ("smoke-rec", "next_item")):
        for override in orders:
            with pytest.raises(ConfigError) as e:
                load_study(study, override)
            lines = [p for p in e.value.problems if "early_exit compresses" in p]
            assert lines == [
                f"sweeps/{study}.yaml: pipeline.order: early_exit compresses "
                "rating_classification models only (it exits on a classifier's softmax "
                f"confidence at [CLS]), not {task}"
            ], (study, override, e.value.problems)
    load_study("smoke", ["pipeline.order=[truncate,distill,early_exit]"])  # classification


def test_no_task_module_names_a_stage() -> None:
    """Which tasks a stage serves is the stage's declaration (``Stage.tasks``), not a task's
    knowledge: no registered stage's name appears as a string in ``engine/tasks``."""
    import ast
    from pathlib import Path

    from engine.compress.base import STAGES

    root = Path(__file__).resolve().parents[3] / "engine" / "tasks"
    named = {
        (f.name, node.value)
        for f in root.glob("*.py")
        for node in ast.walk(ast.parse(f.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and any(f"{s}" == node.value or f"pipeline.{s}" in node.value for s in STAGES.names())
    }  # fmt: skip
    assert named == set()
