"""One backward pass per batch, shared by every gradient-based method.

fisher, fisher_mask, gradient and taylor each reduce the same gradients differently, so the
engine runs a single forward + backward per calibration batch and hands the result to each
requested method's reducer (registered with :func:`register_grad_reducer`).

Per-layer gates for the mask-based Fisher (Kwon et al. 2022) are added only when a reducer
needs them. The gated block output is ``out + (g - 1)·(out - in)`` with one gate per example
and layer: at ``g = 1`` this is bit-identical to ``out``, so the gates never change the
parameter gradients, and ``∂L_i/∂g_i`` is the per-example gate gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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

__all__ = ["GradBatch", "gradient_batch", "register_grad_reducer", "run_backward_pass"]


@dataclass
class GradBatch:
    """Gradients of the batch-mean cross-entropy for one batch.

    Attributes:
        params: each block's parameters, in forward order.
        grads: ``∂L/∂θ`` matching ``params`` (zeros for parameters the loss does not reach).
        gate_grads: ``[L, B]`` per-example gate gradients ``∂L_i/∂g_{l,i}``, or None.
        batch_size: examples in the batch.

    The per-layer reductions the built-in reducers need (:meth:`sq_norms`,
    :meth:`abs_taylor`) are computed once per batch with multi-tensor ``torch._foreach``
    kernels (one launch per layer, not one per parameter), stay on the device until all
    layers are done (one transfer, no per-layer sync) and are cached, so fisher and
    gradient share one reduction.
    """

    params: list[list[torch.Tensor]]
    grads: list[list[torch.Tensor]]
    gate_grads: torch.Tensor | None
    batch_size: int
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def sq_norms(self) -> np.ndarray:
        """``Σ_{θ∈layer} (∂L/∂θ)²`` per layer (float64)."""
        if "sq_norms" not in self._cache:
            # per-tensor L2 norms in the gradient dtype, squared and summed in float64
            self._cache["sq_norms"] = _per_layer(
                [torch.stack(torch._foreach_norm(gs, 2)).double().square() for gs in self.grads]
            )
        return self._cache["sq_norms"]

    def abs_taylor(self) -> np.ndarray:
        """``Σ_{θ∈layer} |θ · ∂L/∂θ|`` per layer (float64)."""
        if "abs_taylor" not in self._cache:
            self._cache["abs_taylor"] = _per_layer(
                [
                    torch.stack(torch._foreach_norm(torch._foreach_mul(ps, gs), 1)).double()
                    for ps, gs in zip(self.params, self.grads, strict=True)
                ]
            )
        return self._cache["abs_taylor"]


def _per_layer(per_tensor: list[torch.Tensor]) -> np.ndarray:
    """Sum each layer's per-tensor values on the device, then one copy to the host."""
    if not per_tensor:
        return np.zeros(0)
    return torch.stack([v.sum() for v in per_tensor]).cpu().numpy()


Reducer = Callable[[GradBatch], np.ndarray]
_REDUCERS: dict[str, tuple[Reducer, bool]] = {}


def register_grad_reducer(name: str, *, needs_gates: bool = False) -> Callable[[Reducer], Reducer]:
    """Make method ``name`` a consumer of the shared backward pass."""

    def deco(fn: Reducer) -> Reducer:
        SHARED_PASSES["backward"].join(name)
        _REDUCERS[name] = (fn, needs_gates)
        return fn

    return deco


def gradient_batch(model: nn.Module, batch: Batch, *, gates: bool) -> GradBatch:
    """Forward + one backward of the batch-mean loss; layer parameter gradients (and gate
    gradients when ``gates``)."""
    params = layer_params(model)
    flat = [p for ps in params for p in ps]
    bsz = int(batch["labels"].shape[0])
    gate = (
        torch.ones(len(params), bsz, device=batch["input_ids"].device, requires_grad=True)
        if gates
        else None
    )

    def hook(i: int, h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor | None:
        if gate is None:
            return None
        g = gate[i].to(h_out.dtype).view(-1, *([1] * (h_out.dim() - 1)))
        return h_out + (g - 1) * (h_out - h_in)

    was = [p.requires_grad for p in flat]
    try:
        for p in flat:
            p.requires_grad_(True)
        with torch.enable_grad(), layer_hooks(model, hook):
            loss = loss_per_example(forward_logits(model, batch), batch["labels"]).mean()
            inputs = [*flat, gate] if gate is not None else flat
            got = torch.autograd.grad(loss, inputs, allow_unused=True)
    finally:
        for p, w in zip(flat, was, strict=True):
            p.requires_grad_(w)
    grads_flat = [
        torch.zeros_like(p) if g is None else g.detach()
        for p, g in zip(flat, got[: len(flat)], strict=True)
    ]
    grads, k = [], 0
    for ps in params:
        grads.append(grads_flat[k : k + len(ps)])
        k += len(ps)
    # ∂(mean_i L_i)/∂g_i = ∂L_i/∂g_i / B, so scale back to the per-example loss
    gate_grads = None if gate is None else got[-1].detach().float() * bsz
    return GradBatch([[p.detach() for p in ps] for ps in params], grads, gate_grads, bsz)


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
    gates = any(_REDUCERS[m][1] for m in wanted)
    rows: dict[str, list[np.ndarray]] = {m: [] for m in wanted}
    for batch in batches:
        gb = gradient_batch(model, batch, gates=gates)
        for m in wanted:
            rows[m].append(np.asarray(_REDUCERS[m][0](gb), dtype=np.float64))
    sizes = num_examples(batches)
    return {m: from_rows(m, rows[m], sizes) for m in sorted(wanted)}
