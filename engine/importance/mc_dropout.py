"""MC-dropout sensitivity: how much predictive uncertainty grows when only one layer is noisy.

For layer l, dropout with rate ``cfg.mc_dropout_p`` is applied to that block's residual
update only (``out' = in + mask ⊙ (out − in) / (1 − p)``), the rest of the model runs in
eval mode, and ``cfg.mc_samples`` stochastic passes are averaged (Gal & Ghahramani 2016).
Per example the score is, by ``cfg.mc_metric``:

- ``entropy``: ``H(mean_t p_t) − H(p_clean)``, the increase of predictive entropy;
- ``variance``: mean over classes of the variance of ``p_t`` across samples.

Dropping the block's update (rather than the model's own dropout modules) gives every layer
the same noise rate and works for architectures without dropout (e.g. Llama). Masks come
from a generator seeded by ``cfg.seed`` and the batch contents, so results are
deterministic and independent of actor splits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from engine.importance._common import batch_generator, forward_logits, layer_hooks, num_examples
from engine.importance.base import Batch, LayerScores, from_per_batch, register_importance
from engine.importance.config import ImportanceConfig
from engine.models import num_layers

__all__ = ["entropy", "mc_dropout_batch", "score"]


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last dimension."""
    return -(p * p.clamp_min(1e-300).log()).sum(-1)


@torch.no_grad()
def mc_dropout_batch(model: nn.Module, batch: Batch, cfg: ImportanceConfig) -> np.ndarray:
    clean = forward_logits(model, batch).double().softmax(-1)
    keep = 1.0 - cfg.mc_dropout_p
    out = []
    for layer in range(num_layers(model)):
        g = batch_generator(batch, cfg.seed, salt=f"mc_dropout/{layer}")

        def hook(
            i: int,
            h_in: torch.Tensor,
            h_out: torch.Tensor,
            layer: int = layer,
            g: torch.Generator = g,
        ) -> torch.Tensor | None:
            if i != layer:
                return None
            mask = torch.bernoulli(torch.full(h_out.shape, keep, device=h_out.device), generator=g)
            return h_in + (h_out - h_in) * mask.to(h_out.dtype) / keep

        with layer_hooks(model, hook):
            probs = torch.stack(
                [forward_logits(model, batch).double().softmax(-1) for _ in range(cfg.mc_samples)]
            )
        if cfg.mc_metric == "entropy":
            per_ex = entropy(probs.mean(0)) - entropy(clean)
        else:
            per_ex = probs.var(0, unbiased=False).mean(-1)
        out.append(float(per_ex.mean()))
    return np.array(out)


@register_importance("mc_dropout")
def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """Predictive-uncertainty increase under single-layer MC dropout (higher = more important)."""
    rows = [mc_dropout_batch(model, b, cfg) for b in batches]
    return from_per_batch("mc_dropout", rows, num_examples(batches))
