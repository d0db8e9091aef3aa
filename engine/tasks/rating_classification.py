"""``rating_classification``: a review's rating as one of C classes.

* data view: ``input_ids``, ``attention_mask`` and integer class ``labels`` in ``[0, C)``;
* head: a sequence-classification head with C logits (:func:`engine.models.build_classifier`);
* task loss: cross-entropy ``CE(z, y)``; per example with ``reduction="none"``;
* distillation (Hinton et al. 2015): ``T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))``, the T²
  keeping the soft-target gradients on the hard-target scale when T changes;
* metrics: accuracy and macro-F1 (both max), from the argmax of the logits
  (:func:`classification_metrics`);
* baseline: always predicting the most frequent training class (``majority``);
* objectives: ``valid_accuracy`` (max) and ``gflops`` (min); report quality: accuracy.

Macro-F1 follows scikit-learn's default ``f1_score(average="macro")``: the unweighted mean of
per-class F1 over the classes present in ``labels ∪ predictions``. A class that is neither a
true label nor ever predicted is left out (it has no F1 to speak of); a class that occurs in
one but not the other scores F1 = 0. Implemented with a confusion matrix so the engine does
not depend on scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from engine.models import build_classifier
from engine.tasks.base import DataView, Task, register_task, softmax_distillation

__all__ = [
    "RatingClassification",
    "classification_metrics",
    "confusion_matrix",
    "majority_baseline",
]


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


@register_task("rating_classification")
class RatingClassification(Task):
    view = DataView(("input_ids", "attention_mask", "labels"), "labels", np.int64)
    metrics = MappingProxyType({"accuracy": "max", "macro_f1": "max"})
    default_objectives = (("valid_accuracy", "max"), ("gflops", "min"))
    default_quality_metric = "accuracy"

    def build_model(
        self, name: str, num_outputs: int, *, attn_implementation: str = "sdpa", seed: int = 0
    ) -> PreTrainedModel:
        return build_classifier(
            name, num_outputs, attn_implementation=attn_implementation, seed=seed
        )

    def model_from_config(self, config: dict[str, Any]) -> PreTrainedModel:
        return AutoModelForSequenceClassification.from_config(AutoConfig.for_model(**config))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)

    def loss_per_example(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, reduction="none")

    def distill_loss(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        *,
        temperature: float,
        weight: float = 1.0,
    ) -> torch.Tensor:
        return softmax_distillation(student, teacher, temperature=temperature, weight=weight)

    def example_quality(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs.argmax(-1) == targets).double()

    def attribution_target(self, targets: torch.Tensor) -> torch.Tensor | int:
        return targets  # the true class's logit

    def score(self, outputs: np.ndarray, split: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return classification_metrics(
            outputs, split[self.view.target], np.asarray(outputs).shape[1]
        )

    def baselines(
        self, splits: Mapping[str, Mapping[str, np.ndarray]], num_outputs: int
    ) -> dict[str, dict[str, Any]]:
        train = splits["train"][self.view.target]
        return {"majority": majority_baseline(train, splits["test"][self.view.target], num_outputs)}
