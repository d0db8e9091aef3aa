"""Tasks: what a student is trained and scored on: ``rating_classification``,
``rating_regression`` (:mod:`engine.tasks.rating_regression`) and ``next_item``.

Extension point — one class per task, registered under its name::

    @register_task("rating_regression")
    class RatingRegression(Task):
        view = DataView(("input_ids", "attention_mask", "labels"), "labels", np.float32)
        metrics = {"rmse": "min"}
        default_objectives = (("valid_rmse", "min"), ("gflops", "min"))
        default_quality_metric = "rmse"

        def loss(self, outputs, targets):
            return F.mse_loss(outputs.squeeze(-1), targets)
        ...  # build_model, model_from_config, loss_per_example, distill_loss,
             # example_quality, score, baselines (see engine.tasks.base.Task)

A task declares the data view it reads (which arrays, which holds the targets), its model
head, the task loss (batch mean and per example), the distillation loss (``kd_loss`` combines
them: ``alpha_task`` · task + ``alpha_distill`` · distillation), its metrics with directions
and how a split is scored (``score(outputs, split)``: the whole split, e.g. a ranking's seen
items), reference baseline rows (rows of ``results.parquet`` with ``status = "reference"``),
and default objectives. Optional hooks: ``prepare`` (the task's own splits: next_item reads
interaction sequences), ``study_problems`` (one-line checks before any Ray work),
``teacher_defaults``, ``teacher_training`` (the teacher's own objective, keyed by
``teacher_recipe``), ``teacher_inputs`` (train arrays beside the view's that shape the
teacher, in its cache key), ``init_head`` (the fresh model from the train split),
``bind_split`` (how a model scores one split, e.g. another domain's catalogue),
``target_embeddings`` (a vector per target for ``mutual_info``), ``example_table`` +
``examples_dir`` (per-example rows written for every model: ``rankings/``, ``predictions/``). Everything else
asks the study's task (``study.task`` → :func:`get_task`): the teacher's fine-tuning,
evaluation (:func:`engine.measure.evaluate`), the stages' losses (``ctx.task``), the
importance methods' losses (``ImportanceConfig.task``), the validation of objective and
report metrics, the manifest's baselines and ``manifest["task"]``.
"""

from __future__ import annotations

# importing the task modules registers them
from engine.tasks import next_item, rating_classification, rating_regression  # noqa: F401
from engine.tasks.base import (
    COST_METRICS,
    DEFAULT_TASK,
    TASKS,
    DataView,
    Task,
    TeacherTraining,
    get_task,
    metric_columns,
    register_task,
)

__all__ = [
    "COST_METRICS",
    "DEFAULT_TASK",
    "TASKS",
    "DataView",
    "Task",
    "TeacherTraining",
    "get_task",
    "metric_columns",
    "register_task",
]
