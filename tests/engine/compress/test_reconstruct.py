"""Least-squares reconstruction and bias compensation of pruned output projections
(engine/compress/reconstruct.py).

Oracles: NumPy's ``lstsq`` on the explicit (ridge-augmented) design matrix, a per-example
loop over unpadded inputs, planted duplicate units whose removal a correct refit undoes
exactly, NumPy token means, and planted constant units whose removal a correct bias
compensation undoes exactly."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from engine.compress.prune import PruneConfig, prune_structured_to
from engine.compress.reconstruct import (
    DAMPING,
    assign,
    compensate_bias,
    input_grams,
    input_moments,
    refit,
)
from engine.compress.structure import block_parts, remove_heads, remove_neurons
from tests.conftest import inputs_per_example, tiny_bert, toy_batches

D = 8  # tiny_bert head size


def _ridge_by_lstsq(x: np.ndarray, y: np.ndarray, keep: list[int]) -> np.ndarray:
    """argmin ‖[x_K 1] β − y‖² + λ‖β_w‖², λ = DAMPING × mean ‖x_k‖² over kept columns, solved
    as an ordinary least-squares problem on rows √λ·I appended under the design."""
    xk = x[:, keep]
    lam = DAMPING * float((xk**2).sum(0).mean())
    design = np.hstack([xk, np.ones((len(x), 1))])
    reg = np.hstack([np.sqrt(lam) * np.eye(len(keep)), np.zeros((len(keep), 1))])
    a = np.vstack([design, reg])
    b = np.vstack([y, np.zeros((len(keep), y.shape[1]))])
    return np.linalg.lstsq(a, b, rcond=None)[0]  # [|K| + 1, out]


@pytest.mark.parametrize("conv1d", [False, True])
def test_refit_is_the_ridge_least_squares_solution(conv1d: bool) -> None:
    g = torch.Generator().manual_seed(0)
    n_in, n_out, tokens = 12, 5, 200
    x = torch.randn(tokens, n_in, generator=g, dtype=torch.float64)
    x[:, 3] = 0.7 * x[:, 1] - 0.2 * x[:, 8]  # a removed input the kept ones explain
    module = Conv1D(n_out, n_in) if conv1d else nn.Linear(n_in, n_out)
    module = module.double()
    with torch.no_grad():
        module.bias.normal_(generator=g)
        module.weight.normal_(generator=g)
        y = module(x)
    xa = torch.cat([x, torch.ones(tokens, 1, dtype=torch.float64)], 1)
    keep = [0, 1, 2, 5, 6, 8, 11]
    w, b = refit(module, xa.T @ xa, keep, conv1d=conv1d)
    want = _ridge_by_lstsq(x.numpy(), y.detach().numpy(), keep)
    got_w = w.numpy() if conv1d else w.numpy().T
    np.testing.assert_allclose(got_w, want[:-1], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b.numpy(), want[-1], rtol=1e-8, atol=1e-10)


def test_grams_cover_real_tokens_only() -> None:
    model = tiny_bert(num_layers=2)
    batches = toy_batches(2)
    grams = input_grams(model, batches, "cpu")
    x = inputs_per_example(model, batches, lambda blk: blk.output.dense)[1]
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    assert len(x) == real < sum(b["input_ids"].numel() for b in batches)  # padding exists
    torch.testing.assert_close(grams[1]["ffn_out"], xa.T @ xa, rtol=1e-5, atol=1e-6)
    assert grams[1]["ffn_out"][-1, -1].item() == real  # the bias column counts tokens


def test_moments_are_the_per_column_mean_and_variance_of_real_tokens() -> None:
    model = tiny_bert(num_layers=2)
    batches = toy_batches(2)
    stats = input_moments(model, batches, "cpu")
    x = inputs_per_example(model, batches, lambda blk: blk.output.dense)[1].numpy()
    mean, var = stats[1]["ffn_out"]
    np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(var.numpy(), x.var(0), rtol=1e-4, atol=1e-7)


def _logits(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                for b in batches
            ]
        )


def _hidden(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    """The encoder's last hidden states at the real tokens."""
    with torch.no_grad():
        return torch.cat(
            [
                model.bert(
                    input_ids=b["input_ids"], attention_mask=b["attention_mask"]
                ).last_hidden_state[b["attention_mask"].bool()]
                for b in batches
            ]
        )


