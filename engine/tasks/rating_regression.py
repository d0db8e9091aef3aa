"""``rating_regression``: a review's star rating (1–5) as a number, predicted from its text.

* data view: ``input_ids``, ``attention_mask`` and float32 ``labels`` = the star rating;
  each split also carries ``user_idx``/``item_idx`` (train-split ids numbered from 1; 0 = a
  user or item unseen in training, or a corpus without users) for the bias baseline
  (:func:`regression_view` on the review-text pipeline's splits);
* head: a sequence-classification head with one output, ``problem_type = "regression"``,
  its bias set to the training mean rating before the teacher is fine-tuned (:meth:`init_head`);
* task loss: mean squared error; per example the squared error;
* distillation: ``weight`` × MSE between the student's and the teacher's predicted ratings
  (an ensemble teacher's averaged prediction, :mod:`engine.compress.distill`). A temperature
  has no meaning for one real output: ``temperature`` is accepted and ignored;
* importance: example quality = −squared error;
* metrics: ``rmse`` and ``mae`` (both min);
* baselines: ``global_mean`` (the training mean rating for everyone) and ``bias_mf``
  (μ + b_u + b_i fitted on train by regularised least squares, :mod:`engine.tasks.bias_mf`);
* per-example table: ``predictions/<trial_id>.parquet`` — row key, user, item, rating and
  prediction of each test review;
* objectives: ``valid_rmse`` (min) and ``gflops`` (min); report quality: RMSE.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from engine.models import build_classifier
from engine.tasks.base import DataView, Task, register_task
from engine.tasks.bias_mf import fit_bias_model

__all__ = ["RatingRegression", "index_ids", "regression_metrics", "regression_view"]

SPLITS = ("train", "valid", "test")


def regression_metrics(predictions: Any, targets: Any) -> dict[str, float]:
    """``{"rmse", "mae"}`` of predictions ``[n]`` or ``[n, 1]`` against targets ``[n]``."""
    pred = np.asarray(predictions, np.float64)
    if pred.ndim == 2 and pred.shape[1] == 1:
        pred = pred[:, 0]
    y = np.asarray(targets, np.float64).reshape(-1)
    if pred.shape != y.shape:
        raise ValueError(f"predictions of shape {pred.shape} for {y.shape[0]} targets")
    if y.size == 0:
        raise ValueError("no examples to score")
    err = pred - y
    return {"rmse": float(np.sqrt(np.mean(err * err))), "mae": float(np.mean(np.abs(err)))}


def index_ids(train_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Index of each id among the distinct non-empty ``train_ids`` (sorted, numbered from 1);
    0 for ``""`` (no id) and for an id not in ``train_ids``."""
    known = np.unique(np.asarray(train_ids, str))
    number = {k: i for i, k in enumerate(known[known != ""], start=1)}
    ids = np.asarray(ids, str)
    return np.fromiter((number.get(k, 0) for k in ids), np.int64, count=len(ids))


def regression_view(data: Any) -> Any:
    """The review-text pipeline's splits (:class:`engine.data.PreparedData`, ``labels`` =
    stars − 1) as this task reads them: ``labels`` = stars (float32), plus ``user_idx`` /
    ``item_idx`` from the carried ``user_id`` / ``item_id`` (numbered on the train split)."""
    train = data.train
    out = {}
    for name in SPLITS:
        split = dict(getattr(data, name))
        split["labels"] = (np.asarray(split["labels"], np.int64) + 1).astype(np.float32)
        split["user_idx"] = index_ids(train["user_id"], split["user_id"])
        split["item_idx"] = index_ids(train["item_id"], split["item_id"])
        out[name] = split
    stats = dict(data.stats)
    stats["rating_regression"] = {
        "train_mean_rating": float(out["train"]["labels"].mean()),
        "users_in_train": int(out["train"]["user_idx"].max(initial=0)),
        "items_in_train": int(out["train"]["item_idx"].max(initial=0)),
        **{f"{s}_unseen_users": int((out[s]["user_idx"] == 0).sum()) for s in ("valid", "test")},
        **{f"{s}_unseen_items": int((out[s]["item_idx"] == 0).sum()) for s in ("valid", "test")},
    }
    return replace(data, **out, stats=stats)


