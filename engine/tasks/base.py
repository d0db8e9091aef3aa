"""The task contract, the :data:`TASKS` registry and :func:`get_task`.

A task says what a student is trained and scored on. Stages, trials, the teacher, the
importance methods and measurement ask the study's task — they never assume labels are classes.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from sweepcore.registry import Registry

__all__ = [
    "COST_METRICS",
    "DEFAULT_TASK",
    "TASKS",
    "DataView",
    "Direction",
    "Task",
    "TeacherTraining",
    "get_task",
    "metric_columns",
    "register_task",
    "softmax_distillation",
]

Direction = Literal["max", "min"]

# the study's task when the file names none (the first task; keeps old study files valid)
DEFAULT_TASK = "rating_classification"

# Metrics every trial reports whatever the task (cost of the built model), with directions.
COST_METRICS: Mapping[str, Direction] = {
    "gflops": "min",
    "params": "min",
    "weights_bytes": "min",
    "latency_ms_p50": "min",
}


@dataclass(frozen=True)
class TeacherTraining:
    """How the teacher is trained (:meth:`Task.teacher_training`): the arrays
    :func:`engine.train.train_classifier` reads (``input_ids``, ``attention_mask`` and the
    targets under ``labels``), the loss of ``(outputs, targets)`` and extra forward keywords."""

    arrays: Mapping[str, np.ndarray]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    forward_kwargs: Mapping[str, Any]


@dataclass(frozen=True)
class DataView:
    """What a split carries for this task.

    Attributes:
        arrays: the split's arrays the task reads (inputs first, the target last).
        target: which array holds the targets (class ids, item ids, ratings, ...).
        target_dtype: the dtype of a batch of targets (int64 for ids, float32 for values).
    """

    arrays: tuple[str, ...]
    target: str
    target_dtype: type

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(a for a in self.arrays if a != self.target)


class Task(ABC):
    """One task family. A subclass sets the class attributes and the abstract methods.

    ``outputs`` below are the model's output tensor (``.logits`` of an HF model): ``[B, C]``
    class logits, ``[B, items]`` catalogue scores, ``[B, 1]`` a predicted rating.
    """

    name: str = ""
    view: DataView
    #: metric name → direction; a split scores to exactly these keys
    metrics: Mapping[str, Direction]
    #: default ``search.objectives`` as ``(metric, mode)``; metrics are ``valid_<metric>``
    #: or a :data:`COST_METRICS` name
    default_objectives: tuple[tuple[str, Direction], ...]
    #: default ``report.quality_metric``
    default_quality_metric: str

    #: ``teacher:`` settings the task fills where the study file leaves them out (its
    #: default model; a model trained from scratch must train its embeddings)
    teacher_defaults: Mapping[str, Any] = MappingProxyType({"model": "embedded:all-MiniLM-L6-v2"})
    #: a tag of the task's own teacher objective (:meth:`teacher_training`), part of the
    #: teacher's cache key when set: change it when that objective changes
    teacher_recipe: str = ""
    #: where a run directory keeps each model's per-example table (:meth:`example_table`),
    #: e.g. ``"rankings"`` → ``rankings/<trial_id>.parquet``; None: the task writes none
    examples_dir: str | None = None

    # ------------------------------------------------------------------ the data
    def prepare(self, data: Any, model: str) -> Any:
        """The study's splits for this task (:class:`engine.data.PreparedData`) from its
        ``data:`` section (:class:`engine.data.DataConfig`); ``model`` is ``teacher.model``.

        Default: the review-text pipeline (:func:`engine.data.prepare_data`), tokenised with
        ``model``'s tokenizer."""
        from engine.data import prepare_data
        from engine.models import resolve_model_path

        return prepare_data(data, resolve_model_path(model))

    def study_problems(self, study: Any) -> list[str]:
        """Why this task cannot run ``study`` (:class:`engine.config.StudyConfig`), as
        ``"<field>: <problem>"`` lines checked before any Ray work; default: whether
        ``teacher.model`` can be loaded here (:func:`engine.models.model_source_problem`)."""
        from engine.models import model_source_problem

        problem = model_source_problem(study.teacher.model)
        return [] if problem is None else [f"teacher.model: {problem}"]

    # ------------------------------------------------------------------ the model head
    def head_outputs(self, num_labels: int) -> int:
        """The head's width given the data's count of distinct targets (``num_labels``:
        classes, or catalogue items); 1 for a task that predicts one value."""
        return num_labels

    @abstractmethod
    def build_model(
        self, name: str, num_outputs: int, *, attn_implementation: str = "sdpa", seed: int = 0
    ) -> PreTrainedModel:
        """The pretrained backbone ``name`` with a fresh head of ``num_outputs`` outputs."""

    @abstractmethod
    def model_from_config(self, config: dict[str, Any]) -> PreTrainedModel:
        """An untrained model of this task's head from an HF config dict (weights loaded after)."""

    def teacher_training(self, train: Mapping[str, np.ndarray]) -> TeacherTraining:
        """The teacher's training objective on the train split: by default the task loss
        on the data view's arrays (a task may train its teacher on more targets per example,
        e.g. every position of a sequence)."""
        arrays = {k: train[k] for k in self.view.arrays}
        if self.view.target != "labels":
            arrays["labels"] = arrays.pop(self.view.target)
        return TeacherTraining(arrays, self.loss, {})

    def init_head(self, model: PreTrainedModel, train: Mapping[str, np.ndarray]) -> None:
        """Set the fresh head of :meth:`build_model` from the train split before the teacher
        is fine-tuned (e.g. a regression output's bias to the target mean, a text
        recommender's catalogue); the default leaves the head as built."""
        return None

    def teacher_inputs(self, train: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Arrays of the train split besides the data view's that shape the teacher (e.g. a
        catalogue's title vectors): they enter the teacher's cache key; default none."""
        return {}

    def bind_split(self, model: PreTrainedModel, split: Mapping[str, np.ndarray]) -> Any:
        """A context manager under which ``model`` scores ``split`` (e.g. a text recommender
        scores another domain's catalogue); the default changes nothing."""
        return contextlib.nullcontext()

    def target_embeddings(
        self, model: PreTrainedModel, targets: torch.Tensor
    ) -> torch.Tensor | None:
        """A vector per target in the model's hidden space when targets are things the model
        embeds (a next item: its input embedding or title vector), so an importance method
        may estimate I(layer state; target vector) (``mutual_info``); None (the default) for
        class ids and values."""
        return None

    # ------------------------------------------------------------------ losses
    @abstractmethod
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The task loss, mean over the batch (what the teacher is fine-tuned on)."""

    @abstractmethod
    def loss_per_example(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The task loss of each example ``[B]``, in the dtype of ``outputs``."""

    @abstractmethod
    def distill_loss(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        *,
        temperature: float,
        weight: float = 1.0,
    ) -> torch.Tensor:
        """``weight`` × the distance of the student's outputs from the teacher's (mean over
        the batch); zero when they are equal."""

    def kd_loss(
        self,
        student: torch.Tensor,
        targets: torch.Tensor,
        teacher: torch.Tensor | None,
        *,
        temperature: float,
        alpha_distill: float,
        alpha_task: float,
    ) -> torch.Tensor:
        """``alpha_task`` · task loss + ``alpha_distill`` · distillation loss; the task loss
        alone when ``alpha_distill == 0``."""
        loss = alpha_task * self.loss(student, targets)
        if alpha_distill > 0:
            if teacher is None:
                raise ValueError("alpha_distill > 0 needs teacher logits")
            loss = loss + self.distill_loss(
                student, teacher, temperature=temperature, weight=alpha_distill
            )
        return loss

    # ------------------------------------------------------------------ importance hooks
    @abstractmethod
    def example_quality(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-example quality ``[B]`` (float64, higher = better): what a layer's removal
        costs in the task's own terms (correct = 1 for classification)."""

    def attribution_target(self, targets: torch.Tensor) -> torch.Tensor | int:
        """Which output an attribution method explains per example (default: the first)."""
        return 0

    # ------------------------------------------------------------------ scoring
    @abstractmethod
    def score(self, outputs: np.ndarray, split: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Every metric in :attr:`metrics` on one split, from the model's outputs ``[N, ...]``
        and the split's arrays (the targets are ``split[self.view.target]``; a task may read
        more, e.g. the items a user has already seen). Extra non-metric keys (e.g. the
        ranking protocol) become columns too."""

    @abstractmethod
    def baselines(
        self, splits: Mapping[str, Mapping[str, np.ndarray]], num_outputs: int
    ) -> dict[str, dict[str, Any]]:
        """Reference rows (no model): baseline name → its metrics on ``splits["test"]``
        (plain names) and on ``splits["valid"]`` when the baseline scores it (``valid_``
        names). ``splits`` holds ``train``, ``valid`` and ``test``."""

    def example_table(self, outputs: np.ndarray, split: Mapping[str, np.ndarray]) -> Any:
        """One row per example of a scored split (a :class:`pyarrow.Table`) from which every
        metric can be recomputed without the model, written under :attr:`examples_dir`;
        None (the default): nothing is written."""
        return None

    # ------------------------------------------------------------------ derived
    def objective_metrics(self) -> dict[str, Direction]:
        """What ``search.objectives`` may name: ``valid_<metric>`` and the cost metrics."""
        return {**{f"valid_{m}": d for m, d in self.metrics.items()}, **COST_METRICS}

    def describe(self) -> dict[str, Any]:
        """What the run directory's manifest says about the task (``manifest["task"]``)."""
        return {
            "name": self.name,
            "target": self.view.target,
            "metrics": dict(self.metrics),
            "objectives": [list(o) for o in self.default_objectives],
            "quality_metric": self.default_quality_metric,
        }


def softmax_distillation(
    student: torch.Tensor, teacher: torch.Tensor, *, temperature: float, weight: float = 1.0
) -> torch.Tensor:
    """Hinton et al. (2015): ``weight · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))``, mean
    over the batch; the T² keeps the soft-target gradients on the hard-target scale."""
    t = temperature
    log_p_s = F.log_softmax(student / t, dim=-1)
    log_p_t = F.log_softmax(teacher / t, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")
    return weight * t * t * kl  # this order of products: results stay bit-identical


def metric_columns(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A split's scores as result columns named ``<prefix><metric>``: numbers as floats,
    labels (e.g. ``ranking = "full"``) as they are."""
    return {f"{prefix}{k}": v if isinstance(v, str) else float(v) for k, v in metrics.items()}


TASKS: Registry[Any] = Registry("task")


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Register a :class:`Task` subclass under ``name`` (one instance is kept)."""

    def deco(cls: type[Task]) -> type[Task]:
        cls.name = name
        unknown = [m for m, d in cls.metrics.items() if d not in ("max", "min")]
        if unknown:
            raise ValueError(f"task {name!r}: metrics {unknown} need a direction 'max'/'min'")
        TASKS.register(name)(cls())
        return cls

    return deco


def get_task(task: str | Task) -> Task:
    """The registered task ``task`` names (a :class:`Task` is returned as is)."""
    return task if isinstance(task, Task) else TASKS.get(task)
