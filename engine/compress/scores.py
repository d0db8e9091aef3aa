"""Importance of each attention head and FFN neuron, by a configurable criterion.

* ``magnitude`` — L2 norm of the unit's weights: a head's rows of Q, K, V and its columns of
  the output projection; a neuron's row of the up (and gate) projection and its column of the
  down projection.
* ``taylor`` — first-order Taylor estimate of the loss change when the unit is removed
  (Molchanov et al. 2017; Michel et al. 2019): a mask m = 1 multiplies each unit's output and
  the score is the batch mean of |∂L/∂m|.
* ``fisher`` — the empirical Fisher information of the same mask, batch mean of (∂L/∂m)²
  (Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers").
* ``weight_taylor`` — first-order Taylor per *weight*, summed over the unit (Molchanov et al.
  2019, Torch-Pruning's ``GroupTaylorImportance``): Σ |w · ∂L/∂w| over the unit's weights
  (the same entries as magnitude, biases left out), with ∂L/∂w summed over the batches.
* ``fluctuation`` — FLAP's fluctuation metric (An et al. 2024, "Fluctuation-based Adaptive
  Structured Pruning for Large Language Models"): how much the unit's output *varies* across
  the batches' real tokens, as the output projection sees it — for each input column j of
  that projection, the token variance of x_j × ‖W[:, j]‖², summed over the unit's columns.
  What a unit outputs on average the bias can take over when it goes
  (``pipeline.prune.reconstruct: bias``); only the fluctuation is lost. No gradients.

Head scores are per *head unit*, the heads :func:`engine.compress.structure.remove_heads`
removes together: one head, or under grouped-query attention (Llama with fewer key/value
heads than query heads) one key/value group — its KV head and the query heads sharing it.
Magnitude takes the norm of all of the unit's weights, the gradient criteria one mask on the
unit's slice of the output projection's input (the heads of a group are adjacent there).

Higher = more important to keep. L is the study task's loss on the given training batches
(cross-entropy for classification, :mod:`engine.tasks`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from engine.compress.structure import (
    block_parts,
    ffn_width,
    head_group,
    head_ids,
    head_unit_weights,
)
from engine.models import layer_list
from engine.tasks import DEFAULT_TASK, Task, get_task
from sweepcore.registry import Registry

__all__ = ["CRITERIA", "CriterionFn", "unit_scores"]

UnitScores = tuple[list[torch.Tensor] | None, list[torch.Tensor]]  # (heads, neurons) per layer
# criterion(model, batches, heads, device, task) -> (head unit scores or None, neuron scores),
# per layer in the blocks' current order; higher = more important to keep
Batches = list[dict[str, torch.Tensor]]
CriterionFn = Callable[[nn.Module, Batches, bool, torch.device, Task], UnitScores]
# the pruning criteria, one function each (``pipeline.prune.criterion`` names one, or "auto")
CRITERIA: Registry[CriterionFn] = Registry("pruning criterion")


def _grouped(w: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Sum over every axis but ``dim``, grouped into ``size`` units along it."""
    w = w.detach().float().transpose(0, dim) if dim else w.detach().float()
    return w.reshape(size, -1).sum(1)


def _per_unit(
    model: nn.Module,
    heads: bool,
    of: Callable[[nn.Module], torch.Tensor],
    elem: Callable[[torch.Tensor], torch.Tensor],
    finish: Callable[[torch.Tensor], torch.Tensor] = lambda s: s,
) -> UnitScores:
    """Per head unit and FFN neuron: ``finish`` of Σ ``elem`` over the entries the unit owns
    in ``of(layer)`` (a tensor shaped like ``layer.weight``), layer by layer."""
    h_scores: list[torch.Tensor] = []
    n_scores: list[torch.Tensor] = []
    for block in layer_list(model):
        p = block_parts(block)
        width = ffn_width(block)
        s = torch.zeros(width)
        for lin in p.ffn_in:
            s += _grouped(elem(of(lin)), 1 if p.conv1d else 0, width).cpu()
        s += _grouped(elem(of(p.ffn_out)), 0 if p.conv1d else 1, width).cpu()
        n_scores.append(finish(s))
        if heads:
            hs = sum(elem(w).sum(1) for w in head_unit_weights(block, of))
            h_scores.append(finish(hs.cpu()))
    return (h_scores if heads else None), n_scores


def _magnitude(model: nn.Module, heads: bool) -> UnitScores:
    return _per_unit(
        model, heads, lambda layer: layer.weight, lambda w: w.float().pow(2), torch.sqrt
    )


def _weight_taylor(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    heads: bool,
    device: torch.device,
    task: Task,
) -> UnitScores:
    params = list(model.parameters())
    saved = [(p.requires_grad, p.grad) for p in params]
    was_training = model.training
    model.eval()
    n = 0
    try:
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        for b in batches:
            logits = model(
                input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)
            ).logits
            task.loss(logits, b[task.view.target].to(device)).backward()
            n += 1
        if n == 0:
            raise ValueError("weight_taylor scores need at least one batch")

        def wg(layer: nn.Module) -> torch.Tensor:
            return layer.weight.detach() * layer.weight.grad

        return _per_unit(model, heads, wg, lambda w: w.float().abs())
    finally:
        for p, (flag, grad) in zip(params, saved, strict=True):
            p.requires_grad_(flag)
            p.grad = grad
        model.train(was_training)


