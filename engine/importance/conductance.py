"""Layer conductance (Dhamdhere et al. 2018) via captum's ``LayerConductance``.

Conductance distributes the integrated-gradients attribution of the target logit (the
example's label) over a layer's output neurons; by completeness the signed sum over a layer
is the same for every layer (≈ F(x) − F(baseline)), so the layer score is the total absolute
conductance, ``Σ_{token, unit} |cond|`` over real tokens, per example, averaged over examples.

Inputs are the word embeddings (the model's input-embedding module is hooked to return the
interpolated tensor, so positions, token types and padding detection still see the real
``input_ids``); the baseline is all-zero word embeddings. ``cfg.conductance_steps`` sets the
number of integration steps (Gauss–Legendre), ``cfg.conductance_internal_batch_size`` bounds
memory. Cost: one integrated-gradients run per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from captum.attr import LayerConductance
from torch import nn

from engine.importance._common import first_tensor, num_examples
from engine.importance.base import Batch, LayerScores, from_per_batch, register_importance
from engine.importance.config import ImportanceConfig
from engine.models import layer_list

__all__ = ["conductance_batch", "score"]


def _forward(model: nn.Module) -> object:
    emb = model.get_input_embeddings()

    def fwd(word_embeds: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        handle = emb.register_forward_hook(lambda _m, _a, _o: word_embeds)
        try:
            out = model(input_ids=input_ids, attention_mask=mask, use_cache=False)
        finally:
            handle.remove()
        return out.logits.float()

    return fwd


def conductance_batch(model: nn.Module, batch: Batch, cfg: ImportanceConfig) -> np.ndarray:
    """Mean over examples of the total absolute conductance of each layer's output."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids).detach()
    fwd = _forward(model)
    m = mask.double()
    out = []
    for block in layer_list(model):
        lc = LayerConductance(fwd, block)
        with torch.enable_grad():
            cond = lc.attribute(
                embeds,
                baselines=torch.zeros_like(embeds),
                target=batch["labels"],
                additional_forward_args=(ids, mask),
                n_steps=cfg.conductance_steps,
                internal_batch_size=cfg.conductance_internal_batch_size,
            )
        cond = first_tensor(cond).detach().double()  # [B, S, H]
        per_ex = (cond.abs().sum(-1) * m).sum(1)
        out.append(float(per_ex.mean()))
    return np.array(out)


@register_importance("conductance")
def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """Total absolute layer conductance of the label logit (higher = more important)."""
    rows = [conductance_batch(model, b, cfg) for b in batches]
    return from_per_batch("conductance", rows, num_examples(batches))
