"""MC-dropout sensitivity: how much predictive uncertainty grows when only one layer is noisy.

Definition. For layer l, dropout with rate ``p = cfg.mc_dropout_p`` is applied to that
block's residual update only, ``out' = in + m ⊙ (out − in) / (1 − p)`` with m ~ Bernoulli(1 − p)
per token and hidden unit, the rest of the model running in eval mode; ``T = cfg.mc_samples``
stochastic passes give class probabilities p_i^(t) for example i, with mean p̄_i and clean
probabilities p_i. Example i contributes, by ``cfg.mc_metric``:

- ``entropy``: ``s_il = H(p̄_i) − H(p_i)``, the increase of predictive entropy (nats; can be
  negative when the noise happens to sharpen the prediction);
- ``variance``: ``s_il = (1/C) Σ_c Var_t p_ic^(t)`` (population variance over the T samples,
  averaged over the C classes; ≥ 0, exactly 0 for a layer with a zero update);

and the layer score is the mean over examples.

Source: MC dropout as approximate Bayesian inference, Gal & Ghahramani 2016 ("Dropout as a
Bayesian Approximation"); applying it to one layer's update at a time, as a layer
sensitivity score, is this engine's construction. Dropping the block's update (rather than
the model's own dropout modules) gives every layer the same noise rate and works for
architectures without dropout (e.g. Llama).

Per-example contributions: yes (``s_il``), so the confidence interval resamples examples.
Each example's masks come from its own generator, seeded by ``cfg.seed``, the layer and the
example's tokens, so its contribution is deterministic and the same whatever batch it is in
(actor splits, out-of-memory halving, a batch of one). Not a monotone transform of another
method (``entropy`` and ``variance`` are two different summaries of the same samples).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from engine.importance._common import batch_generator, forward_logits, layer_hooks
from engine.importance.base import Batch, LayerScores, from_per_example, register_importance
from engine.importance.config import ImportanceConfig
from engine.models import num_layers

__all__ = ["entropy", "mc_dropout_batch", "score"]


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last dimension."""
    return -(p * p.clamp_min(1e-300).log()).sum(-1)


@torch.no_grad()
def mc_dropout_batch(model: nn.Module, batch: Batch, cfg: ImportanceConfig) -> np.ndarray:
    """Per example (``[B, L]``): the entropy increase or mean class variance of each layer."""
    clean = forward_logits(model, batch).double().softmax(-1)
    keep = 1.0 - cfg.mc_dropout_p
    ids = batch["input_ids"]
    out = []
    for layer in range(num_layers(model)):
        # one generator per example, seeded by that example's tokens: its masks (and so its
        # contribution) do not depend on which other examples share its batch
        gens = [
            batch_generator({"input_ids": ids[i : i + 1]}, cfg.seed, salt=f"mc_dropout/{layer}")
            for i in range(ids.shape[0])
        ]

        def hook(
            i: int,
            h_in: torch.Tensor,
            h_out: torch.Tensor,
            layer: int = layer,
            gens: list[torch.Generator] = gens,
        ) -> torch.Tensor | None:
            if i != layer:
                return None
            p_keep = torch.full(h_out.shape[1:], keep, device=h_out.device)
            mask = torch.stack([torch.bernoulli(p_keep, generator=g) for g in gens])
            return h_in + (h_out - h_in) * mask.to(h_out.dtype) / keep

        with layer_hooks(model, hook):
            probs = torch.stack(
                [forward_logits(model, batch).double().softmax(-1) for _ in range(cfg.mc_samples)]
            )
        if cfg.mc_metric == "entropy":
            per_ex = entropy(probs.mean(0)) - entropy(clean)
        else:
            per_ex = probs.var(0, unbiased=False).mean(-1)
        out.append(per_ex)
    return torch.stack(out, 1).cpu().numpy()


@register_importance("mc_dropout")
def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """Predictive-uncertainty increase under single-layer MC dropout (higher = more important)."""
    return from_per_example("mc_dropout", [mc_dropout_batch(model, b, cfg) for b in batches])
