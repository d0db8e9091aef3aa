"""Block influence (BI): how far a block turns its input hidden state.

Definition. For example i with real tokens T_i, block l with input ``x_it`` and output
``y_it`` at token t::

    s_il = (1/|T_i|) Σ_{t∈T_i} (1 − cos(x_it, y_it)),      s_l = (1/N) Σ_i s_il

``1 − cos`` is computed as ``½‖x/‖x‖ − y/‖y‖‖²`` in float64, which is exactly 0 when the
output equals the input (or is a positive multiple of it) and 2 when it is a negative one.

Source: Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than
You Expect" (eq. 1: ``BI_i = 1 − E_{X,t} cos(X_{i,t}, X_{i+1,t})``). ShortGPT's expectation
runs over all tokens pooled; here tokens are averaged within an example first, so every
example weighs the same whatever its length (the two agree when lengths are equal).

Per-example contributions: yes (``s_il``), so the confidence interval resamples examples.
Not a monotone transform of another method (ablation measures the effect at the output, BI
the turn of the hidden state). Computed from the engine's shared forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from engine.importance.base import Batch, LayerScores, register_importance
from engine.importance.config import ImportanceConfig
from engine.importance.fwdpass import FwdBatch, register_fwd_reducer, run_forward_pass

__all__ = ["block_influence_per_batch", "one_minus_cosine", "score"]


def one_minus_cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``1 − cos(x, y)`` over the last dimension, as ``½‖x̂ − ŷ‖²`` (float64)."""
    x = x.double()
    y = y.double()
    xn = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    yn = y / y.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return 0.5 * (xn - yn).pow(2).sum(-1)


@register_fwd_reducer("block_influence")
def block_influence_per_batch(fb: FwdBatch, cfg: ImportanceConfig) -> np.ndarray:
    """Per example (``[B, L]``): the mean over real tokens of ``1 − cos(h_in, h_out)``."""
    m = fb.mask.double()
    out = []
    for x, y in zip(fb.hidden_in, fb.hidden_out, strict=True):
        per_tok = one_minus_cosine(x, y)
        out.append((per_tok * m).sum(1) / m.sum(1).clamp_min(1.0))
    return torch.stack(out, 1).cpu().numpy()


@register_importance("block_influence")
def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """ShortGPT block influence of each layer (higher = more important)."""
    return run_forward_pass(model, batches, cfg, frozenset({"block_influence"}))["block_influence"]
