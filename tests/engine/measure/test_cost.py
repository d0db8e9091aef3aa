"""engine.measure: fvcore GFLOPs against analytic counts, metrics against hand computations,
weight bytes against the file ``save_pretrained`` writes, latency sanity."""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from engine.measure import (
    classification_metrics,
    count_gflops,
    count_multiply_adds,
    count_params,
    count_params_nonzero,
    evaluate,
    majority_baseline,
    measure_latency,
    weights_bytes,
)
from engine.measure.cost import FlopCountAnalysis, _LogitsOnly  # fvcore, imported quietly
from engine.models import EMBEDDED_TEACHER, build_classifier, keep_layers
from tests.conftest import tiny_bert, tiny_gpt2, tiny_llama, toy_batches


def bert_multiply_adds(seq: int, h: int, i: int, layers: int, classes: int) -> int:
    """Per layer and token: Q, K, V, O projections 4h² + FFN 2h·i, plus attention QKᵀ and AV
    2·s·h; per example: pooler h² and classifier h·C."""
    return layers * seq * (4 * h * h + 2 * h * i + 2 * seq * h) + h * h + h * classes


@pytest.fixture(scope="module")
def minilm() -> nn.Module:
    return build_classifier(EMBEDDED_TEACHER, 5).eval()


# ----------------------------------------------------------------------------- GFLOPs


@pytest.mark.parametrize("seq", [64, 128])
def test_minilm_gflops_match_the_analytic_count(minilm: nn.Module, seq: int) -> None:
    cfg = minilm.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (384, 1536, 6)
    analytic = bert_multiply_adds(seq, 384, 1536, 6, 5)
    assert count_gflops(minilm, seq) == pytest.approx(2 * analytic / 1e9, rel=5e-3)
    # in fact exact: only matmul-class ops are counted
    assert count_multiply_adds(minilm, seq) == analytic


def test_tiny_bert_count_is_exact_and_per_example() -> None:
    model = tiny_bert(num_layers=4)
    analytic = bert_multiply_adds(16, 32, 64, 4, 5)
    assert count_multiply_adds(model, 16) == analytic
    assert count_multiply_adds(model, 16, batch_size=3) == 3 * analytic
    assert count_gflops(model, 16, batch_size=3) == pytest.approx(2 * analytic / 1e9, rel=1e-12)


def test_sdpa_handle_counts_what_eager_attention_counts(minilm: nn.Module) -> None:
    eager = build_classifier(EMBEDDED_TEACHER, 5, attn_implementation="eager").eval()
    assert minilm.config._attn_implementation == "sdpa"
    assert count_multiply_adds(minilm, 64) == count_multiply_adds(eager, 64)
    # the trap: plain fvcore on the SDPA model skips attention, but sees it in eager mode
    ids = torch.full((1, 64), 7)
    inputs = (ids, torch.ones_like(ids))
    plain_sdpa = FlopCountAnalysis(_LogitsOnly(minilm), inputs).unsupported_ops_warnings(False)
    plain_sdpa.uncalled_modules_warnings(False)
    ops = plain_sdpa.by_operator()
    assert plain_sdpa.unsupported_ops()["aten::scaled_dot_product_attention"] == 6
    plain_eager = FlopCountAnalysis(_LogitsOnly(eager), inputs).unsupported_ops_warnings(False)
    plain_eager.uncalled_modules_warnings(False)
    attention = 6 * 2 * 64 * 64 * 384
    assert plain_eager.by_operator()["matmul"] == attention
    assert "matmul" not in ops and "scaled_dot_product_attention" not in ops
    assert count_multiply_adds(minilm, 64) - ops["linear"] == attention


def test_dropping_layers_lowers_the_count_by_the_layer_cost(minilm: nn.Module) -> None:
    seq = 64
    per_layer = seq * (4 * 384 * 384 + 2 * 384 * 1536 + 2 * seq * 384)
    full = count_multiply_adds(minilm, seq)
    for keep in ([0, 5], [1, 2, 3]):
        student = keep_layers(minilm, keep)
        assert full - count_multiply_adds(student, seq) == (6 - len(keep)) * per_layer


def test_decoder_classifiers_match_their_analytic_counts() -> None:
    seq, h, layers, classes = 16, 32, 4, 5
    # GPT-2: c_attn 3h² + c_proj h² + MLP 2·h·4h per token, attention 2·s·h; the score head
    # runs on every position (the last non-pad one is picked afterwards)
    gpt2 = layers * seq * (12 * h * h + 2 * seq * h) + seq * h * classes
    assert count_multiply_adds(tiny_gpt2(num_layers=layers), seq) == gpt2
    # Llama with grouped-query attention: 4 query heads, 2 KV heads of dim 8 → K, V are h × 16;
    # gate/up/down 3·h·i; attention counted over the 4 query heads: 2·s·h per token
    kv, inter = 2 * 8, 64
    llama = layers * seq * (2 * h * h + 2 * h * kv + 3 * h * inter + 2 * seq * h)
    llama += seq * h * classes
    assert count_multiply_adds(tiny_llama(num_layers=layers), seq) == llama


