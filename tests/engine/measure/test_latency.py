"""engine.measure.latency: latency figures are sane, and peak memory is bounded by the
activations computed by hand and does not depend on what the process did before."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.measure import measure_latency, weights_bytes
from tests.conftest import tiny_bert, toy_batches

# ----------------------------------------------------------------------------- latency


def test_latency_numbers_are_sane() -> None:
    model = tiny_bert()
    batch = toy_batches(n_batches=1, batch_size=8)[0]  # includes labels: ignored
    out = measure_latency(model, batch, repeats=5, warmup=1)
    assert set(out) == {
        "latency_ms_p50", "latency_ms_p95", "throughput_per_s", "peak_mem_bytes",
        "peak_activation_bytes", "peak_mem_method",
    }  # fmt: skip
    assert 0 < out["latency_ms_p50"] <= out["latency_ms_p95"]
    assert out["throughput_per_s"] == pytest.approx(8 / (out["latency_ms_p50"] / 1e3))
    assert out["peak_mem_method"] == "cpu_profiler"
    assert out["peak_mem_bytes"] == weights_bytes(model) + out["peak_activation_bytes"]
    assert model.training is False
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, batch, repeats=0, warmup=0)


def _wide_ffn_bert():
    """Tiny BERT whose FFN intermediate (I = 1024) dwarfs everything else in a forward."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=1024, max_position_embeddings=64, num_labels=3,
    )  # fmt: skip
    return BertForSequenceClassification(cfg).eval()


def _vm_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_cpu_peak_memory_is_bounded_by_the_activations_computed_by_hand() -> None:
    """Lower bound: during the FFN's GELU both the dense output and the GELU output
    [B, S, I] float32 are alive, 2·B·S·I·4 bytes. Upper bound (generous): those two, ten
    [B, S, H] hidden-size tensors and two [B, heads, S, S] attention-score tensors. The
    activation peak grows with the batch as the hand count does, and the total stays below
    the process's resident memory."""
    model = _wide_ffn_bert()
    s, h, i, heads = 32, 32, 1024, 4
    act = {}
    for b in (1, 64):
        batch = {"input_ids": torch.randint(0, 200, (b, s)), "attention_mask": torch.ones(b, s)}
        out = measure_latency(model, batch, repeats=2, warmup=1)
        low = 2 * b * s * i * 4
        high = low + 10 * b * s * h * 4 + 2 * b * heads * s * s * 4
        assert low <= out["peak_activation_bytes"] <= high, (b, out)
        assert out["peak_mem_bytes"] == weights_bytes(model) + out["peak_activation_bytes"]
        assert 0 < out["peak_mem_bytes"] < _vm_rss()
        act[b] = out["peak_activation_bytes"]
    assert act[64] - act[1] >= 2 * 63 * s * i * 4


def test_cpu_peak_memory_does_not_depend_on_what_the_process_did_before() -> None:
    """The RSS-watermark measure read ~0 after training (freed heap pages are reused); the
    profiler's count of the forward's own allocations is the same fresh or after training."""
    model = _wide_ffn_bert()
    batch = {"input_ids": torch.randint(0, 200, (32, 32)), "attention_mask": torch.ones(32, 32)}
    fresh = measure_latency(model, batch, repeats=1, warmup=0)["peak_activation_bytes"]
    model.train()
    for _ in range(2):  # training makes far more memory resident than inference needs
        model(**batch, labels=torch.zeros(32, dtype=torch.long)).loss.backward()
    after = measure_latency(model, batch, repeats=1, warmup=0)["peak_activation_bytes"]
    assert after == fresh > 2 * 32 * 32 * 1024 * 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_memory_counts_the_forward_not_other_tensors() -> None:
    model = _wide_ffn_bert().cuda()
    batch = {
        "input_ids": torch.randint(0, 200, (64, 32), device="cuda"),
        "attention_mask": torch.ones(64, 32, device="cuda"),
    }
    ballast = torch.empty(2**28, dtype=torch.uint8, device="cuda")  # 256 MiB held throughout
    out = measure_latency(model, batch, repeats=2, warmup=1)
    del ballast
    assert out["peak_mem_method"] == "cuda_max_allocated"
    assert 2 * 64 * 32 * 1024 * 4 <= out["peak_activation_bytes"] < 2**28
