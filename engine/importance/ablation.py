"""Ablation: how much worse the model gets when one layer is skipped.

Skipping is a residual pass-through: the block's output is replaced by its input, so the
rest of the network runs unchanged (Michel et al. 2019 do the same for heads; Men et al.
2024 and Gromov et al. 2024 for whole layers). One clean forward and one forward per layer
per batch; ``ablation`` and ``ablation_accuracy`` share them.

``ablation`` (per batch, mean over examples), by ``cfg.ablation_metric``:
  - ``loss``: ``CE(skipped) − CE(clean)`` — the task-loss increase (can be negative).
  - ``kl``: ``KL(p_clean ‖ p_skipped)`` — how far the prediction moves (≥ 0; exactly 0 for
    a layer whose output equals its input).
``ablation_accuracy``: ``acc(clean) − acc(skipped)`` — the task-metric drop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.importance._common import (
    forward_logits,
    layer_hooks,
    loss_per_example,
    num_examples,
)
from engine.importance.base import (
    SHARED_PASSES,
    Batch,
    LayerScores,
    from_rows,
    register_importance,
    register_shared_pass,
)
from engine.importance.config import ImportanceConfig
from engine.models import num_layers

__all__ = ["ablation_batch", "run_ablation_pass", "score", "score_accuracy"]


def skipped_logits(model: nn.Module, batch: Batch, layer: int) -> torch.Tensor:
    """Logits with block ``layer`` replaced by the identity (its input passed through)."""

    def hook(i: int, h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor | None:
        return h_in if i == layer else None

    with layer_hooks(model, hook):
        return forward_logits(model, batch)


@torch.no_grad()
def ablation_batch(model: nn.Module, batch: Batch, metric: str) -> dict[str, np.ndarray]:
    """Per-layer ``ablation`` and ``ablation_accuracy`` vectors for one batch."""
    labels = batch["labels"]
    clean = forward_logits(model, batch).float()
    clean_loss = loss_per_example(clean, labels)
    clean_acc = (clean.argmax(-1) == labels).double()
    clean_logp = F.log_softmax(clean, dim=-1)
    out_metric, out_acc = [], []
    for layer in range(num_layers(model)):
        skipped = skipped_logits(model, batch, layer).float()
        if metric == "kl":
            logq = F.log_softmax(skipped, dim=-1)
            delta = (clean_logp.exp() * (clean_logp - logq)).sum(-1)
        else:
            delta = loss_per_example(skipped, labels) - clean_loss
        out_metric.append(float(delta.double().mean()))
        out_acc.append(float((clean_acc - (skipped.argmax(-1) == labels).double()).mean()))
    return {"ablation": np.array(out_metric), "ablation_accuracy": np.array(out_acc)}


@register_shared_pass("ablation")
def run_ablation_pass(
    model: nn.Module, batches: Sequence[Batch], cfg: ImportanceConfig, wanted: frozenset[str]
) -> dict[str, LayerScores]:
    """One clean and L skipped forwards per batch, feeding both ablation methods."""
    rows: dict[str, list[np.ndarray]] = {m: [] for m in wanted}
    for batch in batches:
        got = ablation_batch(model, batch, cfg.ablation_metric)
        for m in wanted:
            rows[m].append(got[m])
    sizes = num_examples(batches)
    return {m: from_rows(m, rows[m], sizes) for m in sorted(wanted)}


SHARED_PASSES["ablation"].join("ablation")
SHARED_PASSES["ablation"].join("ablation_accuracy")


@register_importance("ablation")
def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """Loss increase (or prediction KL) when the layer is skipped (higher = more important)."""
    return run_ablation_pass(model, batches, cfg, frozenset({"ablation"}))["ablation"]


@register_importance("ablation_accuracy")
def score_accuracy(
    model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig
) -> LayerScores:
    """Accuracy drop when the layer is skipped (higher = more important)."""
    return run_ablation_pass(model, batches, cfg, frozenset({"ablation_accuracy"}))[
        "ablation_accuracy"
    ]
