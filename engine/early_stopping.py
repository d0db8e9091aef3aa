"""Early stopping of the teacher on validation quality, with the best weights restored.

``teacher.early_stopping`` (:class:`EarlyStopping`; on by default for the ``next_item`` task,
off elsewhere unless a study sets it) turns the teacher's ``epochs`` / ``max_steps`` into a
budget: every ``eval_every_steps`` optimizer steps (default: once an epoch) and at the last
step, :class:`Monitor` scores the model on a fixed validation subset (the first
``eval_examples`` rows of the valid split, which the data step orders by a hash of each row,
so a seeded, unbiased choice) with the task's report metric (``default_quality_metric``:
accuracy, RMSE, NDCG@10); after ``patience`` evaluations in a row without an improvement of
more than ``min_delta``, training stops (:class:`engine.train.StopTraining`). The weights of
the best evaluation are restored. :meth:`Monitor.summary` is what the manifest and the report
show: the budget, the steps and epochs run, the best step and epoch and every evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import Field

from engine.configbase import Section
from engine.train import StopTraining

__all__ = ["EarlyStopping", "Monitor", "selection_subset"]


class EarlyStopping(Section):
    """``teacher.early_stopping``: model selection on validation (module docstring)."""

    patience: int = Field(3, ge=1)  # evaluations without improvement before stopping
    eval_every_steps: int | None = Field(None, ge=1)  # None: once an epoch
    eval_examples: int | None = Field(1024, ge=1)  # the validation subset; None: all of it
    min_delta: float = Field(0.0, ge=0)  # a smaller change is no improvement


def selection_subset(valid: dict[str, np.ndarray], size: int | None) -> dict[str, np.ndarray]:
    """The first ``size`` rows of every valid array (all of them when None or fewer)."""
    n = len(valid["labels"])
    if size is None or size >= n:
        return valid
    return {k: v[:size] for k, v in valid.items()}


@dataclass
class Monitor:
    """Watches a training run (as its ``on_step``) and keeps the best weights."""

    model: torch.nn.Module
    valid: dict[str, np.ndarray]
    task: Any  # engine.tasks.Task
    cfg: EarlyStopping
    every: int  # steps between evaluations
    total: int  # the budget's last step
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    evals: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    best_value: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    stopped_at: int | None = None

    @property
    def metric(self) -> str:
        return self.task.default_quality_metric

    def _better(self, value: float) -> bool:
        if self.best_value is None:
            return math.isfinite(value)
        gain = (
            value - self.best_value
            if self.task.metrics[self.metric] == "max"
            else (self.best_value - value)
        )
        return gain > self.cfg.min_delta

    def evaluate(self, step: int) -> None:
        """Score the model at ``step``; keep its weights when they are the best so far."""
        from engine.measure import evaluate

        _, metrics = evaluate(
            self.model,
            self.valid,
            task=self.task,
            batch_size=128,
            device=self.device,
            autocast_dtype=self.autocast_dtype,
        )
        value = float(metrics[self.metric])
        self.evals.append((step, value))
        if self._better(value):
            self.best_step, self.best_value = step, value
            self.best_state = {
                k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
            }

    def __call__(self, step: int, loss: float) -> None:
        if step % self.every and step != self.total:
            return
        self.evaluate(step)
        since = sum(1 for s, _ in self.evals if self.best_step is not None and s > self.best_step)
        if since >= self.cfg.patience and step < self.total:
            self.stopped_at = step
            raise StopTraining

    def restore(self) -> None:
        """Put the best evaluation's weights back into the model."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    def summary(self, steps_per_epoch: int) -> dict[str, Any]:
        """What the manifest and the report say of the run (module docstring)."""
        run = self.stopped_at if self.stopped_at is not None else self.total

        def epochs(step: int | None) -> float | None:
            return None if step is None else round(step / steps_per_epoch, 3)

        return {
            "selection_metric": f"valid_{self.metric}",
            "selection_examples": len(self.valid["labels"]),
            "patience": self.cfg.patience,
            "eval_every_steps": self.every,
            "budget_steps": self.total,
            "budget_epochs": epochs(self.total),
            "steps_run": run,
            "epochs_run": epochs(run),
            "stopped_early": self.stopped_at is not None,
            "best_step": self.best_step,
            "best_epoch": epochs(self.best_step),
            "best_value": self.best_value,
            "evaluations": [[s, v] for s, v in self.evals],
        }
