"""Gradient norm per layer: ``‖∂L_b/∂θ_layer‖₂`` averaged over batches.

The L2 norm runs over all of a block's parameters at once; ``L_b`` is the batch-mean
cross-entropy. A layer the loss is sensitive to has large gradients (first-order saliency;
cf. Molchanov et al. 2017). Computed from the engine's shared backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from engine.importance.base import Batch, LayerScores, register_importance
from engine.importance.config import ImportanceConfig
from engine.importance.gradpass import GradBatch, register_grad_reducer, run_backward_pass

__all__ = ["gradient_norm_per_batch", "score"]


@register_grad_reducer("gradient")
def gradient_norm_per_batch(gb: GradBatch) -> np.ndarray:
    """``‖∂L_b/∂θ‖₂`` over each layer's parameters."""
    return np.sqrt(gb.sq_norms())  # shares fisher's reduction when both are requested


@register_importance("gradient")
def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """Mean gradient norm of each layer's parameters (higher = more important)."""
    return run_backward_pass(model, batches, cfg, frozenset({"gradient"}))["gradient"]
