"""``quantize`` stage: int8/4-bit weights for the student's Linear layers.

Backends (``pipeline.quantize.backend``; ``auto`` picks by device and ``bits`` and records
the choice in its record's ``backend`` — the results' ``quant`` column — and why in its
``reason``, the ``quant_reason`` column):

* ``dynamic_int8`` (CPU) — PyTorch dynamic quantization
  (``torch.ao.quantization.quantize_dynamic``): int8 weights (per-tensor affine), activations
  quantized on the fly per batch, int8 GEMM through FBGEMM/oneDNN. CPU only.
* ``bnb_int8`` — bitsandbytes LLM.int8 (``Linear8bitLt``): int8 weights, outlier input
  features above ``int8_threshold`` kept in fp16 (Dettmers et al. 2022).
* ``bnb_4bit`` — bitsandbytes ``Linear4bit`` with ``quant_type`` nf4/fp4 (blocks of 64
  weights, one absmax each) and ``compute_dtype`` (the dtype the dequantized matmul runs in).

bitsandbytes runs on CUDA, and since its multi-backend releases also on CPU: 0.50.2 ships
``libbitsandbytes_cpu.so`` (blockwise 4-bit quantize/dequantize kernels); ``Linear4bit``
dequantizes to ``compute_dtype`` and runs a dense matmul, ``Linear8bitLt`` uses
``torch._int_mm`` on AVX-512 CPUs. Whether it works here is decided by a probe
(:func:`bnb_cpu_probe`: quantize one seeded Linear, run it, compare with float), not assumed;
``auto`` with ``bits: 4`` on CPU falls back to ``dynamic_int8`` and records the probe's error
when it fails. (bitsandbytes also tries to fetch a fused CPU 4-bit GEMM from the Hugging Face
Hub through the optional ``kernels`` package; that package is not installed, so nothing is
downloaded and the stock path runs.)

The classification head stays in float when ``skip_classifier`` (default), as bitsandbytes'
HF integration does for output layers. The float model is kept in the stage's record so the
trial can save it: quantized weights are reproduced exactly by re-running the same
quantization on it (see :func:`requantize`). Quantize is the last stage of a pipeline.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from transformers import PreTrainedModel

from engine.compress.base import (
    JSON_OFF,
    OMIT_NONE,
    Placement,
    StageContext,
    StageRecord,
    register_stage,
)
from engine.configbase import Section

__all__ = [
    "BackendChoice",
    "QuantizeConfig",
    "QuantizeRecord",
    "apply",
    "bnb_cpu_probe",
    "choose_backend",
    "conv1d_as_linear",
    "cpu_4bit_paths",
    "quantize_model",
    "requantize",
]

_HEADS = ("classifier", "score")
_FUSED_CPU = "support_avx512bf16_for_cpu"  # Linear4bit's switch for its fused CPU kernel  # sequence-classification heads of BERT / decoder models


class QuantizeConfig(Section):
    """Quantize the student's Linear layers (the last stage of a pipeline).

    ``backend: auto`` aims at ``bits``: 8 → bitsandbytes ``bnb_int8`` (LLM.int8) on CUDA and
    PyTorch ``dynamic_int8`` on CPU; 4 → ``bnb_4bit`` on CUDA, and on CPU ``bnb_4bit`` where
    bitsandbytes' CPU backend passes a probe, else ``dynamic_int8`` with the reason recorded.
    ``bnb_4bit`` uses ``quant_type`` (nf4/fp4) with ``compute_dtype``. The choice is recorded
    in the ``quant`` column, the reason in ``quant_reason``.
    """

    backend: Literal["auto", "dynamic_int8", "bnb_int8", "bnb_4bit"] = "auto"
    bits: Literal[4, 8] = 8
    quant_type: Literal["nf4", "fp4"] = "nf4"
    compute_dtype: Literal["float32", "float16", "bfloat16"] = "bfloat16"
    int8_threshold: float = Field(6.0, ge=0)
    skip_classifier: bool = True


@dataclass(frozen=True)
class QuantizeRecord(StageRecord):
    """The backend run (saved also as the top-level ``quant``), why, its config and device;
    ``float_model``: the model before quantization, what is saved (not written to JSON)."""

    backend: str
    reason: str
    config: dict[str, Any]
    device: str
    quantized_linears: int
    float_linears: list[str] | None = field(default=None, metadata=OMIT_NONE)
    bitsandbytes: str | None = field(default=None, metadata=OMIT_NONE)
    cpu_4bit_paths: dict[str, int] | None = field(default=None, metadata=OMIT_NONE)
    float_model: Any = field(default=None, metadata=JSON_OFF, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"quant": self.backend, self.key: self.payload()}


def _columns(
    record: QuantizeRecord | None, model: Any, splits: Any, row: dict, task: Any
) -> dict[str, Any]:
    return {
        "quant": record.backend if record else "none",
        "quant_reason": record.reason if record else "",
    }


def _placement(record: QuantizeRecord, model: nn.Module, device: torch.device) -> Placement:
    """Dynamic int8 runs on CPU whatever the trial's device, in float32 activations;
    bitsandbytes layers stay where they were quantized."""
    if record.backend == "dynamic_int8":
        return Placement(torch.device("cpu"), autocast=False)
    if record.backend.startswith("bnb"):
        return Placement(next(model.parameters()).device, move=False)
    return Placement(device)


def _save(model: nn.Module, record: QuantizeRecord, out_dir: Path) -> nn.Module:
    """Quantized modules cannot ``save_pretrained``: the float source is saved instead."""
    if record.float_model is None:
        raise ValueError("a quantized model needs its float model to be saved")
    return record.float_model


def _load(model: nn.Module, record: QuantizeRecord, out_dir: Path) -> nn.Module:
    return requantize(model, {"quantize": record.payload()})


def _manifest(record: QuantizeRecord) -> dict[str, Any]:
    return {"saved": "float weights; re-quantize on load", "requantize": record.backend}


@dataclass(frozen=True)
class BackendChoice:
    """The backend a quantize stage runs, on which device, and why."""

    backend: str
    device: torch.device
    reason: str


def _quiet_bitsandbytes_import() -> Any:
    """Import bitsandbytes without its CPU backend's warning about the optional ``kernels``
    package (a Hub download we do not want anyway)."""
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    finally:
        logger.setLevel(level)
    return bitsandbytes


@functools.cache
def bnb_cpu_probe(bits: int, quant_type: str = "nf4", compute_dtype: str = "float32") -> str | None:
    """``None`` when bitsandbytes' ``bits``-bit Linear quantizes and runs on CPU here (its output
    on a seeded 64→32 Linear within 25 % relative error of float); else the error, one line."""
    try:
        _quiet_bitsandbytes_import()
        gen = torch.Generator().manual_seed(0)
        cfg = QuantizeConfig(quant_type=quant_type, compute_dtype=compute_dtype)
        for n_in, n_out in ((128, 64), (128, 48)):  # fused CPU 4-bit kernel; dequant + matmul
            with torch.random.fork_rng(devices=[]):  # leave the trial's global RNG as it was
                lin = nn.Linear(n_in, n_out)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(n_out, n_in, generator=gen) / 8)
                lin.bias.copy_(torch.randn(n_out, generator=gen) / 8)
            x = torch.randn(4, n_in, generator=gen)
            q = _bnb_layer(lin, cfg, bits, torch.device("cpu")).eval()
            if bits == 4 and q.weight.dtype != torch.uint8:
                return f"Linear4bit weight stayed {q.weight.dtype} on CPU (not quantized)"
            with torch.inference_mode():  # eval + no grad: the path inference takes
                ref, out = lin(x), q(x).float()
            err = float((out - ref).norm() / ref.norm())
            if not math.isfinite(err) or err > 0.25:
                return f"bitsandbytes {bits}-bit CPU output off by {err:.3g} (relative)"
    except Exception as e:  # any failure means: not usable on this CPU
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
    return None


def choose_backend(cfg: QuantizeConfig, device: torch.device) -> BackendChoice:
    """Resolve ``cfg.backend`` on ``device`` (see the module docstring).

    Raises:
        ValueError: an explicit backend that cannot run here (with the probe's error).
    """
    cpu = torch.device("cpu")
    if cfg.backend == "dynamic_int8":
        if device.type != "cpu":
            raise ValueError("quantize backend 'dynamic_int8' runs on CPU only")
        return BackendChoice("dynamic_int8", cpu, "asked for: PyTorch dynamic int8")
    bits = {"bnb_int8": 8, "bnb_4bit": 4}.get(cfg.backend, cfg.bits)
    name = "bnb_int8" if bits == 8 else "bnb_4bit"
    if device.type == "cuda":
        try:
            _quiet_bitsandbytes_import()
        except ImportError as e:
            if cfg.backend != "auto":
                raise ValueError(f"quantize backend {cfg.backend!r}: {e}") from e
            return BackendChoice("dynamic_int8", cpu, f"auto: bitsandbytes missing ({e}); CPU")
        return BackendChoice(name, device, f"{cfg.backend}: bitsandbytes {bits}-bit on CUDA")
    if cfg.backend == "auto" and bits == 8:
        return BackendChoice("dynamic_int8", cpu, "auto, 8 bits on CPU: PyTorch dynamic int8")
    problem = bnb_cpu_probe(bits, cfg.quant_type, cfg.compute_dtype)
    if problem is None:
        return BackendChoice(
            name, cpu, f"{cfg.backend}: bitsandbytes {bits}-bit passed the CPU probe"
        )
    if cfg.backend != "auto":
        raise ValueError(f"quantize backend {cfg.backend!r} does not run on CPU here: {problem}")
    return BackendChoice(
        "dynamic_int8", cpu, f"auto: bitsandbytes 4-bit failed on CPU ({problem}); dynamic int8"
    )


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
    bnb = _quiet_bitsandbytes_import()

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
    new = new.to(device)  # bitsandbytes quantizes the weights on this transfer (CPU too)
    misfit = new.out_features % 32 or new.in_features % _BLOCK
    if bits == 4 and device.type == "cpu" and getattr(new, _FUSED_CPU, False):
        # bitsandbytes' fused AVX512-bf16 4-bit kernel (taken in eval mode) computes in bf16
        # whatever compute_dtype says, and repacks the weight in tiles of 32 output rows ×
        # whole absmax blocks, failing on other shapes ("shape '[32, 0]' is invalid"): keep
        # it for bf16 compute on shapes it fits; the others dequantize + matmul
        setattr(new, _FUSED_CPU, not misfit and cfg.compute_dtype == "bfloat16")
    return new


def cpu_4bit_paths(model: nn.Module) -> dict[str, int]:
    """How many ``Linear4bit`` layers of a CPU model run bitsandbytes' fused bf16 kernel in eval
    mode (``fused_bf16``: 4-bit weights unpacked inside the GEMM, activations in bf16; used
    when ``compute_dtype`` is bfloat16 and the shape fits) and how many dequantize to
    ``compute_dtype`` and run a dense matmul (``dequantize_matmul``)."""
    out = {"fused_bf16": 0, "dequantize_matmul": 0}
    for m in model.modules():
        if type(m).__name__ == "Linear4bit":
            out["fused_bf16" if getattr(m, _FUSED_CPU, False) else "dequantize_matmul"] += 1
    return out


_BLOCK = 64  # bitsandbytes' 4-bit blocksize (Params4bit's default)


def _bnb_targets(
    model: nn.Module, cfg: QuantizeConfig, bits: int, device: torch.device
) -> tuple[list[str], list[str]]:
    """(Linear layers to quantize, layers kept float). On CPU, 4-bit layers whose
    ``in_features`` is not a multiple of 64 stay float: bitsandbytes 0.50.2's CPU 4-bit
    dequantize kernel takes a row's absmax blocks as ``in_features // 64`` per row, so such
    weights come back wrong (measured: relative error 0.75–0.98 for in_features 32 or 96,
    0.395 for 288, against 0.09 for multiples of 64 — where it equals a hand NF4 quantization)."""
    names = _linear_names(model, cfg.skip_classifier)
    if bits != 4 or device.type != "cpu":
        return names, []
    fits = [n for n in names if model.get_submodule(n).in_features % _BLOCK == 0]
    return fits, [n for n in names if n not in fits]


def _bnb(model: nn.Module, cfg: QuantizeConfig, bits: int, device: torch.device) -> nn.Module:
    import copy

    q = copy.deepcopy(model).to(device).eval()
    for name in _bnb_targets(q, cfg, bits, device)[0]:
        parent_name, _, attr = name.rpartition(".")
        parent = q.get_submodule(parent_name) if parent_name else q
        setattr(parent, attr, _bnb_layer(getattr(parent, attr), cfg, bits, device))
    return q.eval()  # the new layers too (bitsandbytes' CPU 4-bit path depends on it)


def conv1d_as_linear(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose GPT-2 ``Conv1D`` layers (``y = x W + b`` with ``W`` stored
    ``[in, out]``) are ``nn.Linear`` layers holding ``Wᵀ``: the same function, in the layer
    type the quantization backends replace (without this a GPT-2's blocks stay float)."""
    import copy

    from transformers.pytorch_utils import Conv1D

    names = [n for n, m in model.named_modules() if isinstance(m, Conv1D)]
    if not names:
        return model
    out = copy.deepcopy(model)
    for name in names:
        conv = out.get_submodule(name)
        lin = nn.Linear(conv.weight.shape[0], conv.weight.shape[1], bias=conv.bias is not None)
        lin = lin.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(conv.weight.t())
            if conv.bias is not None:
                lin.bias.copy_(conv.bias)
        parent_name, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent_name) if parent_name else out, attr, lin)
    return out


