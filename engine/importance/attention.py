"""Attention entropy / concentration per layer.

For each head and real query token, the entropy of its attention distribution is
normalised by ``log n`` (n = keys it may attend to: unmasked and, in decoders, not in the
future — the keys with non-zero probability), giving a value in [0, 1]; 1 = uniform
averaging. Queries with a single allowed key are skipped. Per example: mean over heads and
queries; per batch: mean over examples.

``cfg.attention_score = "concentration"`` (default) scores ``1 − normalised entropy``:
sharply focused layers route specific information and are kept, near-uniform ones mostly
average (cf. Zhang et al. 2024, "Investigating Layer Importance in LLMs"; the entropy
itself is Clark et al. 2019's diagnostic). ``"entropy"`` scores the normalised entropy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from engine.importance.base import Batch, LayerScores, register_importance
from engine.importance.config import ImportanceConfig
from engine.importance.fwdpass import FwdBatch, register_fwd_reducer, run_forward_pass

__all__ = ["normalised_entropy", "score"]


def normalised_entropy(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-example mean normalised entropy of ``probs [B, H, Sq, Sk]`` over heads and the
    real queries (``mask [B, S]``) that have at least two allowed keys."""
    p = probs.double()
    allowed = (p > 0).sum(-1)  # [B, H, Sq]
    plogp = torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p))
    ent = -plogp.sum(-1) / allowed.clamp_min(2).double().log()
    valid = (allowed >= 2) & mask[:, None, :].bool()
    w = valid.double()
    return (ent * w).sum((1, 2)) / w.sum((1, 2)).clamp_min(1.0)


@register_fwd_reducer("attention", needs_attentions=True)
def attention_per_batch(fb: FwdBatch, cfg: ImportanceConfig) -> np.ndarray:
    if fb.attentions is None:
        raise ValueError("attention needs the attention probabilities of the forward pass")
    out = []
    for a in fb.attentions:
        ent = normalised_entropy(a, fb.mask).mean()
        out.append(float(1.0 - ent) if cfg.attention_score == "concentration" else float(ent))
    return np.array(out)


@register_importance("attention")
def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """Attention concentration (or entropy) of each layer."""
    return run_forward_pass(model, batches, cfg, frozenset({"attention"}))["attention"]
