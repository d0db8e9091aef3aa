"""``quantize`` stage: int8/4-bit weights for the student's Linear layers.

Backends (``pipeline.quantize.backend``; ``auto`` picks by device and records the choice in
``ctx.record["quant"]``, the results' ``quant`` column):

* ``dynamic_int8`` (CPU) — PyTorch dynamic quantization
  (``torch.ao.quantization.quantize_dynamic``): int8 weights (per-tensor affine), activations
  quantized on the fly per batch, int8 GEMM through FBGEMM/oneDNN. CPU only.
* ``bnb_int8`` (CUDA) — bitsandbytes LLM.int8 (``Linear8bitLt``): int8 weights, outlier
  input features above ``int8_threshold`` kept in fp16 (Dettmers et al. 2022).
* ``bnb_4bit`` (CUDA) — bitsandbytes ``Linear4bit`` with ``quant_type`` nf4/fp4 and
  ``compute_dtype`` (the dtype the dequantized matmul runs in).

The classification head stays in float when ``skip_classifier`` (default), as bitsandbytes'
HF integration does for output layers. The float model is kept in ``ctx.extras`` so the trial
can save it: quantized weights are reproduced exactly by re-running the same quantization on
it (see :func:`requantize`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from engine.compress.base import StageContext, register_stage
from engine.config import QuantizeConfig

__all__ = ["apply", "choose_backend", "quantize_model", "requantize"]

_HEADS = ("classifier", "score")  # sequence-classification heads of BERT / decoder models


def choose_backend(cfg: QuantizeConfig, device: torch.device) -> str:
    """``auto`` → ``bnb_int8`` on CUDA (when bitsandbytes imports), else ``dynamic_int8``."""
    if cfg.backend != "auto":
        if cfg.backend.startswith("bnb") and device.type != "cuda":
            raise ValueError(f"quantize backend {cfg.backend!r} needs a CUDA device, got {device}")
        if cfg.backend == "dynamic_int8" and device.type != "cpu":
            raise ValueError("quantize backend 'dynamic_int8' runs on CPU only")
        return cfg.backend
    if device.type == "cuda":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            pass
        else:
            return "bnb_int8"
    return "dynamic_int8"


def _linear_names(model: nn.Module, skip_classifier: bool) -> list[str]:
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and not (skip_classifier and n.split(".")[0] in _HEADS)
    ]


def _dynamic_int8(model: nn.Module, cfg: QuantizeConfig) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    names = _linear_names(model, cfg.skip_classifier)
    spec = {n: default_dynamic_qconfig for n in names}
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return quantize_dynamic(model.cpu().eval(), spec, dtype=torch.qint8, inplace=False)


def _bnb_layer(lin: nn.Linear, cfg: QuantizeConfig, bits: int, device: torch.device) -> nn.Module:
    import bitsandbytes as bnb

    has_bias = lin.bias is not None
    w = lin.weight.detach().cpu()
    if bits == 8:
        new = bnb.nn.Linear8bitLt(
            lin.in_features, lin.out_features, bias=has_bias, has_fp16_weights=False,
            threshold=cfg.int8_threshold,
        )  # fmt: skip
        new.weight = bnb.nn.Int8Params(w.half(), requires_grad=False, has_fp16_weights=False)
    else:
        dtype = getattr(torch, cfg.compute_dtype)
        new = bnb.nn.Linear4bit(
            lin.in_features, lin.out_features, bias=has_bias, compute_dtype=dtype,
            quant_type=cfg.quant_type,
        )  # fmt: skip
        new.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type=cfg.quant_type)
    if has_bias:
        new.bias = nn.Parameter(lin.bias.detach().cpu().clone(), requires_grad=False)
    return new.to(device)  # bitsandbytes quantizes the weights on the transfer to CUDA


def _bnb(model: nn.Module, cfg: QuantizeConfig, bits: int, device: torch.device) -> nn.Module:
    import copy

    q = copy.deepcopy(model).to(device).eval()
    for name in _linear_names(q, cfg.skip_classifier):
        parent_name, _, attr = name.rpartition(".")
        parent = q.get_submodule(parent_name) if parent_name else q
        setattr(parent, attr, _bnb_layer(getattr(parent, attr), cfg, bits, device))
    return q


def quantize_model(
    model: PreTrainedModel, cfg: QuantizeConfig, backend: str, device: torch.device
) -> nn.Module:
    """A quantized copy of ``model`` (the float model is left as it was)."""
    if backend == "dynamic_int8":
        return _dynamic_int8(model, cfg)
    if backend == "bnb_int8":
        return _bnb(model, cfg, 8, device)
    if backend == "bnb_4bit":
        return _bnb(model, cfg, 4, device)
    raise ValueError(f"unknown quantize backend {backend!r}")


def requantize(float_model: PreTrainedModel, record: dict[str, Any]) -> nn.Module:
    """Rebuild the quantized model from its saved float weights and ``record["quantize"]``."""
    q = record["quantize"]
    cfg = QuantizeConfig(**q["config"])
    device = torch.device("cuda" if q["backend"].startswith("bnb") else "cpu")
    return quantize_model(float_model, cfg, q["backend"], device)


@register_stage("quantize")
def apply(model: PreTrainedModel, cfg: QuantizeConfig, ctx: StageContext) -> nn.Module:
    backend = choose_backend(cfg, ctx.device)
    ctx.extras["float_model"] = model
    q = quantize_model(model, cfg, backend, ctx.device)
    ctx.record["quant"] = backend
    ctx.record["quantize"] = {
        "backend": backend,
        "config": cfg.model_dump(mode="json"),
        "device": "cpu" if backend == "dynamic_int8" else str(ctx.device),
        "quantized_linears": len(_linear_names(model, cfg.skip_classifier)),
    }
    return q