def quantize_model(
    model: PreTrainedModel, cfg: QuantizeConfig, backend: str, device: torch.device
) -> nn.Module:
    """A quantized copy of ``model`` (the float model is left as it was). GPT-2's ``Conv1D``
    layers are quantized as the Linear layers they are (:func:`conv1d_as_linear`)."""
    model = conv1d_as_linear(model)
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
    return quantize_model(float_model, cfg, q["backend"], torch.device(q["device"]))


@register_stage(
    "quantize",
    config=QuantizeConfig,
    record=QuantizeRecord,
    last=True,
    last_reason="a quantized model is not trained further",
    columns=_columns,
    placement=_placement,
    save=_save,
    load=_load,
    manifest=_manifest,
    plain_reload=False,
)
def apply(model: PreTrainedModel, cfg: QuantizeConfig, ctx: StageContext) -> nn.Module:
    choice = choose_backend(cfg, ctx.device)
    q = quantize_model(model, cfg, choice.backend, choice.device)
    bits = 4 if choice.backend == "bnb_4bit" else 8
    targets, kept_float = _bnb_targets(model, cfg, bits, choice.device)
    bnb = choice.backend.startswith("bnb")
    cpu_4bit = choice.backend == "bnb_4bit" and choice.device.type == "cpu"
    ctx.records["quantize"] = QuantizeRecord(
        backend=choice.backend,
        reason=choice.reason,
        config=cfg.model_dump(mode="json"),
        device=str(choice.device),
        quantized_linears=len(targets),
        float_linears=kept_float or None,  # CPU 4-bit: in_features % 64 != 0 (_bnb_targets)
        bitsandbytes=_quiet_bitsandbytes_import().__version__ if bnb else None,
        cpu_4bit_paths=cpu_4bit_paths(q) if cpu_4bit else None,
        float_model=model,
    )
    return q
