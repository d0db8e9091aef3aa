"""Fisher information per layer: of its parameters, and of a per-layer gate (mask variant).

``fisher``: the trace of the layer's block of the empirical Fisher, estimated with
mini-batch gradients — per batch ``Σ_{θ∈layer} (∂L_b/∂θ)²`` where ``L_b`` is the batch-mean
cross-entropy — averaged over batches weighted by their size. (Per-example gradients would
cost one backward per example; the mini-batch estimate is the usual practical stand-in,
e.g. Kirkpatrick et al. 2017, and ranks layers the same way on the same batches.)

``fisher_mask``: Kwon et al. 2022 ("A Fast Post-Training Pruning Framework for
Transformers", eq. 4) score a mask variable m by ``(1/N) Σ_i (∂L_i/∂m)²`` at m = 1. Here
the mask is one gate per layer on the block's residual update
(``out + (g − 1)·(out − in)``), so g = 0 skips the layer; gradients are per example.

Both share the engine's single backward pass with gradient and taylor (see ``gradpass``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from engine.importance.base import Batch, LayerScores, register_importance
from engine.importance.config import ImportanceConfig
from engine.importance.gradpass import GradBatch, register_grad_reducer, run_backward_pass

__all__ = ["fisher_mask_per_batch", "fisher_per_batch", "score", "score_mask"]


@register_grad_reducer("fisher")
def fisher_per_batch(gb: GradBatch) -> np.ndarray:
    """``Σ_{θ∈layer} (∂L_b/∂θ)²`` for each layer."""
    return gb.sq_norms()


@register_grad_reducer("fisher_mask", needs_gates=True)
def fisher_mask_per_batch(gb: GradBatch) -> np.ndarray:
    """``mean_i (∂L_i/∂g_l)²`` for each layer l."""
    if gb.gate_grads is None:
        raise ValueError("fisher_mask needs the gate gradients of the backward pass")
    return gb.gate_grads.double().pow(2).mean(dim=1).cpu().numpy()


@register_importance("fisher")
def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """Empirical Fisher trace of each layer's parameters (higher = more important)."""
    return run_backward_pass(model, batches, cfg, frozenset({"fisher"}))["fisher"]


@register_importance("fisher_mask")
def score_mask(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """Mask-based Fisher of a per-layer gate at 1 (Kwon et al. 2022)."""
    return run_backward_pass(model, batches, cfg, frozenset({"fisher_mask"}))["fisher_mask"]
