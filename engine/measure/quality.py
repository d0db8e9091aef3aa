"""Evaluation of a model on a split, for any task.

:func:`evaluate` runs the model and asks the study's task (:mod:`engine.tasks`) to score its
outputs; a task's own metrics live in its module (accuracy and macro-F1 in
:mod:`engine.tasks.rating_classification`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engine.device import autocast
from engine.tasks import DEFAULT_TASK, Task, get_task

__all__ = ["evaluate"]


def evaluate(
    model: nn.Module,
    data: dict[str, np.ndarray],
    *,
    task: str | Task = DEFAULT_TASK,
    batch_size: int,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Run ``model`` over ``data`` (the arrays of ``task``'s data view), under autocast to
    ``autocast_dtype`` when given (:mod:`engine.device`).

    Returns the float32 outputs ``[n, ...]`` and ``task.score`` on them (for classification:
    logits ``[n, C]`` and
    :func:`engine.tasks.rating_classification.classification_metrics`).
    """
    task = get_task(task)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(data["input_ids"])
    if n == 0:
        raise ValueError("no examples to evaluate")
    device = torch.device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    try:
        with (
            task.bind_split(model, data),
            torch.inference_mode(),
            autocast(device, autocast_dtype),
        ):
            for s in range(0, n, batch_size):
                ids = torch.as_tensor(data["input_ids"][s : s + batch_size], device=device)
                mask = torch.as_tensor(data["attention_mask"][s : s + batch_size], device=device)
                out.append(model(input_ids=ids, attention_mask=mask).logits.float().cpu())
    finally:
        model.train(was_training)
    outputs = torch.cat(out).numpy()
    return outputs, task.score(outputs, data)