class _Baddbmm(nn.Module):
    """A classifier whose attention-like product uses an op fvcore has no handle for."""

    def __init__(self, unused_linear: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.out = nn.Linear(8, 3)
        self.unused = nn.Linear(8, 8) if unused_linear else None
        self.mode = "baddbmm" if not unused_linear else "plain"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        x = self.emb(input_ids)
        if self.mode == "baddbmm":
            x = torch.baddbmm(x, x, torch.ones(x.shape[0], 8, 8))
        return SimpleNamespace(logits=self.out(x.mean(1)))


def test_uncounted_matmul_ops_and_untraced_weights_raise() -> None:
    with pytest.raises(RuntimeError, match="baddbmm"):
        count_gflops(_Baddbmm(), 4)
    with pytest.raises(RuntimeError, match="unused"):
        count_gflops(_Baddbmm(unused_linear=True), 4)


# ----------------------------------------------------------------------------- size


def _safetensors_data_bytes(path: Path) -> int:
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    return len(raw) - 8 - header_len


def test_weights_bytes_equal_what_save_pretrained_writes(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    lm = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=200,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            bos_token_id=1,
            eos_token_id=2,
        )
    )
    assert lm.lm_head.weight is lm.transformer.wte.weight  # tied
    naive = sum(t.nbytes for t in lm.state_dict().values())
    lm.save_pretrained(tmp_path / "lm")
    written = _safetensors_data_bytes(tmp_path / "lm" / "model.safetensors")
    assert weights_bytes(lm) == written < naive
    bert = tiny_bert()
    bert.save_pretrained(tmp_path / "bert")
    full = weights_bytes(bert)
    assert full == _safetensors_data_bytes(tmp_path / "bert" / "model.safetensors")
    assert weights_bytes(bert.half()) == full // 2  # bytes follow the dtype


def test_param_counts() -> None:
    model = tiny_bert()
    total = count_params(model)
    assert total == sum(p.numel() for p in model.state_dict().values())  # no ties in BERT-cls
    assert count_params_nonzero(model) < total  # LayerNorm/bias zeros exist at init
    before = count_params_nonzero(model)
    w = model.bert.encoder.layer[0].intermediate.dense.weight
    nz = int(torch.count_nonzero(w[:10]))
    with torch.no_grad():
        w[:10] = 0
    assert count_params_nonzero(model) == before - nz
    assert count_params(model) == total


# ----------------------------------------------------------------------------- quality


def test_metrics_match_a_hand_computed_confusion() -> None:
    labels = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    # class 0: TP 1, FP 1, FN 1 → F1 2/4; class 1: TP 2, FP 1 → 4/5; class 2: TP 1, FN 1 → 2/3;
    # class 3 (num_labels = 4) is in neither → left out of the mean (sklearn's default)
    m = classification_metrics(preds, labels, 4)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    logits = np.eye(4)[preds] * 3.0 - 1.0
    assert classification_metrics(torch.as_tensor(logits), labels, 4) == m
    # a class only predicted, never true, counts with F1 = 0
    m2 = classification_metrics([0, 1], [0, 0], 3)
    assert m2 == {"accuracy": 0.5, "macro_f1": pytest.approx((2 / 3 + 0) / 2)}
    with pytest.raises(ValueError, match="labels"):
        classification_metrics([0, 1], [0, 5], 3)
    with pytest.raises(ValueError, match="predictions"):
        classification_metrics([0], [0, 1], 3)


def test_majority_baseline() -> None:
    # train majority is 2; on test [2, 0, 1, 2]: class 2 TP 2, FP 2 → 2/3; classes 0, 1 → 0
    m = majority_baseline([2, 2, 1, 0, 2], [2, 0, 1, 2], 5)
    assert m == {"accuracy": 0.5, "macro_f1": pytest.approx((2 / 3) / 3)}
    # a tie goes to the smaller label
    assert majority_baseline([1, 0], [0, 1, 1], 2)["accuracy"] == pytest.approx(1 / 3)


def test_evaluate_matches_a_direct_forward() -> None:
    model = tiny_bert()
    batches = toy_batches(n_batches=2, batch_size=8)
    data = {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}
    logits, metrics = evaluate(model, data, batch_size=5, device="cpu")
    with torch.no_grad():
        direct = model(
            input_ids=torch.as_tensor(data["input_ids"]),
            attention_mask=torch.as_tensor(data["attention_mask"]),
        ).logits
    assert logits.shape == (16, 5) and logits.dtype == np.float32
    torch.testing.assert_close(torch.as_tensor(logits), direct, rtol=1e-5, atol=1e-5)
    assert metrics == classification_metrics(direct, data["labels"], 5)


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
