"""``rating_classification``: a review's rating as one of C classes.

* data view: ``input_ids``, ``attention_mask`` and integer class ``labels`` in ``[0, C)``;
* head: a sequence-classification head with C logits (:func:`engine.models.build_classifier`);
* task loss: cross-entropy ``CE(z, y)``; per example with ``reduction="none"``;
* distillation (Hinton et al. 2015): ``T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))``, the T²
  keeping the soft-target gradients on the hard-target scale when T changes;
* metrics: accuracy and macro-F1 (both max), from the argmax of the logits
  (:func:`engine.measure.quality.classification_metrics`);
* baseline: always predicting the most frequent training class (``majority``);
* objectives: ``valid_accuracy`` (max) and ``gflops`` (min); report quality: accuracy.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from engine.tasks.base import DataView, Task, register_task

__all__ = ["RatingClassification"]


@register_task("rating_classification")
class RatingClassification(Task):
    view = DataView(("input_ids", "attention_mask", "labels"), "labels", np.int64)
    metrics = MappingProxyType({"accuracy": "max", "macro_f1": "max"})
    default_objectives = (("valid_accuracy", "max"), ("gflops", "min"))
    default_quality_metric = "accuracy"

    def build_model(
        self, name: str, num_outputs: int, *, attn_implementation: str = "sdpa", seed: int = 0
    ) -> PreTrainedModel:
        from engine.models import build_classifier

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
        t = temperature
        log_p_s = F.log_softmax(student / t, dim=-1)
        log_p_t = F.log_softmax(teacher / t, dim=-1)
        kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")
        return weight * t * t * kl  # this order of products: results stay bit-identical

    def example_quality(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs.argmax(-1) == targets).double()

    def attribution_target(self, targets: torch.Tensor) -> torch.Tensor | int:
        return targets  # the true class's logit

    def score(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        from engine.measure.quality import classification_metrics

        return classification_metrics(outputs, targets, np.asarray(outputs).shape[1])

    def baselines(
        self, train_targets: np.ndarray, test_targets: np.ndarray, num_outputs: int
    ) -> dict[str, dict[str, float]]:
        from engine.measure.quality import majority_baseline

        return {"majority": majority_baseline(train_targets, test_targets, num_outputs)}
