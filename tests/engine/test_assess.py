"""What a trial measures on a GPU, checked on CPU where the path exists there too: ``assess``
under bf16 autocast gives the ``precision`` column and quality close to float32; on CUDA the
peak memory comes from ``torch.cuda.max_memory_allocated`` and a bitsandbytes NF4 student is
assessed in bf16 on the GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.assess import assess
from engine.compress import STAGES, StageContext
from engine.compress.quantize import QuantizeConfig
from engine.config import load_study
from tests.conftest import tiny_bert, toy_batches


def _splits(n: int = 32) -> dict[str, dict[str, np.ndarray]]:
    b = toy_batches(1, n, 12)[0]
    data = {k: v.numpy() for k, v in b.items()}
    return {"valid": data, "test": data}


def _study():
    return load_study("smoke", ["measure.batch_size=8", "measure.latency_repeats=2",
                                "measure.warmup=1", "data.max_length=12"])  # fmt: skip


def test_assess_in_bf16_reports_the_precision_and_agrees_with_float32() -> None:
    model, study, cpu = tiny_bert(num_layers=2), _study(), torch.device("cpu")
    ref = assess(model, _splits(), study, cpu)
    got = assess(model, _splits(), study, cpu, None, torch.bfloat16)
    assert (ref["precision"], got["precision"]) == ("fp32", "bf16")
    assert got["gflops"] == ref["gflops"]  # counted without autocast: the same multiply-adds
    assert abs(got["accuracy"] - ref["accuracy"]) <= 2 / 32  # bf16 may flip a near tie or two
    assert got["latency_ms_p50"] > 0 and got["peak_mem_method"] == "cpu_profiler"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("quantize", [False, True])
def test_assess_on_cuda_in_bf16_float_and_nf4(quantize: bool) -> None:
    cuda = torch.device("cuda")
    model, study, record = tiny_bert(num_layers=2).to(cuda), _study(), {}
    if quantize:  # hidden 32 and FFN 64: bitsandbytes' 4-bit blocks of 64 fit on CUDA
        ctx = StageContext(None, {}, torch.empty(0), {}, 0, device=cuda)
        cfg = QuantizeConfig(backend="bnb_4bit", quant_type="nf4", compute_dtype="bfloat16")
        model = STAGES.get("quantize")(model, cfg, ctx)
        record = ctx.record
    row = assess(model, _splits(), study, cuda, record, torch.bfloat16)
    assert row["precision"] == "bf16" and row["device"] == torch.cuda.get_device_name(cuda)
    assert row["peak_mem_method"] == "cuda_max_allocated" and row["peak_activation_bytes"] > 0
    assert row["quant"] == ("bnb_4bit" if quantize else "none")
    assert 0.0 <= row["accuracy"] <= 1.0 and np.isfinite(row["latency_ms_p50"])
