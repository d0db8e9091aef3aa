"""Per-example squared gradient norms of each block's parameters, without per-example backwards.

For the empirical Fisher trace ``(1/N) Σ_i ‖∂ℓ_i/∂θ_layer‖²`` the engine needs, for every
example i and block l, ``Σ_{θ∈l} (∂ℓ_i/∂θ)²``. Materialising per-example gradients costs
memory ``batch × parameters``; instead, during one forward + backward of the batch-mean loss,
forward hooks keep each parameterised module's input ``a`` and a hook on its output receives
``g = ∂L/∂z``; the per-example norms then follow from ``(a, g)``:

* Linear-like modules (``nn.Linear``, transformers' ``Conv1D``): the weight gradient of
  example i is ``A_iᵀ G_i`` (tokens s), so, with the "ghost norm" identity (Goodfellow 2015;
  Li et al. 2022, "Large Language Models Can Be Strong Differentially Private Learners"; the
  same identity as opacus' ``compute_linear_norm_sample``),
  ``‖A_iᵀ G_i‖²_F = Σ_{s,t} (a_s·a_t)(g_s·g_t)`` — memory ``batch × tokens²``, not
  ``batch × in × out``. When ``tokens·(in + out) ≥ in·out`` the per-example gradient is
  formed directly instead (cheaper then). The bias gradient is ``Σ_s g_s``.
* ``nn.LayerNorm``: in closed form, ``∂ℓ_i/∂w = Σ_s g_s ⊙ x̂_s`` and ``∂ℓ_i/∂b = Σ_s g_s``
  (:func:`layernorm_sq_norms`).
* Any other module owning parameters (Llama's RMSNorm, DeBERTa's attention
  biases, …, all small): exact per-example gradients of ``Σ_s g_s · f(a_s; θ)`` with
  ``torch.func.vmap(grad(...))`` over the module alone, its own parameters only (memory
  ``batch × those parameters``; the module's forward runs once more per batch).

Gradients of the batch-mean loss are ``∂L/∂z_i = (1/B) ∂ℓ_i/∂z_i`` (examples do not interact
in a transformer in eval mode), so norms are rescaled by ``B²``. Parameters need not require
grad: only the activations' gradients are used, so a backward that requests no parameter
gradient skips every weight-gradient matmul.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from engine.models import layer_list

__all__ = ["PerExampleNorms", "layernorm_sq_norms", "linear_sq_norms", "per_example_sq_norms"]


def _is_linear_like(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    # transformers.pytorch_utils.Conv1D (GPT-2): y = x @ W + b with W [in, out]
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None


def linear_sq_norms(
    a: torch.Tensor, g: torch.Tensor, *, has_bias: bool, mode: str = "auto"
) -> torch.Tensor:
    """``‖∂ℓ_i/∂W‖² + ‖∂ℓ_i/∂b‖²`` per example for ``z = a Wᵀ + b``, from ``a [B, …, in]`` and
    ``g = ∂ℓ/∂z [B, …, out]``; ``mode`` is ``"ghost"``, ``"direct"`` or ``"auto"``."""
    a = a.float().reshape(a.shape[0], -1, a.shape[-1])
    g = g.float().reshape(g.shape[0], -1, g.shape[-1])
    tokens, d_in, d_out = a.shape[1], a.shape[-1], g.shape[-1]
    if mode == "auto":
        mode = "ghost" if tokens * (d_in + d_out) < d_in * d_out else "direct"
    if mode == "ghost":
        weight = (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
    elif mode == "direct":
        weight = torch.bmm(a.transpose(1, 2), g).pow(2).sum((1, 2))
    else:
        raise ValueError(f"mode must be 'ghost', 'direct' or 'auto', got {mode!r}")
    weight = weight.clamp_min(0.0)  # the ghost sum can round a hair below 0
    if has_bias:
        weight = weight + g.sum(1).pow(2).sum(-1)
    return weight.double()


def layernorm_sq_norms(module: nn.LayerNorm, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``‖∂ℓ_i/∂w‖² + ‖∂ℓ_i/∂b‖²`` per example of ``y = w ⊙ x̂ + b`` (x̂: ``x`` normalised
    over the normalised dims), in closed form: ``∂ℓ_i/∂w = Σ_s g_s ⊙ x̂_s``, ``∂ℓ_i/∂b =
    Σ_s g_s`` — one fused reduction instead of a ``torch.func`` re-run of the module (many
    small kernels on a GPU)."""
    dims = tuple(range(-len(module.normalized_shape), 0))
    x = x.float()
    xhat = (x - x.mean(dims, keepdim=True)) * torch.rsqrt(
        x.var(dims, keepdim=True, unbiased=False) + module.eps
    )
    batch = g.shape[0]
    g = g.float()
    out = torch.zeros(batch, dtype=torch.float64, device=g.device)
    if module.weight is not None:
        dw = (g * xhat).reshape(batch, -1, *module.normalized_shape).sum(1)
        out = out + dw.double().pow(2).reshape(batch, -1).sum(1)
    if module.bias is not None:
        db = g.reshape(batch, -1, *module.normalized_shape).sum(1)
        out = out + db.double().pow(2).reshape(batch, -1).sum(1)
    return out