def _planted_duplicates(model: nn.Module) -> None:
    """Layer 1: FFN neuron 9 computes exactly what neuron 4 computes, and carries a large
    down-projection column. Layer 0: head 2 attends exactly as head 0 does."""
    with torch.no_grad():
        b1 = model.bert.encoder.layer[1]
        b1.intermediate.dense.weight[9] = b1.intermediate.dense.weight[4]
        b1.intermediate.dense.bias[9] = b1.intermediate.dense.bias[4]
        b1.output.dense.weight[:, 9] = 3.0 * b1.output.dense.weight[:, 9].sign()
        s = model.bert.encoder.layer[0].attention.self
        for lin in (s.query, s.key, s.value):
            lin.weight[2 * D : 3 * D] = lin.weight[0:D]
            lin.bias[2 * D : 3 * D] = lin.bias[0:D]


def test_refit_undoes_the_removal_of_planted_duplicate_units() -> None:
    model = tiny_bert(num_layers=2).eval()
    _planted_duplicates(model)
    calib, fresh = toy_batches(4, seed=1), toy_batches(2, seed=2)
    before = _hidden(model, fresh)
    plain = copy.deepcopy(model)
    grams = input_grams(model, calib, "cpu")
    b0, b1 = model.bert.encoder.layer
    w_a = refit(
        block_parts(b0).attn_out, grams[0]["attn_out"], [c for c in range(32) if not 16 <= c < 24]
    )
    w_n = refit(block_parts(b1).ffn_out, grams[1]["ffn_out"], [c for c in range(64) if c != 9])
    remove_heads(b0, [2])
    remove_neurons(b1, [9])
    assign(block_parts(b0).attn_out, *w_a)
    assign(block_parts(b1).ffn_out, *w_n)
    remove_heads(plain.bert.encoder.layer[0], [2])
    remove_neurons(plain.bert.encoder.layer[1], [9])
    # the duplicates' work moved onto their twins: same outputs on inputs never fitted on
    err = (_hidden(model, fresh) - before).abs().max()
    assert err < 5e-3
    assert (_hidden(plain, fresh) - before).abs().max() > 100 * err  # removal alone changes them


def test_pruning_with_reconstruct_changes_only_the_output_projections() -> None:
    base = tiny_bert(num_layers=2).eval()
    calib = toy_batches(4, seed=1)
    plain, rebuilt = copy.deepcopy(base), copy.deepcopy(base)
    kw = {"heads_removed": 3, "neurons_removed": [24, 24], "criterion": "magnitude"}
    prune_structured_to(plain, batches=calib, **kw)
    prune_structured_to(rebuilt, batches=calib, reconstruct="least_squares", **kw)
    p, r = dict(plain.named_parameters()), dict(rebuilt.named_parameters())
    assert p.keys() == r.keys()
    refitted = {n for n in p if ".attention.output.dense." in n or ".output.dense." in n}
    changed = {n for n in p if not torch.equal(p[n], r[n])}
    assert changed and changed <= refitted  # same units removed, only projections refitted
    # closer to the unpruned model on the calibration tokens than plain removal
    want = _logits(base, calib)
    assert ((_logits(rebuilt, calib) - want) ** 2).mean() < (
        (_logits(plain, calib) - want) ** 2
    ).mean()


def test_reconstruct_without_batches_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="calibration batches"):
        prune_structured_to(
            tiny_bert(num_layers=2), heads_removed=1, neurons_removed=[0, 0],
            criterion="magnitude", reconstruct="least_squares",
        )  # fmt: skip


# --------------------------------------------------------------------------- bias compensation
@pytest.mark.parametrize("conv1d", [False, True])
def test_bias_compensation_keeps_the_mean_output_and_the_kept_weights(conv1d: bool) -> None:
    g = torch.Generator().manual_seed(3)
    n_in, n_out, tokens = 10, 4, 300
    x = torch.randn(tokens, n_in, generator=g, dtype=torch.float64) + torch.arange(n_in) * 0.5
    module = (Conv1D(n_out, n_in) if conv1d else nn.Linear(n_in, n_out)).double()
    with torch.no_grad():
        module.weight.normal_(generator=g)
        module.bias.normal_(generator=g)
    w_io = (module.weight if conv1d else module.weight.T).detach().numpy()  # [in, out]
    keep = [0, 2, 3, 7, 9]
    w, b = compensate_bias(module, x.mean(0), keep, conv1d=conv1d)
    xn, bn = x.numpy(), module.bias.detach().numpy()
    full_mean = (xn @ w_io + bn).mean(0)  # the unpruned projection's mean output
    got_w = w.numpy() if conv1d else w.numpy().T
    np.testing.assert_array_equal(got_w, w_io[keep])  # kept columns untouched
    np.testing.assert_allclose((xn[:, keep] @ got_w + b.numpy()).mean(0), full_mean, rtol=1e-10)
    # the plain removal does not keep the mean (the removed inputs have non-zero means)
    assert np.abs((xn[:, keep] @ w_io[keep] + bn).mean(0) - full_mean).max() > 0.5


