"""First-order Taylor importance: ``Σ_{θ∈layer} |θ · ∂L_b/∂θ|`` averaged over batches.

``θ·∂L/∂θ`` is the first-order estimate of the loss change when θ is set to zero
(Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning"; summed per
parameter in absolute value as in LLM-Pruner's element-wise criterion, Ma et al. 2023).
``L_b`` is the batch-mean cross-entropy, as in both papers: the absolute value is taken of
the mini-batch gradient, so the score is defined per batch (not a mean of per-example
terms) and its interval bootstraps over calibration batches. Weighting by |θ| makes it
differ from any function of ``fisher`` (squared per-example gradients, no weights) or
``gradient`` (output-representation gradients). Computed from the engine's shared backward
pass (the only gradient method that needs parameter gradients).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from engine.importance.base import Batch, LayerScores, register_importance
from engine.importance.config import ImportanceConfig
from engine.importance.gradpass import GradBatch, register_grad_reducer, run_backward_pass

__all__ = ["score", "taylor_per_batch"]


@register_grad_reducer("taylor", needs={"params"})
def taylor_per_batch(gb: GradBatch) -> np.ndarray:
    """``Σ |θ ⊙ ∂L_b/∂θ|`` over each layer's parameters."""
    return gb.abs_taylor()


@register_importance("taylor")
def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """First-order Taylor saliency of each layer (higher = more important)."""
    return run_backward_pass(model, batches, cfg, frozenset({"taylor"}))["taylor"]
