"""The compression-stage contract: ``apply(model, cfg, ctx) -> model``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from engine.checkpoint import StageResume
from engine.importance.base import LayerScores
from engine.tasks import DEFAULT_TASK, Task, get_task
from engine.train import OomLog
from sweepcore.registry import Registry

__all__ = ["STAGES", "StageContext", "StageFn", "register_stage"]


@dataclass
class StageContext:
    """What a stage may use besides the model it transforms.

    Attributes:
        teacher: the fine-tuned teacher (eval mode; never modified).
        train: training tensors {"input_ids", "attention_mask", "labels"} (CPU).
        teacher_logits: the teacher's logits on ``train``, computed once per study.
        importance: method name → LayerScores of the teacher's layers.
        seed: the trial seed.
        device: where to run.
        autocast_dtype: the dtype training and evaluation forwards autocast to (None =
            float32), from ``resources.precision`` (:mod:`engine.device`).
        oom: out-of-memory retries of the stages' training (:class:`engine.train.OomLog`).
        threads: torch intra-op threads for this trial.
        record: what the stages did (written to results and the model's JSON).
        extras: objects stages hand to later ones (e.g. pruning masks, the float model
            before quantization); not written anywhere.
        resume: the trial checkpoint this stage continues from (set by the trial for the
            stage in progress only; :class:`engine.checkpoint.StageResume`), else None.
    """

    teacher: PreTrainedModel
    train: dict[str, torch.Tensor]
    teacher_logits: torch.Tensor
    importance: dict[str, LayerScores]
    seed: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast_dtype: torch.dtype | None = None
    oom: OomLog = field(default_factory=OomLog)
    record: dict[str, Any] = field(default_factory=dict)
    report: Callable[[dict[str, float]], None] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    resume: StageResume | None = None
    task: Task = field(default_factory=lambda: get_task(DEFAULT_TASK))  # the study's task


StageFn = Callable[[PreTrainedModel, Any, StageContext], PreTrainedModel]

STAGES: Registry[StageFn] = Registry("compression stage")


def register_stage(name: str) -> Callable[[StageFn], StageFn]:
    return STAGES.register(name)
