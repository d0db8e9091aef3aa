"""Least-squares reconstruction of a pruned layer's output projection.

Removing attention heads or FFN neurons deletes input columns of the projection that reads
them (``attention.output.dense`` / ``output.dense`` in BERT; see
:class:`engine.compress.structure.BlockParts`). The columns that stay can absorb part of
what the removed ones carried, when the removed units' outputs correlate with the kept
ones'. Reconstruction refits the projection's weight and bias on calibration tokens so its
output stays as close as possible to the unpruned layer's (the layer-wise reconstruction of
Kwon et al., "A Fast Post-Training Pruning Framework for Transformers", NeurIPS 2022):

    W', b' = argmin Σ_tokens ‖W' x_K + b' − (W x + b)‖² + λ ‖W'‖²

where x is the projection's input on the unpruned model and x_K its kept columns. With
G = Σ [x; 1][x; 1]ᵀ (the input's Gram matrix, bias column appended) the right-hand side is
G_{K,:} [Wᵀ; bᵀ], so one Gram per projection — accumulated over the calibration batches in
one forward pass — is all it needs, whatever is removed afterwards. λ = ``DAMPING`` × the mean
of G's diagonal over the kept columns (as in SparseGPT/OBC: it keeps the solve stable when
the kept inputs are nearly collinear or few tokens were seen). Padding tokens are left out.

Each layer is fitted to the unpruned layer's output on the unpruned model's inputs (not on
the inputs the already-pruned earlier layers would give it): one pass, no ordering effects.

``bias`` compensation (:func:`compensate_bias`) is the cheap half of that: the kept columns
stay as they are and only the bias absorbs the removed units' *mean* contribution,

    b' = b + Σ_{j removed} W[:, j] · E[x_j]

(the bias compensation of FLAP: An et al., "Fluctuation-based Adaptive Structured Pruning for
Large Language Models", AAAI 2024). The removed units' output then errs by their fluctuation
around the mean only; nothing is fitted, so nothing can overfit a few calibration batches.
The means come from one forward pass that keeps only each column's sum (:func:`input_moments`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from engine.compress.structure import block_parts
from engine.models import layer_list

__all__ = [
    "DAMPING",
    "MODES",
    "assign",
    "compensate_bias",
    "input_grams",
    "input_moments",
    "refit",
    "remove_refitted",
]

MODES = ("none", "bias", "least_squares")  # pipeline.prune.reconstruct

DAMPING = 1e-4


def _accumulate(
    model: nn.Module,
    batches: Sequence[dict],
    device: torch.device | str,
    reduce: Callable[[torch.Tensor], torch.Tensor],
) -> list[dict[str, torch.Tensor]]:
    """Per block, ``{"attn_out": Σ, "ffn_out": Σ}``: the sum over ``batches`` of ``reduce``
    of each output projection's input at the non-padding tokens ([tokens, in], float64), in
    one forward pass (``attn_out`` absent when the block has no prunable attention)."""
    if not batches:
        raise ValueError("reconstruction needs calibration batches (pipeline.prune.score_batches)")
    acc: list[dict[str, torch.Tensor]] = [{} for _ in layer_list(model)]
    keep_tokens: list[torch.Tensor] = []

    def hook(layer: int, name: str):
        def fn(_m: nn.Module, args: tuple, _out: torch.Tensor) -> None:
            x = args[0]
            x = x[keep_tokens[0]] if x.dim() == 3 else x  # [tokens, in]
            acc[layer][name] = acc[layer].get(name, 0) + reduce(x.double())

        return fn

    handles = []
    for layer, block in enumerate(layer_list(model)):
        parts = block_parts(block)
        if parts.attn_out is not None:
            handles.append(parts.attn_out.register_forward_hook(hook(layer, "attn_out")))
        handles.append(parts.ffn_out.register_forward_hook(hook(layer, "ffn_out")))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                mask = inputs.get("attention_mask")
                ids = inputs["input_ids"]
                keep_tokens[:] = [mask.bool() if mask is not None else torch.ones_like(ids).bool()]
                model(**inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return acc


def input_grams(
    model: nn.Module, batches: Sequence[dict], device: torch.device | str
) -> list[dict[str, torch.Tensor]]:
    """Per block, ``{"attn_out": G, "ffn_out": G}``: Σ [x; 1][x; 1]ᵀ over the non-padding
    tokens of ``batches`` of each projection's input (float64; ``attn_out`` absent when the
    block has no prunable attention)."""

    def gram(x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, x.new_ones(x.shape[0], 1)], 1)
        return x.T @ x

    return _accumulate(model, batches, device, gram)


def input_moments(
    model: nn.Module, batches: Sequence[dict], device: torch.device | str
) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Per block, ``{"attn_out": (mean, var), "ffn_out": (mean, var)}``: each input column's
    mean and (population) variance over the non-padding tokens of ``batches`` — the Gram's
    bias column and diagonal, at O(tokens × in) instead of O(tokens × in²)."""

    def moments(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.sum(0), (x * x).sum(0), x.new_full((x.shape[1],), x.shape[0])])

    out = []
    for block in _accumulate(model, batches, device, moments):
        stats = {}
        for name, (s, sq, n) in block.items():
            mean = s / n
            stats[name] = (mean, (sq / n - mean**2).clamp_min(0))
        out.append(stats)
    return out