def _generic_sq_norms(
    module: nn.Module, args: tuple, kwargs: dict, g: torch.Tensor, batch: int
) -> torch.Tensor:
    """Exact per-example ``Σ_θ (∂ℓ_i/∂θ)²`` over ``module``'s own parameters (torch.func).

    The module is re-run per example under ``vmap``: every tensor argument whose leading
    dimension is the batch is split by example, the others are passed whole (e.g. DeBERTa's
    relative-position embeddings beside its hidden states and mask).
    """
    from torch.func import functional_call, grad, vmap
    from torch.utils._pytree import tree_flatten, tree_unflatten

    params = {n: p.detach() for n, p in module.named_parameters(recurse=False)}
    flat, spec = tree_flatten((args, kwargs))
    split = [isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == batch for t in flat]
    per_ex = [t.detach() for t, s in zip(flat, split, strict=True) if s]

    def inner(p: dict[str, torch.Tensor], gz: torch.Tensor, *xs: torch.Tensor) -> torch.Tensor:
        it = iter(xs)
        items = [next(it).unsqueeze(0) if s else t for t, s in zip(flat, split, strict=True)]
        a, kw = tree_unflatten(items, spec)
        out = functional_call(module, p, tuple(a), dict(kw))
        out = out if isinstance(out, torch.Tensor) else out[0]
        return (out.float() * gz.unsqueeze(0).float()).sum()

    dims = (None, 0, *([0] * len(per_ex)))
    per = vmap(grad(inner), in_dims=dims)(params, g.detach(), *per_ex)
    return sum(v.double().pow(2).reshape(v.shape[0], -1).sum(1) for v in per.values())


class PerExampleNorms:
    """Accumulates ``[B, L]`` per-example squared parameter-gradient norms per block while
    open (see the module docstring). Use through :func:`per_example_sq_norms`."""

    def __init__(self, model: nn.Module, batch_size: int, *, mode: str = "auto") -> None:
        self.model = model
        self.batch_size = batch_size
        self.mode = mode
        self.blocks = list(layer_list(model))
        device = next(model.parameters()).device
        self.total = torch.zeros(batch_size, len(self.blocks), dtype=torch.float64, device=device)
        self._calls: dict[nn.Module, int] = {}
        self._inside = False  # no hooks while the torch.func fallback re-runs a module
        self._handles: list[Any] = []

    def _owners(self) -> list[tuple[int, nn.Module]]:
        owners = []
        for layer, block in enumerate(self.blocks):
            for mod in block.modules():
                if any(True for _ in mod.parameters(recurse=False)):
                    owners.append((layer, mod))
        return owners

    def _hook(self, layer: int, module: nn.Module):
        linear = _is_linear_like(module)
        has_bias = getattr(module, "bias", None) is not None

        def fwd(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            if self._inside:
                return
            self._calls[mod] = self._calls.get(mod, 0) + 1
            if self._calls[mod] > 1:
                raise RuntimeError(
                    f"{type(mod).__name__} in block {layer} ran twice in one forward: "
                    "per-example gradient norms of a reused module are not supported"
                )
            z = out if isinstance(out, torch.Tensor) else out[0]
            if not z.requires_grad:
                return
            layernorm = isinstance(mod, nn.LayerNorm)
            x = (
                (args[0] if args else next(iter(kwargs.values()))).detach()
                if linear or layernorm
                else None
            )
            scale = float(self.batch_size)

            def on_grad(gz: torch.Tensor) -> None:
                gz = gz.detach() * scale  # ∂L/∂z → ∂ℓ_i/∂z
                if linear:
                    sq = linear_sq_norms(x, gz, has_bias=has_bias, mode=self.mode)
                elif layernorm:
                    sq = layernorm_sq_norms(mod, x, gz)
                else:
                    self._inside = True
                    try:
                        with torch.enable_grad():
                            sq = _generic_sq_norms(mod, args, kwargs, gz, self.batch_size)
                    finally:
                        self._inside = False
                self.total[:, layer] += sq.to(self.total.device)

            z.register_hook(on_grad)

        return fwd

    def __enter__(self) -> PerExampleNorms:
        for layer, mod in self._owners():
            self._handles.append(
                mod.register_forward_hook(self._hook(layer, mod), with_kwargs=True)
            )
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@contextmanager
def per_example_sq_norms(
    model: nn.Module, batch_size: int, *, mode: str = "auto"
) -> Iterator[PerExampleNorms]:
    """Open while running one forward and backward of the batch-mean loss; afterwards
    ``.total`` holds ``Σ_{θ∈block} (∂ℓ_i/∂θ)²`` as ``[B, L]`` float64."""
    with PerExampleNorms(model, batch_size, mode=mode) as norms:
        yield norms
