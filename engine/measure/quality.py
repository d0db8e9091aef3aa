"""Evaluation of a model on a split (task-generic), and the classification task's metrics.

:func:`evaluate` runs the model and asks the study's task (:mod:`engine.tasks`) to score its
outputs. The rest are the helpers of ``rating_classification``: accuracy and macro-F1, the
majority-class baseline.

Macro-F1 follows scikit-learn's default ``f1_score(average="macro")``: the unweighted mean of
per-class F1 over the classes present in ``labels ∪ predictions``. A class that is neither a
true label nor ever predicted is left out (it has no F1 to speak of); a class that occurs in
one but not the other scores F1 = 0. Implemented with a confusion matrix so the engine does
not depend on scikit-learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from engine.tasks.base import DEFAULT_TASK, Task

__all__ = ["classification_metrics", "confusion_matrix", "evaluate", "majority_baseline"]


def _as_preds(logits_or_preds: Any) -> np.ndarray:
    arr = np.asarray(
        logits_or_preds.detach().cpu()
        if isinstance(logits_or_preds, torch.Tensor)
        else logits_or_preds
    )
    if arr.ndim == 2:
        return arr.argmax(axis=1)
    if arr.ndim == 1:
        return arr.astype(np.int64)
    raise ValueError(f"expected logits [n, classes] or predictions [n], got shape {arr.shape}")


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> np.ndarray:
    """``num_labels × num_labels`` counts, rows = true label, columns = prediction."""
    for name, arr in (("labels", labels), ("predictions", preds)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_labels):
            raise ValueError(f"{name} must lie in [0, {num_labels}), got {arr.min()}..{arr.max()}")
    flat = labels.astype(np.int64) * num_labels + preds.astype(np.int64)
    return np.bincount(flat, minlength=num_labels**2).reshape(num_labels, num_labels)


def classification_metrics(logits_or_preds: Any, labels: Any, num_labels: int) -> dict[str, float]:
    """``{"accuracy", "macro_f1"}`` from logits ``[n, C]`` (argmax) or integer predictions."""
    preds = _as_preds(logits_or_preds)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if preds.shape != y.shape:
        raise ValueError(f"{preds.shape[0]} predictions for {y.shape[0]} labels")
    if y.size == 0:
        raise ValueError("no examples to score")
    cm = confusion_matrix(preds, y, num_labels)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)  # true count per class
    predicted = cm.sum(axis=0)
    present = (support + predicted) > 0
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (support + predicted); denominator > 0 where present
    f1 = 2 * tp[present] / (support[present] + predicted[present])
    return {"accuracy": float(tp.sum() / y.size), "macro_f1": float(f1.mean())}


def majority_baseline(train_labels: Any, test_labels: Any, num_labels: int) -> dict[str, float]:
    """Metrics on ``test_labels`` of always predicting the most frequent training label.

    Ties go to the smallest label index.
    """
    train = np.asarray(train_labels).astype(np.int64).reshape(-1)
    if train.size == 0:
        raise ValueError("no training labels")
    majority = int(np.bincount(train, minlength=num_labels).argmax())
    test = np.asarray(test_labels).astype(np.int64).reshape(-1)
    return classification_metrics(np.full_like(test, majority), test, num_labels)


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
    logits ``[n, C]`` and :func:`classification_metrics`).
    """
    from engine.device import autocast
    from engine.tasks import get_task

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
        with torch.inference_mode(), autocast(device, autocast_dtype):
            for s in range(0, n, batch_size):
                ids = torch.as_tensor(data["input_ids"][s : s + batch_size], device=device)
                mask = torch.as_tensor(data["attention_mask"][s : s + batch_size], device=device)
                out.append(model(input_ids=ids, attention_mask=mask).logits.float().cpu())
    finally:
        model.train(was_training)
    outputs = torch.cat(out).numpy()
    return outputs, task.score(outputs, data[task.view.target])
