"""Ablation: how much worse the model gets when one layer is skipped.

Definition. Skipping block l replaces its output by its input (a residual pass-through), so
the rest of the network runs unchanged. With p_i the clean class probabilities of example i
(label y_i) and q_i^l those with block l skipped, example i contributes

- ``ablation``, ``cfg.ablation_metric = "loss"``: ``s_il = CE(q_i^l, y_i) − CE(p_i, y_i)
  = log p_i[y_i] − log q_i^l[y_i]``, the task-loss increase (can be negative);
- ``ablation``, ``"kl"``: ``s_il = KL(p_i ‖ q_i^l) = Σ_c p_ic log(p_ic / q_ic^l)``, how far the
  prediction moves (≥ 0; exactly 0 for a layer whose output equals its input);
- ``ablation_accuracy``: ``s_il = 1[argmax p_i = y_i] − 1[argmax q_i^l = y_i] ∈ {−1, 0, 1}``,
  the task-metric drop;

with CE, the label loss and the 0/1 correctness standing for the study task's per-example loss
and quality (``Task.loss_per_example``, ``Task.example_quality``, :mod:`engine.tasks`); ``kl``
compares the softmax of the outputs, whatever the task.

and the layer score is the mean over examples, ``s_l = (1/N) Σ_i s_il``.

Source: removing whole layers and measuring the damage, Gromov et al. 2024 ("The Unreasonable
Ineffectiveness of the Deeper Layers") and Zhang, Dong & Kawaguchi 2024 ("Investigating Layer
Importance in Large Language Models", layer ablation); for attention heads, Michel et al. 2019
("Are Sixteen Heads Really Better than One?").

Per-example contributions: yes (``s_il``); ``LayerScores.per_example`` holds them, so the
confidence interval resamples examples.

Relation to other methods: none is a monotone transform of another registered method.
``kl`` is, to second order in the skip, half the *model* Fisher of a per-layer gate moved
from 1 to 0, whereas ``fisher_mask`` is the *empirical* Fisher (label loss) of the gate's
gradient at 1 — related, not equal. ``loss`` and ``kl`` differ in sign structure (skipping
can lower the loss); ``ablation_accuracy`` thresholds each prediction, so it ties often.

Cost: one clean forward and one forward per layer per batch, shared by both methods.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.importance._common import forward_logits, layer_hooks, num_examples
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
from engine.tasks import DEFAULT_TASK, Task, get_task

__all__ = ["ablation_batch", "run_ablation_pass", "score", "score_accuracy"]


def skipped_logits(model: nn.Module, batch: Batch, layer: int) -> torch.Tensor:
    """Logits with block ``layer`` replaced by the identity (its input passed through)."""

    def hook(i: int, h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor | None:
        return h_in if i == layer else None

    with layer_hooks(model, hook):
        return forward_logits(model, batch)


@torch.no_grad()
def ablation_batch(
    model: nn.Module, batch: Batch, metric: str, task: str | Task = DEFAULT_TASK
) -> dict[str, np.ndarray]:
    """Per-example ``[B, L]`` ``ablation`` and ``ablation_accuracy`` contributions for one batch."""
    task = get_task(task)
    targets = batch[task.view.target]
    # log-probabilities in float64: a near-identity layer's KL (or loss change) is far below
    # float32's resolution of a log-probability (~1e-7), where it would read as noise or < 0
    clean = forward_logits(model, batch).double()
    clean_logp = F.log_softmax(clean, dim=-1)
    clean_loss = task.loss_per_example(clean, targets)
    clean_acc = task.example_quality(clean, targets)
    out_metric, out_acc = [], []
    for layer in range(num_layers(model)):
        skipped = skipped_logits(model, batch, layer).double()
        if metric == "kl":
            logq = F.log_softmax(skipped, dim=-1)
            delta = (clean_logp.exp() * (clean_logp - logq)).sum(-1)
        else:
            delta = task.loss_per_example(skipped, targets) - clean_loss
        out_metric.append(delta)
        out_acc.append(clean_acc - task.example_quality(skipped, targets))
    return {
        "ablation": torch.stack(out_metric, 1).cpu().numpy(),
        "ablation_accuracy": torch.stack(out_acc, 1).cpu().numpy(),
    }


@register_shared_pass("ablation")
def run_ablation_pass(
    model: nn.Module, batches: Sequence[Batch], cfg: ImportanceConfig, wanted: frozenset[str]
) -> dict[str, LayerScores]:
    """One clean and L skipped forwards per batch, feeding both ablation methods."""
    rows: dict[str, list[np.ndarray]] = {m: [] for m in wanted}
    for batch in batches:
        got = ablation_batch(model, batch, cfg.ablation_metric, cfg.task)
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
