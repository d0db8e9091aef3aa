"""Weight masks: unstructured magnitude pruning and 2:4 semi-structured sparsity.

Masks zero weights in place; the matrices keep their dense shapes, so a dense kernel does
the same work and fvcore's dense GFLOPs do not change. Only a sparse kernel (e.g. NVIDIA's
2:4 sparse tensor cores through ``torch.sparse.to_sparse_semi_structured``) would cash the
zeros in; results therefore report ``gflops`` (dense, counted) beside
``gflops_theoretical = gflops × (1 − sparsity)``, labelled theoretical.

Prunable weights: every Linear (and GPT-2 Conv1D) matrix inside the transformer blocks;
embeddings, pooler and classifier stay dense. Unstructured sparsity is per matrix (each
matrix loses the same fraction, its smallest |w|).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.models import layer_list

__all__ = [
    "apply_masks",
    "magnitude_masks",
    "mask_sparsity",
    "prunable_weights",
    "two_four_masks",
]


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Parameter, bool]]:
    """(name, weight, input_dim_first) of each matrix in the blocks; GPT-2 Conv1D weights are
    [in, out] (input dim first), Linear weights [out, in]."""
    out = []
    for i, block in enumerate(layer_list(model)):
        for name, mod in block.named_modules():
            w = getattr(mod, "weight", None)
            if isinstance(w, nn.Parameter) and w.dim() == 2 and not isinstance(mod, nn.Embedding):
                conv1d = type(mod).__name__ == "Conv1D"
                out.append((f"{i}.{name}", w, conv1d))
    return out


def magnitude_masks(model: nn.Module, sparsity: float) -> list[torch.Tensor]:
    """Per matrix, zero the round(sparsity · numel) entries of smallest |w| (stable order)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    masks = []
    for _, w, _ in prunable_weights(model):
        flat = w.detach().abs().flatten()
        k = round(sparsity * flat.numel())
        m = torch.ones_like(flat)
        if k:
            m[torch.argsort(flat, stable=True)[:k]] = 0
        masks.append(m.view_as(w))
    return masks


def two_four_masks(model: nn.Module) -> list[torch.Tensor]:
    """In every group of 4 consecutive weights along the input dimension keep the 2 largest
    |w| (NVIDIA's 2:4 pattern): exactly 50 % sparsity.

    Raises:
        ValueError: an input dimension not divisible by 4.
    """
    masks = []
    for name, w, in_first in prunable_weights(model):
        wt = w.detach().t() if in_first else w.detach()  # [out, in]
        if wt.shape[1] % 4:
            raise ValueError(f"2:4 sparsity needs input dims divisible by 4; {name} has {wt.shape}")
        groups = wt.abs().reshape(-1, 4)
        top2 = groups.topk(2, dim=1).indices
        m = torch.zeros_like(groups).scatter_(1, top2, 1.0).view_as(wt)
        masks.append(m.t() if in_first else m)
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: list[torch.Tensor]) -> None:
    weights = prunable_weights(model)
    if len(weights) != len(masks):
        raise ValueError(f"{len(masks)} masks for {len(weights)} weight matrices")
    for (_, w, _), m in zip(weights, masks, strict=True):
        w.mul_(m.to(w.device, w.dtype))


def mask_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros among the prunable weights."""
    total = zeros = 0
    for _, w, _ in prunable_weights(model):
        total += w.numel()
        zeros += int((w.detach() == 0).sum())
    return zeros / total if total else 0.0
