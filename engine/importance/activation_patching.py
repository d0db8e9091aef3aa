"""Activation patching: restore one layer's clean contribution in a corrupted run and
measure how much of the clean output comes back.

Definition. Patching a block's full output would restore everything downstream (recovery 1
for every layer), so the patched quantity is the block's residual update ``out − in``: in the
corrupted run, block l outputs ``in_corrupt + (out_clean − in_clean)``. With p_i the clean
class probabilities of example i and ``D_b(a) = Σ_{i∈b} KL(p_i ‖ p_i^a)`` summed over batch b,

    r_bl = 1 − D_b(patched_l) / D_b(corrupted)

(0 = no recovery, 1 = the clean output is fully restored; a batch whose corruption moves
nothing scores 0); the layer score is the example-weighted mean of r_bl over batches.
Corruption, by ``cfg.patch_corruption``: ``token_noise`` replaces each real token with a
random id with probability ``cfg.patch_noise_frac`` (seeded by ``cfg.seed`` and the batch
contents; on a causal decoder never the padding id, which its head uses to find the position
it scores — on an item model the noise is a random item); ``other_example`` feeds each example the next example's tokens (the batch rolled
by one; token noise for a batch of one). Patching is position-aligned, so ``other_example``
is meaningful for examples of equal length: an example rolled in with another length is
pooled at another position, and even patching its only non-zero update recovers < 1.

Source: causal tracing / activation patching, Meng et al. 2022 ("Locating and Editing
Factual Associations in GPT"); metrics and pitfalls, Heimersheim & Nanda 2024 ("How to use
and interpret activation patching"). Patching the residual update of a whole block, scored
by recovered KL, is this engine's variant.

Per-example contributions: none — r_bl is a ratio of batch sums, not a mean over examples
(a mean of per-example ratios is a different quantity, unstable where one example's
corruption barely moves its prediction), and ``other_example`` corruption couples the
examples of a batch; so the confidence interval resamples batches. Not a monotone transform
of another method.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.importance._common import (
    batch_generator,
    forward_logits,
    is_causal,
    layer_hooks,
    num_examples,
)
from engine.importance.base import Batch, LayerScores, from_per_batch, register_importance
from engine.importance.config import ImportanceConfig
from engine.models import num_layers

__all__ = ["corrupt", "patching_batch", "score"]


def corrupt(model: nn.Module, batch: Batch, cfg: ImportanceConfig) -> Batch:
    """The corrupted copy of ``batch`` (targets unchanged)."""
    if cfg.patch_corruption == "other_example" and batch["input_ids"].shape[0] > 1:
        return {
            **batch,
            "input_ids": batch["input_ids"].roll(1, 0),
            "attention_mask": batch["attention_mask"].roll(1, 0),
        }
    g = batch_generator(batch, cfg.seed, salt="activation_patching")
    ids = batch["input_ids"]
    flip = torch.rand(ids.shape, generator=g, device=ids.device) < cfg.patch_noise_frac
    flip &= batch["attention_mask"].bool()
    vocab = int(model.get_input_embeddings().num_embeddings)
    noise = torch.randint(0, vocab, ids.shape, generator=g, device=ids.device)
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    if pad is not None and 0 <= pad < vocab and is_causal(model):
        # a decoder's head pools the last non-padding id: a real token turned into padding
        # would move the scored position. Redraw those from the vocabulary without ``pad``
        # (drawn after the first noise, so where no padding was drawn nothing changes).
        other = torch.randint(0, vocab - 1, ids.shape, generator=g, device=ids.device)
        noise = torch.where(noise == pad, other + (other >= pad).long(), noise)
    return {**batch, "input_ids": torch.where(flip, noise, ids)}


def _kl_sum(clean_logp: torch.Tensor, logits: torch.Tensor) -> float:
    logq = F.log_softmax(logits.double(), dim=-1)
    return float((clean_logp.exp() * (clean_logp - logq)).sum())


@torch.no_grad()
def patching_batch(model: nn.Module, batch: Batch, cfg: ImportanceConfig) -> np.ndarray:
    delta: list[torch.Tensor] = []

    def record(i: int, h_in: torch.Tensor, h_out: torch.Tensor) -> None:
        delta.append((h_out - h_in).detach())

    with layer_hooks(model, record):
        clean_logp = F.log_softmax(forward_logits(model, batch).double(), dim=-1)
    bad = corrupt(model, batch, cfg)
    d_corrupt = _kl_sum(clean_logp, forward_logits(model, bad))
    out = []
    for layer in range(num_layers(model)):

        def patch(
            i: int, h_in: torch.Tensor, h_out: torch.Tensor, layer: int = layer
        ) -> torch.Tensor | None:
            return h_in + delta[layer] if i == layer else None

        with layer_hooks(model, patch):
            d_patched = _kl_sum(clean_logp, forward_logits(model, bad))
        out.append(0.0 if d_corrupt <= 0.0 else 1.0 - d_patched / d_corrupt)
    return np.array(out)


@register_importance("activation_patching")
def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """Share of the clean output recovered by patching in each layer's clean update."""
    rows = [patching_batch(model, b, cfg) for b in batches]
    return from_per_batch("activation_patching", rows, num_examples(batches))