def _units(block: nn.Module) -> int:
    """Head units in ``block`` now (heads, or key/value groups under grouped-query attention)."""
    return len(head_ids(block)) // head_group(block)


def _mask_hook(mask: torch.Tensor, grouped: bool):
    def hook(_mod: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if grouped:  # [..., heads · d] → scale each head's slice
            x = (x.unflatten(-1, (mask.numel(), -1)) * mask[:, None]).flatten(-2)
        else:
            x = x * mask
        return (x, *args[1:])

    return hook


def _mask_gradients(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    heads: bool,
    squared: bool,
    device: torch.device,
    task: Task,
) -> UnitScores:
    blocks = list(layer_list(model))
    n_masks = [torch.ones(ffn_width(b), device=device, requires_grad=True) for b in blocks]
    h_masks = (
        [torch.ones(_units(b), device=device, requires_grad=True) for b in blocks] if heads else []
    )
    handles = []
    for i, b in enumerate(blocks):
        p = block_parts(b)
        handles.append(p.ffn_out.register_forward_pre_hook(_mask_hook(n_masks[i], False)))
        if heads:
            handles.append(p.attn_out.register_forward_pre_hook(_mask_hook(h_masks[i], True)))
    masks = [*n_masks, *h_masks]
    acc = [torch.zeros_like(m) for m in masks]
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval()
    n = 0
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for b in batches:
            logits = model(
                input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)
            ).logits
            loss = task.loss(logits, b[task.view.target].to(device))
            grads = torch.autograd.grad(loss, masks)
            for a, g in zip(acc, grads, strict=True):
                a += g.pow(2) if squared else g.abs()
            n += 1
    finally:
        for h in handles:
            h.remove()
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was_training)
    if n == 0:
        raise ValueError("mask-gradient scores need at least one batch")
    out = [(a / n).detach().cpu() for a in acc]
    k = len(n_masks)
    return (out[k:] if heads else None), out[:k]


def _fluctuation(
    model: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    heads: bool,
    device: torch.device,
) -> UnitScores:
    from engine.compress.reconstruct import input_moments

    if not batches:
        raise ValueError("fluctuation scores need at least one batch")
    h_scores: list[torch.Tensor] = []
    n_scores: list[torch.Tensor] = []

    def column_scores(module: nn.Module, var: torch.Tensor, conv1d: bool) -> torch.Tensor:
        w = module.weight.detach().double()
        col_norm2 = (w**2).sum(1 if conv1d else 0)  # ‖W[:, j]‖² per input column j
        return (var * col_norm2).float().cpu()

    for block, m in zip(layer_list(model), input_moments(model, batches, device), strict=True):
        p = block_parts(block)
        n_scores.append(column_scores(p.ffn_out, m["ffn_out"][1], p.conv1d))
        if heads:
            cols = column_scores(p.attn_out, m["attn_out"][1], p.conv1d)
            h_scores.append(cols.reshape(_units(block), -1).sum(1))
    return (h_scores if heads else None), n_scores


def unit_scores(
    model: nn.Module,
    criterion: str,
    *,
    heads: bool,
    batches: Iterable[dict[str, torch.Tensor]] = (),
    device: torch.device | str = "cpu",
    task: str | Task = DEFAULT_TASK,
) -> UnitScores:
    """Per-layer scores of the head units (None when ``heads`` is false) and the FFN neurons,
    in the blocks' current order. ``batches`` (input_ids, attention_mask, labels) are needed by
    the gradient criteria."""
    return CRITERIA.get(criterion)(
        model, list(batches), heads, torch.device(device), get_task(task)
    )


@CRITERIA.register("magnitude")
def _magnitude_criterion(
    model: nn.Module, batches: Batches, heads: bool, device: torch.device, task: Task
) -> UnitScores:
    return _magnitude(model, heads)


@CRITERIA.register("taylor")
def _taylor_criterion(
    model: nn.Module, batches: Batches, heads: bool, device: torch.device, task: Task
) -> UnitScores:
    return _mask_gradients(model, batches, heads, squared=False, device=device, task=task)


@CRITERIA.register("fisher")
def _fisher_criterion(
    model: nn.Module, batches: Batches, heads: bool, device: torch.device, task: Task
) -> UnitScores:
    return _mask_gradients(model, batches, heads, squared=True, device=device, task=task)


@CRITERIA.register("weight_taylor")
def _weight_taylor_criterion(
    model: nn.Module, batches: Batches, heads: bool, device: torch.device, task: Task
) -> UnitScores:
    return _weight_taylor(model, batches, heads, device, task)


@CRITERIA.register("fluctuation")
def _fluctuation_criterion(
    model: nn.Module, batches: Batches, heads: bool, device: torch.device, task: Task
) -> UnitScores:
    return _fluctuation(model, batches, heads, device)