def refit(
    module: nn.Module, gram: torch.Tensor, keep: Sequence[int], conv1d: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reconstructed ``(weight, bias)`` of ``module`` (still unpruned) when only its input
    columns ``keep`` remain, in the module's own layout (``nn.Linear``: weight [out, |K|];
    GPT-2 ``Conv1D``: [|K|, out]) and dtype. ``gram`` is its input's Gram from
    :func:`input_grams`. A module without a bias gets none (the bias row is left out)."""
    w = module.weight.detach().double()
    w_t = w if conv1d else w.T  # [in, out]
    n_in = w_t.shape[0]
    has_bias = getattr(module, "bias", None) is not None
    beta = w_t
    rows = list(keep)
    if has_bias:
        beta = torch.cat([w_t, module.bias.detach().double()[None, :]], 0)
        rows.append(n_in)
        g = gram
    else:
        g = gram[:n_in, :n_in]
    idx = torch.tensor(rows, dtype=torch.long)
    g_kk = g[idx][:, idx].clone()
    diag = torch.diagonal(g_kk)
    lam = DAMPING * diag[: len(keep)].mean().clamp_min(1e-12)
    diag[: len(keep)] += lam
    rhs = g[idx] @ beta
    sol = torch.linalg.solve(g_kk, rhs)  # [|K| (+1), out]
    new_w = sol[: len(keep)]
    new_w = new_w if conv1d else new_w.T
    new_b = sol[len(keep)] if has_bias else None
    dtype = module.weight.dtype
    return new_w.to(dtype), (new_b.to(dtype) if new_b is not None else None)


def compensate_bias(
    module: nn.Module, mean: torch.Tensor, keep: Sequence[int], conv1d: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``module``'s (still unpruned) kept input columns ``keep`` unchanged and its bias plus
    the removed columns' mean contribution, Σ_{j ∉ keep} W[:, j] · mean[j], in the layout of
    :func:`refit`. ``mean``: the input's per-column mean (:func:`input_moments`)."""
    if getattr(module, "bias", None) is None:
        raise ValueError(
            f"bias compensation needs a bias on {type(module).__name__}; this model's output "
            "projection has none (use reconstruct: least_squares or none)"
        )
    w = module.weight.detach().double()
    w_t = w if conv1d else w.T  # [in, out]
    n_in = w_t.shape[0]
    mean = mean.to(w_t)
    kept = torch.tensor(list(keep), dtype=torch.long)
    gone = torch.ones(n_in, dtype=torch.bool)
    gone[kept] = False
    new_b = module.bias.detach().double() + mean[gone] @ w_t[gone]
    new_w = w_t[kept] if conv1d else w_t[kept].T
    dtype = module.weight.dtype
    return new_w.to(dtype), new_b.to(dtype)


def assign(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Put a :func:`refit` result into the (already sliced) ``module``."""
    if module.weight.shape != weight.shape:
        raise ValueError(
            f"refit weight {tuple(weight.shape)} ≠ module {tuple(module.weight.shape)}"
        )
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)


def remove_refitted(
    block: nn.Module,
    part: str,
    stats: torch.Tensor,
    gone: set[int],
    remove: Callable[[], None],
    mode: str = "least_squares",
) -> None:
    """Run ``remove()``, which drops input columns ``gone`` of the block's ``part`` projection
    (``"attn_out"`` or ``"ffn_out"`` of :class:`~engine.compress.structure.BlockParts`), and
    put into that projection the columns that stay refitted by ``mode``: ``least_squares``
    (:func:`refit`; ``stats`` is the input's Gram) or ``bias`` (:func:`compensate_bias`;
    ``stats`` is the input's mean)."""
    parts = block_parts(block)
    module = getattr(parts, part)
    n_in = module.weight.shape[0 if parts.conv1d else 1]
    fit = {"least_squares": refit, "bias": compensate_bias}.get(mode)
    if fit is None:
        raise ValueError(f"unknown reconstruct mode {mode!r} (known: least_squares, bias)")
    new = fit(module, stats, [c for c in range(n_in) if c not in gone], parts.conv1d)
    remove()
    assign(getattr(block_parts(block), part), *new)
