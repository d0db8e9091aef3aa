"""Quantization: outputs close to the float model, the backend choice recorded, cost counted
on the quantized model, and the bitsandbytes paths on GPU."""

from __future__ import annotations

import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from engine.compress import STAGES, StageContext
from engine.compress.quantize import choose_backend, requantize
from engine.config import QuantizeConfig
from engine.measure import (
    count_gflops,
    count_multiply_adds,
    count_params,
    count_params_nonzero,
    weights_bytes,
)
from tests.conftest import tiny_bert, tiny_llama, toy_batches

# Tolerances: int8 weights with per-tensor scale and per-batch activation scales give a
# relative error of about 2^-7 per matmul; over 4 layers the LayerNorm-ed hidden states
# (entries of order 1) stay within 2e-2 absolute, the logits within 5 % of their range.
HIDDEN_ATOL = 2e-2
LOGIT_REL = 0.05


def _ctx(device: str = "cpu") -> StageContext:
    return StageContext(
        teacher=None,
        train={},
        teacher_logits=torch.empty(0),
        importance={},
        seed=0,
        device=torch.device(device),
    )


def _forward(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: str = "cpu"):
    with torch.no_grad():
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = model(input_ids=ids, attention_mask=mask).logits
    return hidden.float().cpu(), logits.float().cpu()


def test_dynamic_int8_outputs_stay_close_to_float() -> None:
    model = tiny_bert()
    ctx = _ctx()
    q = STAGES.get("quantize")(model, QuantizeConfig(), ctx)
    assert ctx.record["quant"] == "dynamic_int8"  # auto on CPU
    assert ctx.extras["float_model"] is model
    assert isinstance(q.bert.encoder.layer[0].intermediate.dense, DynamicLinear)
    assert isinstance(q.classifier, torch.nn.Linear)  # the head stays float
    assert not isinstance(model.bert.encoder.layer[0].intermediate.dense, DynamicLinear)
    batch = toy_batches(1, batch_size=8)[0]
    h_f, z_f = _forward(model, batch)
    h_q, z_q = _forward(q, batch)
    assert (h_f - h_q).abs().max() <= HIDDEN_ATOL
    assert (z_f - z_q).abs().max() <= LOGIT_REL * (z_f.max() - z_f.min())
    assert not torch.equal(h_f, h_q)  # it did quantize


def test_quantized_cost_is_counted_like_the_float_model() -> None:
    model = tiny_bert()
    q = STAGES.get("quantize")(model, QuantizeConfig(), _ctx())
    assert count_multiply_adds(q, 16) == count_multiply_adds(model, 16)
    assert count_gflops(q, 16) == count_gflops(model, 16)
    assert count_params(q) == count_params(model)
    assert 0 < count_params_nonzero(q) <= count_params(q)
    # 25 quantized Linear weight matrices: 4 bytes → 1 byte per weight, + 16 bytes of weight
    # scale/zero point and 12 of the module's (unused) output scale/zero point buffers each;
    # biases, embeddings, norms and the head stay float32
    linear_weights = sum(
        m.weight.numel()
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not n.startswith("classifier")
    )
    assert weights_bytes(model) - weights_bytes(q) == 3 * linear_weights - 25 * (16 + 12)


def test_requantize_from_the_float_model_is_exact() -> None:
    model = tiny_bert()
    ctx = _ctx()
    q = STAGES.get("quantize")(model, QuantizeConfig(), ctx)
    again = requantize(ctx.extras["float_model"], ctx.record)
    batch = toy_batches(1)[0]
    assert torch.equal(_forward(q, batch)[1], _forward(again, batch)[1])


def test_backend_choice_and_bad_requests() -> None:
    cpu = torch.device("cpu")
    assert choose_backend(QuantizeConfig(), cpu) == "dynamic_int8"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        choose_backend(QuantizeConfig(backend="bnb_4bit"), cpu)


def test_decoder_quantizes_too() -> None:
    model = tiny_llama()
    q = STAGES.get("quantize")(model, QuantizeConfig(), _ctx())
    batch = toy_batches(1)[0]
    z_f, z_q = _forward(model, batch)[1], _forward(q, batch)[1]
    assert (z_f - z_q).abs().max() <= LOGIT_REL * (z_f.max() - z_f.min())
    assert count_multiply_adds(q, 16) == count_multiply_adds(model, 16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    ("backend", "quant_type"), [("bnb_int8", "nf4"), ("bnb_4bit", "nf4"), ("bnb_4bit", "fp4")]
)
def test_bitsandbytes_outputs_stay_close_to_float(backend: str, quant_type: str) -> None:
    pytest.importorskip("bitsandbytes")
    model = tiny_bert().cuda()
    ctx = _ctx("cuda")
    cfg = QuantizeConfig(backend=backend, quant_type=quant_type, compute_dtype="float32")
    q = STAGES.get("quantize")(model, cfg, ctx)
    assert ctx.record["quant"] == backend
    batch = toy_batches(1)[0]
    h_f, _ = _forward(model, batch, "cuda")
    h_q, _ = _forward(q, batch, "cuda")
    # 4-bit weights carry ~1/8 the resolution of int8: a looser bound
    tol = HIDDEN_ATOL if backend == "bnb_int8" else 0.15
    assert (h_f - h_q).abs().max() <= tol
    assert count_multiply_adds(q, 16) == count_multiply_adds(model, 16)
    assert weights_bytes(q) < weights_bytes(model)
