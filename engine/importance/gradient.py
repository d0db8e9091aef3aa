"""Gradient saliency of a layer's output representation: ``(1/N) Σ_i ‖∂ℓ_i/∂h_{l,i}‖₂``.

``h_{l,i}`` is block l's output hidden states of example i (all real tokens × hidden units,
the residual stream the next block reads) and ``ℓ_i`` its cross-entropy at the label. This
is the gradient-magnitude saliency of Simonyan et al. 2014 ("Deep Inside Convolutional
Networks") taken at a hidden layer instead of the input — how strongly the loss reacts to a
perturbation of what the layer hands on — the gradient factor of layer conductance
(Dhamdhere et al. 2018). It measures sensitivity to the layer's *output*, not to its
weights, so it is not a function of ``fisher`` (parameter gradients) or ``taylor``: the two
can and do rank layers differently (e.g. a block with large weights and a small downstream
gradient).

Per-example contributions (intervals bootstrap over examples). Computed from the engine's
shared backward pass without any parameter gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from engine.importance.base import Batch, LayerScores, register_importance
from engine.importance.config import ImportanceConfig
from engine.importance.gradpass import GradBatch, register_grad_reducer, run_backward_pass

__all__ = ["hidden_grad_norm_per_example", "score"]


@register_grad_reducer("gradient", needs={"hidden"})
def hidden_grad_norm_per_example(gb: GradBatch) -> np.ndarray:
    """``[B, L]``: ``‖∂ℓ_i/∂h_l‖₂`` over each example's real tokens and hidden units."""
    if gb.hidden_grad_norms is None:
        raise ValueError("gradient needs the hidden-state gradients of the backward pass")
    return gb.hidden_grad_norms


@register_importance("gradient")
def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """Mean per-example gradient norm at each layer's output (higher = more important)."""
    return run_backward_pass(model, batches, cfg, frozenset({"gradient"}))["gradient"]