@register_task("rating_regression")
class RatingRegression(Task):
    view = DataView(("input_ids", "attention_mask", "labels"), "labels", np.float32)
    metrics = MappingProxyType({"rmse": "min", "mae": "min"})
    default_objectives = (("valid_rmse", "min"), ("gflops", "min"))
    default_quality_metric = "rmse"
    examples_dir = "predictions"

    # ------------------------------------------------------------------ data and model
    def prepare(self, data: Any, model: str) -> Any:
        return regression_view(super().prepare(data, model))

    def head_outputs(self, num_labels: int) -> int:
        return 1  # one predicted rating, whatever the number of rating levels

    def build_model(
        self, name: str, num_outputs: int, *, attn_implementation: str = "sdpa", seed: int = 0
    ) -> PreTrainedModel:
        model = build_classifier(
            name, num_outputs, attn_implementation=attn_implementation, seed=seed
        )
        model.config.problem_type = "regression"
        return model

    def model_from_config(self, config: dict[str, Any]) -> PreTrainedModel:
        return AutoModelForSequenceClassification.from_config(AutoConfig.for_model(**config))

    def init_head(self, model: PreTrainedModel, train: Mapping[str, np.ndarray]) -> None:
        """The output's bias starts at the training mean rating, so fine-tuning learns how a
        review departs from it instead of spending its steps moving a ~0 output up to ~4.8
        (without it a 150-step MiniLM teacher predicted 4.93 ± 0.02 for every review). A head
        without a bias (GPT-2's and Llama's ``score``) is left as built."""
        head = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1]
        if head and head[-1].bias is not None:
            with torch.no_grad():
                targets = np.asarray(train[self.view.target], np.float64)
                head[-1].bias.fill_(float(np.mean(targets)))

    # ------------------------------------------------------------------ losses
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs.squeeze(-1), targets.to(outputs.dtype))

    def loss_per_example(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs.squeeze(-1) - targets.to(outputs.dtype)).pow(2)

    def distill_loss(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        *,
        temperature: float,
        weight: float = 1.0,
    ) -> torch.Tensor:
        """``weight`` · mean (ŷ_s − ŷ_t)²; ``temperature`` is ignored (see the module)."""
        return weight * F.mse_loss(student.squeeze(-1), teacher.squeeze(-1).to(student.dtype))

    # ------------------------------------------------------------------ importance hooks
    def example_quality(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return -(outputs.detach().squeeze(-1).double() - targets.double()).pow(2)

    # ------------------------------------------------------------------ scoring
    def score(self, outputs: np.ndarray, split: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return regression_metrics(outputs, split[self.view.target])

    def example_table(self, outputs: np.ndarray, split: Mapping[str, np.ndarray]) -> pa.Table:
        pred = np.asarray(outputs, np.float32).reshape(len(split["labels"]), -1)[:, 0]
        n = len(pred)
        blank = np.full(n, "", dtype=object)
        return pa.table(
            {
                "row_key": pa.array(np.asarray(split.get("row_key", blank)).astype(str)),
                "user_id": pa.array(np.asarray(split.get("user_id", blank)).astype(str)),
                "item_id": pa.array(np.asarray(split.get("item_id", blank)).astype(str)),
                "rating": pa.array(np.asarray(split["labels"], np.float32)),
                "prediction": pa.array(pred),
            }
        )

    def baselines(
        self, splits: Mapping[str, Mapping[str, np.ndarray]], num_outputs: int
    ) -> dict[str, dict[str, Any]]:
        """``global_mean`` always; ``bias_mf`` when the splits carry ``user_idx``/``item_idx``."""
        train = splits["train"]
        mu = float(np.mean(np.asarray(train["labels"], np.float64)))
        with_ids = all("user_idx" in s and "item_idx" in s for s in splits.values())
        bias = None
        if with_ids:
            bias = fit_bias_model(train["user_idx"], train["item_idx"], train["labels"])
        rows: dict[str, dict[str, Any]] = {"global_mean": {}}
        if bias is not None:
            rows["bias_mf"] = {}
        for name, prefix in (("valid", "valid_"), ("test", "")):
            split = splits.get(name)
            if split is None or len(split["labels"]) == 0:
                continue
            y = split["labels"]
            preds = {"global_mean": np.full(len(y), mu)}
            if bias is not None:
                preds["bias_mf"] = bias.predict(split["user_idx"], split["item_idx"])
            for base, pred in preds.items():
                metrics = regression_metrics(pred, y)
                rows[base].update({f"{prefix}{k}": v for k, v in metrics.items()})
        return rows
