"""Block influence (ShortGPT, Men et al. 2024): ``1 − cos(h_in, h_out)`` per token.

A block that barely turns its input hidden state is redundant. Per example the score is the
mean over real tokens; per batch the mean over examples. ``1 − cos`` is computed as
``½‖x/‖x‖ − y/‖y‖‖²`` in float64, which is exactly 0 when the output equals the input.
Computed from the engine's shared forward pass.
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
    """Mean over examples of the mean over real tokens of ``1 − cos(h_in, h_out)``."""
    m = fb.mask.double()
    out = []
    for x, y in zip(fb.hidden_in, fb.hidden_out, strict=True):
        per_tok = one_minus_cosine(x, y)
        per_ex = (per_tok * m).sum(1) / m.sum(1).clamp_min(1.0)
        out.append(float(per_ex.mean()))
    return np.array(out)


@register_importance("block_influence")
def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """ShortGPT block influence of each layer (higher = more important)."""
    return run_forward_pass(model, batches, cfg, frozenset({"block_influence"}))["block_influence"]
