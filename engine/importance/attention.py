"""Attention entropy / concentration per layer.

Definition. For example i, head h and real query token q of layer l, let ``A_q`` be the
keys q may attend to — the keys with non-zero probability: unmasked and, in decoders, not in
the future — ``n_q = |A_q|`` and ``p_qk`` the attention probabilities. The normalised entropy

    Ĥ_ihq = −Σ_{k∈A_q} p_qk log p_qk / log n_q   ∈ [0, 1]   (1 = uniform over A_q)

is averaged over heads and the real queries with ``n_q ≥ 2`` (a query with a single allowed
key has no choice and is skipped): ``Ĥ_il = mean_{h,q} Ĥ_ihq``. Example i contributes
``s_il = 1 − Ĥ_il`` for ``cfg.attention_score = "concentration"`` (the default: sharply
focused layers route specific information and are kept, near-uniform ones mostly average)
or ``s_il = Ĥ_il`` for ``"entropy"``; the layer score is the mean over examples. An example
with no scored query (every real query has one allowed key) contributes ``Ĥ = 0``.

Source: the entropy of attention distributions as a diagnostic is Clark et al. 2019 ("What
Does BERT Look At? An Analysis of BERT's Attention": the mean entropy of each head's
attention, "attending broadly"); its use as a layer keep-score is this engine's heuristic,
with no published definition behind it.

Per-example contributions: yes, so the confidence interval resamples examples. The two
settings are one method: ``concentration = 1 − entropy`` example by example, so they rank
layers in exactly reverse order. Caveat: a key whose probability underflows to exactly 0
(a logit gap above ~100 in float32) is counted as not allowed. Computed from the engine's
shared forward pass (eager attention, to get the probabilities).
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
    """Per example (``[B, L]``): concentration ``1 − Ĥ`` or normalised entropy ``Ĥ``."""
    ent = torch.stack([normalised_entropy(a, fb.mask) for a in fb.attentions], 1)
    return (1.0 - ent if cfg.attention_score == "concentration" else ent).cpu().numpy()


@register_importance("attention")
def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """Attention concentration (or entropy) of each layer."""
    return run_forward_pass(model, batches, cfg, frozenset({"attention"}))["attention"]
