"""One backward pass per batch, shared by every gradient-based method.

fisher, fisher_mask, gradient and taylor each read the same backward pass differently, so
the engine runs a single forward + backward of the batch-mean cross-entropy per calibration
batch and hands the result to each requested method's reducer (registered with
:func:`register_grad_reducer`, which declares what the reducer needs). Only what a requested
reducer needs is computed:

* ``params`` — the batch-mean parameter gradients ``∂L_b/∂θ`` (taylor). Without it the
  backward requests no parameter gradient, so no weight-gradient matmul runs.
* ``example_norms`` — per-example ``Σ_{θ∈layer} (∂ℓ_i/∂θ)²`` (fisher), from layer hooks
  (:mod:`engine.importance.ghostnorm`), never one backward per example.
* ``hidden`` — per-example ``‖∂ℓ_i/∂h_l‖₂`` of each block's output hidden states over real
  tokens (gradient).
* ``gates`` — per-layer gates for the mask-based Fisher (Kwon et al. 2022). The gated block
  output is ``out + (g − 1)·(out − in)`` with one gate per example and layer: at ``g = 1``
  this is bit-identical to ``out``, so the gates never change any other gradient, and
  ``∂L_i/∂g_i`` is the per-example gate gradient.

The backward starts from block 0's input, made a leaf, so every block is reached even when
no parameter requires grad (e.g. frozen embeddings).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engine.importance._common import (
    forward_logits,
    layer_hooks,
    layer_params,
    loss_per_example,
    num_examples,
)
from engine.importance.base import (
    SHARED_PASSES,
    Batch,
    LayerScores,
    from_rows,
    register_shared_pass,
)
from engine.importance.config import ImportanceConfig
from engine.importance.ghostnorm import per_example_sq_norms
from engine.models import layer_list
from engine.tasks import DEFAULT_TASK, Task

__all__ = [
    "NEEDS",
    "GradBatch",
    "gradient_batch",
    "register_grad_reducer",
    "run_backward_pass",
]

NEEDS = frozenset({"params", "example_norms", "hidden", "gates"})


@dataclass
class GradBatch:
    """What one backward of the batch-mean cross-entropy exposes for one batch.

    Attributes:
        params: each block's parameters, in forward order.
        grads: ``∂L_b/∂θ`` matching ``params`` (zeros where the loss does not reach), or None
            when no reducer asked for parameter gradients.
        example_sq_norms: ``[B, L]`` per-example ``Σ_{θ∈layer} (∂ℓ_i/∂θ)²`` (float64), or None.
        hidden_grad_norms: ``[B, L]`` per-example ``‖∂ℓ_i/∂h_l‖₂`` over real tokens, or None.
        gate_grads: ``[L, B]`` per-example gate gradients ``∂ℓ_i/∂g_{l,i}``, or None.
        batch_size: examples in the batch.
    """

    params: list[list[torch.Tensor]]
    grads: list[list[torch.Tensor]] | None
    example_sq_norms: np.ndarray | None
    hidden_grad_norms: np.ndarray | None
    gate_grads: torch.Tensor | None
    batch_size: int

    def abs_taylor(self) -> np.ndarray:
        """``Σ_{θ∈layer} |θ · ∂L_b/∂θ|`` per layer (float64), with multi-tensor
        ``torch._foreach`` kernels (one launch per layer) and one transfer to the host."""
        if self.grads is None:
            raise ValueError("abs_taylor needs the parameter gradients of the backward pass")
        per_layer = [
            torch.stack(torch._foreach_norm(torch._foreach_mul(ps, gs), 1)).double().sum()
            for ps, gs in zip(self.params, self.grads, strict=True)
        ]
        return torch.stack(per_layer).cpu().numpy() if per_layer else np.zeros(0)


Reducer = Callable[[GradBatch], np.ndarray]
_REDUCERS: dict[str, tuple[Reducer, frozenset[str]]] = {}


def register_grad_reducer(
    name: str, *, needs: frozenset[str] | set[str]
) -> Callable[[Reducer], Reducer]:
    """Make method ``name`` a consumer of the shared backward pass; ``needs`` ⊆ :data:`NEEDS`.

    The reducer returns ``[B, L]`` per-example contributions or an ``[L]`` batch vector.
    """
    unknown = set(needs) - NEEDS
    if unknown or not needs:
        raise ValueError(f"{name}: needs must be a non-empty subset of {sorted(NEEDS)}")

    def deco(fn: Reducer) -> Reducer:
        SHARED_PASSES["backward"].join(name)
        _REDUCERS[name] = (fn, frozenset(needs))
        return fn

    return deco


def _leaf_input(block: nn.Module):
    """Forward pre-hook making the block's hidden-state input a fresh leaf that requires grad."""

    def pre(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = kwargs["hidden_states"].detach().requires_grad_(True)
        return args, kwargs

    return pre


def gradient_batch(
    model: nn.Module, batch: Batch, *, needs: frozenset[str], task: str | Task = DEFAULT_TASK
) -> GradBatch:
    """Forward + one backward of the batch-mean ``task`` loss, computing only what ``needs``
    asks."""
    blocks = list(layer_list(model))
    params = layer_params(model)
    flat = [p for ps in params for p in ps]
    bsz = int(batch["input_ids"].shape[0])
    device = batch["input_ids"].device
    gate = (
        torch.ones(len(blocks), bsz, device=device, requires_grad=True)
        if "gates" in needs
        else None
    )
    real = batch["attention_mask"].to(torch.float64)
    hidden_sq = torch.zeros(bsz, len(blocks), dtype=torch.float64, device=device)
    leaf: list[torch.Tensor] = []

    def hook(i: int, h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor | None:
        if i == 0:
            leaf.append(h_in)
        out = h_out
        if gate is not None:
            g = gate[i].to(h_out.dtype).view(-1, *([1] * (h_out.dim() - 1)))
            out = h_out + (g - 1) * (h_out - h_in)
        if "hidden" in needs and out.requires_grad:

            def on_grad(gz: torch.Tensor, i: int = i) -> None:
                per_tok = (gz.detach().double() * bsz).pow(2).sum(-1)  # [B, S]: ∂ℓ_i/∂h
                hidden_sq[:, i] += (per_tok * real).sum(1)

            out.register_hook(on_grad)
        return None if out is h_out else out

    want_params = "params" in needs
    was = [p.requires_grad for p in flat]
    pre = blocks[0].register_forward_pre_hook(_leaf_input(blocks[0]), with_kwargs=True)
    try:
        with ExitStack() as stack:
            stack.enter_context(torch.enable_grad())
            stack.enter_context(layer_hooks(model, hook))
            norms = (
                stack.enter_context(per_example_sq_norms(model, bsz))
                if "example_norms" in needs
                else None
            )
            for p in flat:
                p.requires_grad_(want_params)
            loss = loss_per_example(forward_logits(model, batch), batch, task).mean()
            inputs = [*leaf, *([gate] if gate is not None else []), *(flat if want_params else [])]
            got = torch.autograd.grad(loss, inputs, allow_unused=True)
    finally:
        pre.remove()
        for p, w in zip(flat, was, strict=True):
            p.requires_grad_(w)
    grads = None
    if want_params:
        grads_flat = [
            torch.zeros_like(p) if g is None else g.detach()
            for p, g in zip(flat, got[len(got) - len(flat) :], strict=True)
        ]
        grads, k = [], 0
        for ps in params:
            grads.append(grads_flat[k : k + len(ps)])
            k += len(ps)
    # ∂(mean_i ℓ_i)/∂g_i = ∂ℓ_i/∂g_i / B, so scale back to the per-example loss
    gate_grads = None if gate is None else got[1].detach().float() * bsz
    return GradBatch(
        params=[[p.detach() for p in ps] for ps in params],
        grads=grads,
        example_sq_norms=None if norms is None else norms.total.cpu().numpy(),
        hidden_grad_norms=hidden_sq.sqrt().cpu().numpy() if "hidden" in needs else None,
        gate_grads=gate_grads,
        batch_size=bsz,
    )


@register_shared_pass("backward")
def run_backward_pass(
    model: nn.Module, batches: Sequence[Batch], cfg: ImportanceConfig, wanted: frozenset[str]
) -> dict[str, LayerScores]:
    """One backward per batch; every wanted gradient method reduces it to a layer vector."""
    unknown = set(wanted) - set(_REDUCERS)
    if unknown:
        raise ValueError(
            f"not gradient-pass methods: {sorted(unknown)} (known: {sorted(_REDUCERS)})"
        )
    needs = frozenset().union(*(_REDUCERS[m][1] for m in wanted))
    rows: dict[str, list[np.ndarray]] = {m: [] for m in wanted}
    for batch in batches:
        gb = gradient_batch(model, batch, needs=needs, task=cfg.task)
        for m in wanted:
            rows[m].append(np.asarray(_REDUCERS[m][0](gb), dtype=np.float64))
    sizes = num_examples(batches)
    return {m: from_rows(m, rows[m], sizes) for m in sorted(wanted)}
