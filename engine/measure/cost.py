"""Model cost: fvcore GFLOPs per example, parameter counts and weight bytes.

GFLOPs are ``2 × multiply-adds`` of the matmul-class ops (linear/addmm/matmul/bmm/einsum/
convolution and scaled-dot-product attention) that fvcore finds by tracing the *built* model.
fvcore counts one multiply-add as one "flop"; we double it so the number is comparable with
the usual "FLOPs = 2 × MACs" convention. Norms, activations, softmax and additions are not
counted (they are O(tokens · hidden), well under 1 % of a transformer's matmuls).

The trap this module exists for: with transformers' default SDPA attention, fvcore has no
handle for ``aten::scaled_dot_product_attention`` and silently skips it, so the attention
matmuls (QKᵀ and AV) vanish. We register one, and refuse to return a number when any other
matmul-class op or any module holding a weight matrix was not counted.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

with warnings.catch_warnings():
    # fvcore scripts its focal loss at import; torch >= 2.10 flags torch.jit.script as deprecated
    warnings.simplefilter("ignore", DeprecationWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import (
        addmm_flop_jit,
        bmm_flop_jit,
        conv_flop_jit,
        einsum_flop_jit,
        get_shape,
        linear_flop_jit,
        matmul_flop_jit,
    )

__all__ = [
    "MATMUL_HANDLES",
    "count_gflops",
    "count_multiply_adds",
    "count_params",
    "count_params_nonzero",
    "sdpa_flop_jit",
    "weights_bytes",
]


def sdpa_flop_jit(inputs: Sequence[Any], outputs: Sequence[Any]) -> int:
    """Multiply-adds of ``aten::scaled_dot_product_attention(q, k, v, ...)``.

    q: [..., L, E], k: [..., S, E], v: [..., S, Ev] → QKᵀ is L·S·E and AV is L·S·Ev per
    leading index (batch × query heads; grouped-query K/V heads are broadcast, so the count
    uses the query's leading dims). A causal mask is counted as dense, as the kernel is.
    """
    q, k, v = (get_shape(x) for x in inputs[:3])
    lead = 1
    for d in q[:-2]:
        lead *= d
    seq_q, d_qk = q[-2], q[-1]
    seq_k, d_v = k[-2], v[-1]
    return lead * seq_q * seq_k * (d_qk + d_v)


# Everything we count. Anything else is either harmless (elementwise, norms, indexing) or is
# caught by _MATMUL_LIKE below and raises.
MATMUL_HANDLES: dict[str, Any] = {
    "aten::linear": linear_flop_jit,
    "aten::addmm": addmm_flop_jit,
    "aten::matmul": matmul_flop_jit,
    "aten::mm": matmul_flop_jit,
    "aten::bmm": bmm_flop_jit,
    "aten::einsum": einsum_flop_jit,
    "aten::_convolution": conv_flop_jit,
    "aten::scaled_dot_product_attention": sdpa_flop_jit,
}

# Op names that do matrix products; an uncounted op matching this is an error, not a skip.
_MATMUL_LIKE = re.compile(
    r"(mm|matmul|linear|einsum|conv|attention|attn|dot|bilinear|mv\b|tensordot|baddbmm|PythonOp)",
    re.IGNORECASE,
)


_BNB_LINEARS = ("Linear8bitLt", "Linear4bit")


def _is_quantized_linear(mod: nn.Module) -> bool:
    """PyTorch dynamic-int8 Linear or a bitsandbytes 8/4-bit Linear."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return isinstance(mod, DynamicLinear) or type(mod).__name__ in _BNB_LINEARS


class _FloatStandIns:
    """Swap quantized Linear modules for zero-filled float ``nn.Linear`` of the same shape
    while fvcore traces (values are irrelevant to the count), and swap them back after.

    fvcore cannot trace a dynamically quantized model (the jit tracer rejects its packed
    weights) nor count bitsandbytes' autograd functions, so a quantized Linear is counted as
    the Linear it replaces: one multiply-add per weight per token, whatever its precision.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.swapped: list[tuple[nn.Module, str, nn.Module]] = []

    def __enter__(self) -> _FloatStandIns:
        for name, mod in list(self.model.named_modules()):
            if not name or not _is_quantized_linear(mod):
                continue
            parent_name, _, attr = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            bias = getattr(mod, "bias", None)
            has_bias = bias() is not None if callable(bias) else bias is not None
            stand_in = nn.Linear(mod.in_features, mod.out_features, bias=has_bias)
            nn.init.zeros_(stand_in.weight)
            setattr(parent, attr, stand_in.to(_module_device(self.model)))
            self.swapped.append((parent, attr, mod))
        return self

    def __exit__(self, *exc: object) -> None:
        for parent, attr, mod in self.swapped:
            setattr(parent, attr, mod)


def _module_device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


class _LogitsOnly(nn.Module):
    """Wrap an HF model so tracing sees tensors in and one tensor out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _dummy_ids(model: nn.Module, batch_size: int, seq_len: int, device: torch.device) -> Any:
    cfg = getattr(model, "config", None)
    pad = getattr(cfg, "pad_token_id", None)
    vocab = getattr(cfg, "vocab_size", None) or 100
    # any non-pad token: decoder classifiers pool at the last non-pad position
    tok = next(t for t in (5, 6, 7) if t != pad and t < vocab)
    ids = torch.full((batch_size, seq_len), tok, dtype=torch.long, device=device)
    return ids, torch.ones_like(ids)


def _has_weight_matrix(mod: nn.Module) -> bool:
    w = getattr(mod, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() >= 2 and not isinstance(mod, nn.Embedding)


def _trace_count(
    wrapped: nn.Module, model: nn.Module, batch_size: int, seq_len: int, device: torch.device
) -> int:
    fca = FlopCountAnalysis(wrapped, _dummy_ids(model, batch_size, seq_len, device))
    fca.clear_op_handles().set_op_handle(**MATMUL_HANDLES)
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    fca.tracer_warnings("none")
    with torch.no_grad():
        total = int(fca.total())
    missed = sorted(op for op in fca.unsupported_ops() if _MATMUL_LIKE.search(op))
    if missed:
        raise RuntimeError(f"fvcore cannot count matmul-class ops {missed}; add a handle")
    named = dict(wrapped.named_modules())
    uncalled = sorted(
        n for n in fca.uncalled_modules() if n in named and _has_weight_matrix(named[n])
    )
    if uncalled:
        raise RuntimeError(f"modules with weights were not traced, cost unknown: {uncalled}")
    return total


def count_multiply_adds(model: nn.Module, seq_len: int, *, batch_size: int = 1) -> int:
    """Total matmul-class multiply-adds (fvcore's "flops") of one forward on a dummy batch.

    Raises:
        RuntimeError: an uncounted matmul-class op, or a weight-holding module that the trace
            never called (its cost would silently be missing).
    """
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
    device = _module_device(model)
    wrapped = _LogitsOnly(model)
    was_training = model.training
    model.eval()
    try:
        with _FloatStandIns(model):
            total = _trace_count(wrapped, model, batch_size, seq_len, device)
    finally:
        model.train(was_training)
    return total


def count_gflops(model: nn.Module, seq_len: int, *, batch_size: int = 1) -> float:
    """GFLOPs per example at ``seq_len`` (full attention mask): 2 × multiply-adds / 1e9.

    Counted at ``batch_size`` and divided by it, so the result is per example either way.
    """
    return 2.0 * count_multiply_adds(model, seq_len, batch_size=batch_size) / batch_size / 1e9


def _dynamic_quantized(model: nn.Module) -> list[torch.Tensor]:
    """The int8 weights and float biases held by dynamic-quantized Linear modules (they are
    not ``parameters()``)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    out = []
    for m in model.modules():
        if isinstance(m, DynamicLinear):
            out.append(m.weight())
            if m.bias() is not None:
                out.append(m.bias())
    return out


def _nonzero(t: torch.Tensor) -> int:
    return int(torch.count_nonzero(t.dequantize() if t.is_quantized else t.detach()))


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared/tied parameters counted once). Quantized Linear weights
    count one per weight entry, whatever their precision (a 4-bit pair packed in a byte is
    two)."""
    total = sum(p.numel() for p in model.parameters())
    total += sum(t.numel() for t in _dynamic_quantized(model))
    for m in model.modules():
        if type(m).__name__ == "Linear4bit":
            total += m.in_features * m.out_features - m.weight.numel()
    return total


def count_params_nonzero(model: nn.Module) -> int:
    """Number of non-zero parameter entries: what is left after unstructured pruning
    (dynamic-int8 weights counted after dequantization)."""
    tensors = [*model.parameters(), *_dynamic_quantized(model)]
    return sum(_nonzero(t) for t in tensors)


def _flat_tensors(values: Any) -> list[torch.Tensor]:
    """State-dict values → tensors (dynamic-quantized Linear stores a (weight, bias) tuple)."""
    out: list[torch.Tensor] = []
    for v in values:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, tuple | list):
            out.extend(_flat_tensors(v))
    return out


def _nbytes(t: torch.Tensor) -> int:
    if not t.is_quantized:
        return t.nbytes
    n = t.int_repr().nbytes
    if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        n += t.q_per_channel_scales().nbytes + t.q_per_channel_zero_points().nbytes
    return n + 16  # per-tensor scale (float64) and zero point (int64)


def weights_bytes(model: nn.Module) -> int:
    """Bytes of the tensors ``save_pretrained`` would write: state-dict tensors' ``nbytes``
    (quantized tensors: their int8 payload plus scales and zero points).

    Tied weights (e.g. an LM head sharing the embedding) appear twice in the state dict but are
    written once, so identical views of the same storage are counted once.
    """
    seen: set[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype]] = set()
    total = 0
    for t in _flat_tensors(model.state_dict().values()):
        if t.is_quantized:
            total += _nbytes(t)
            continue
        key = (
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            tuple(t.stride()),
            t.dtype,
        )
        if key in seen:
            continue
        seen.add(key)
        total += t.nbytes
    return total
