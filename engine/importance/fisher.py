"""Fisher information per layer: of its parameters, and of a per-layer gate (mask variant).

``fisher``: the trace of the layer's block of the empirical Fisher information,

    F_l = (1/N) Σ_i Σ_{θ∈layer l} (∂ℓ_i/∂θ)²

with ``ℓ_i`` the cross-entropy of example i at its label — the diagonal empirical Fisher of
Kirkpatrick et al. 2017 (EWC), summed over the layer's parameters. Per-example gradient norms
come from layer hooks in the single shared backward (the ghost-norm identity for Linear
layers, :mod:`engine.importance.ghostnorm`), not one backward per example. The squared
norm of the *batch-mean* gradient is not this quantity: it is smaller by about the batch
size and ranks layers differently, so it is not used.

``fisher_mask``: Kwon et al. 2022 ("A Fast Post-Training Pruning Framework for
Transformers", eq. 4) score a mask variable m by ``(1/N) Σ_i (∂ℓ_i/∂m)²`` at m = 1. Here
the mask is one gate per layer on the block's residual update
(``out + (g − 1)·(out − in)``), so g = 0 skips the layer; gradients are per example.

Both yield per-example contributions, so their intervals bootstrap over examples. They share
the engine's single backward pass with gradient and taylor (see ``gradpass``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from engine.importance.base import Batch, LayerScores, register_importance
from engine.importance.config import ImportanceConfig
from engine.importance.gradpass import GradBatch, register_grad_reducer, run_backward_pass

__all__ = ["fisher_mask_per_example", "fisher_per_example", "score", "score_mask"]


@register_grad_reducer("fisher", needs={"example_norms"})
def fisher_per_example(gb: GradBatch) -> np.ndarray:
    """``[B, L]``: ``Σ_{θ∈layer} (∂ℓ_i/∂θ)²`` for each example and layer."""
    if gb.example_sq_norms is None:
        raise ValueError("fisher needs the per-example gradient norms of the backward pass")
    return gb.example_sq_norms


@register_grad_reducer("fisher_mask", needs={"gates"})
def fisher_mask_per_example(gb: GradBatch) -> np.ndarray:
    """``[B, L]``: ``(∂ℓ_i/∂g_l)²`` for each example and layer."""
    if gb.gate_grads is None:
        raise ValueError("fisher_mask needs the gate gradients of the backward pass")
    return gb.gate_grads.double().pow(2).T.cpu().numpy()


@register_importance("fisher")
def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """Empirical Fisher trace of each layer's parameters (higher = more important)."""
    return run_backward_pass(model, batches, cfg, frozenset({"fisher"}))["fisher"]


@register_importance("fisher_mask")
def score_mask(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """Mask-based Fisher of a per-layer gate at 1 (Kwon et al. 2022)."""
    return run_backward_pass(model, batches, cfg, frozenset({"fisher_mask"}))["fisher_mask"]