def _planted_constants(model: nn.Module) -> None:
    """Layer 1: FFN neuron 5 reads nothing (zero weights, bias 1.5), so it outputs gelu(1.5) on
    every token, through a large down-projection column. Layer 0: head 1's values are its bias
    alone, so whatever it attends to, its output is that constant."""
    with torch.no_grad():
        b1 = model.bert.encoder.layer[1]
        b1.intermediate.dense.weight[5] = 0.0
        b1.intermediate.dense.bias[5] = 1.5
        b1.output.dense.weight[:, 5] = 2.0
        v = model.bert.encoder.layer[0].attention.self.value
        v.weight[D : 2 * D] = 0.0
        v.bias[D : 2 * D] = torch.linspace(-1, 1, D)


def test_bias_compensation_undoes_the_removal_of_planted_constant_units() -> None:
    model = tiny_bert(num_layers=2).eval()
    _planted_constants(model)
    calib, fresh = toy_batches(3, seed=4), toy_batches(2, seed=5)
    before = _hidden(model, fresh)
    plain = copy.deepcopy(model)
    stats = input_moments(model, calib, "cpu")
    b0, b1 = model.bert.encoder.layer
    w_a = compensate_bias(
        block_parts(b0).attn_out,
        stats[0]["attn_out"][0],
        [c for c in range(32) if not D <= c < 2 * D],
    )
    w_n = compensate_bias(
        block_parts(b1).ffn_out, stats[1]["ffn_out"][0], [c for c in range(64) if c != 5]
    )
    for m in (model, plain):
        remove_heads(m.bert.encoder.layer[0], [1])
        remove_neurons(m.bert.encoder.layer[1], [5])
    assign(block_parts(b0).attn_out, *w_a)
    assign(block_parts(b1).ffn_out, *w_n)
    err = (_hidden(model, fresh) - before).abs().max()
    assert err < 1e-4  # exact up to float32, on tokens never calibrated on
    assert (_hidden(plain, fresh) - before).abs().max() > 1000 * err


def test_pruning_with_bias_compensation_changes_only_the_output_biases() -> None:
    base = tiny_bert(num_layers=2).eval()
    calib = toy_batches(4, seed=1)
    plain, comp = copy.deepcopy(base), copy.deepcopy(base)
    kw = {"heads_removed": 3, "neurons_removed": [24, 24], "criterion": "magnitude"}
    prune_structured_to(plain, batches=calib, **kw)
    prune_structured_to(comp, batches=calib, reconstruct="bias", **kw)
    p, r = dict(plain.named_parameters()), dict(comp.named_parameters())
    changed = {n for n in p if not torch.equal(p[n], r[n])}
    assert changed == {
        f"bert.encoder.layer.{i}.{part}.dense.bias"
        for i in range(2) for part in ("attention.output", "output")
    }  # fmt: skip


def test_bias_compensation_without_a_bias_is_a_clear_error() -> None:
    module = nn.Linear(4, 3, bias=False)
    with pytest.raises(ValueError, match="needs a bias"):
        compensate_bias(module, torch.zeros(4, dtype=torch.float64), [0, 1])


def test_reconstruct_reads_the_old_flag_and_refuses_unknown_modes() -> None:
    assert PruneConfig(reconstruct=True).reconstruct == "least_squares"
    assert PruneConfig(reconstruct=False).reconstruct == "none"
    assert PruneConfig(reconstruct="bias").reconstruct == "bias"
    with pytest.raises(ValueError, match="reconstruct"):
        PruneConfig(reconstruct="mean")
    with pytest.raises(ValueError, match="unknown reconstruct mode"):
        prune_structured_to(
            tiny_bert(num_layers=2), heads_removed=1, neurons_removed=[0, 0],
            criterion="magnitude", batches=toy_batches(1), reconstruct="mean",
        )  # fmt: skip
