"""engine.measure.cost: fvcore GFLOPs against analytic counts, weight bytes against the file
``save_pretrained`` writes, parameter counts. Quality metrics: test_quality.py; latency and
peak memory: test_latency.py."""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from engine.measure import (
    count_gflops,
    count_multiply_adds,
    count_params,
    count_params_nonzero,
    weights_bytes,
)
from engine.measure.cost import FlopCountAnalysis, _LogitsOnly  # fvcore, imported quietly
from engine.models import EMBEDDED_TEACHER, build_classifier, keep_layers
from tests.conftest import tiny_bert, tiny_gpt2, tiny_llama


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
