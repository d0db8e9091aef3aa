"""The gradient methods against oracles written from their definitions.

fisher: a per-example backward loop; gradient: a per-example hidden-gradient loop and finite
differences; taylor: the batch-mean gradient by hand; the ghost-norm identity against explicit
per-example weight gradients. None of the oracles calls engine.importance code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import engine.importance  # noqa: F401  (registers every method)
from engine.importance import IMPORTANCE
from engine.importance.compute import score_methods
from engine.importance.config import ImportanceConfig
from engine.importance.ghostnorm import linear_sq_norms
from engine.models import layer_list
from tests.conftest import tiny_bert, tiny_deberta, tiny_gpt2, tiny_llama, toy_batches

CFG = ImportanceConfig()


def one(batch: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: v[i : i + 1] for k, v in batch.items()}


def example_loss(model: torch.nn.Module, ex: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=ex["input_ids"], attention_mask=ex["attention_mask"]).logits
    return F.cross_entropy(
        logits if logits.dtype == torch.float64 else logits.float(), ex["labels"]
    )


def per_example_param_sq_norms(model: torch.nn.Module, batches) -> np.ndarray:
    """One backward per example: Σ_{θ∈block} (∂ℓ_i/∂θ)², rows in batch order."""
    rows = []
    for b in batches:
        for i in range(int(b["labels"].shape[0])):
            loss = example_loss(model, one(b, i))
            row = []
            for block in layer_list(model):
                ps = list(block.parameters())
                gs = torch.autograd.grad(loss, ps, retain_graph=True, allow_unused=True)
                row.append(sum(float(g.double().pow(2).sum()) for g in gs if g is not None))
            rows.append(row)
    return np.array(rows)


# --- fisher ------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [tiny_bert, tiny_gpt2, tiny_llama, tiny_deberta])
def test_fisher_is_mean_of_per_example_squared_gradient_norms(build) -> None:
    """BERT (Linear + LayerNorm), GPT-2 (Conv1D), Llama (RMSNorm through torch.func) and
    DeBERTa (attention-owned biases through torch.func with its other arguments)."""
    model = build(num_layers=3)
    batches = toy_batches(1, 5, 10, seed=1) + toy_batches(1, 3, 10, seed=2)
    got = IMPORTANCE.get("fisher")(model, batches, cfg=CFG)
    want = per_example_param_sq_norms(model, batches)
    assert got.num_examples == 8 and got.batch_sizes == (5, 3)
    np.testing.assert_allclose(np.array(got.per_example), want, rtol=1e-5)
    np.testing.assert_allclose(got.scores, want.mean(axis=0), rtol=1e-5)


def test_fisher_is_not_the_squared_norm_of_the_batch_mean_gradient() -> None:
    """By Jensen, mean_i ‖g_i‖² ≥ ‖mean_i g_i‖², with equality only if all g_i are equal: the
    per-example Fisher must sit strictly above the batch-mean formula on every layer."""
    model, batches = tiny_bert(num_layers=3), toy_batches(1, 8, 10, seed=3)
    got = IMPORTANCE.get("fisher")(model, batches, cfg=CFG)
    b = batches[0]
    loss = example_loss(model, b)  # batch-mean cross-entropy
    batch_mean = []
    for block in layer_list(model):
        gs = torch.autograd.grad(loss, list(block.parameters()), retain_graph=True)
        batch_mean.append(sum(float(g.double().pow(2).sum()) for g in gs))
    assert all(f > 1.5 * m for f, m in zip(got.scores, batch_mean, strict=True)), (
        got.scores,
        batch_mean,
    )


def test_fisher_reaches_every_block_when_all_parameters_are_frozen() -> None:
    """Frozen embeddings (and a frozen model) must not cut the backward short: the per-example
    norms depend on activations and their gradients, not on requires_grad."""
    model, batches = tiny_bert(num_layers=3), toy_batches(1, 4, 10)
    free = IMPORTANCE.get("fisher")(model, batches, cfg=CFG)
    for p in model.parameters():
        p.requires_grad_(False)
    frozen = IMPORTANCE.get("fisher")(model, batches, cfg=CFG)
    np.testing.assert_allclose(frozen.per_example, free.per_example, rtol=1e-6)
    assert all(not p.requires_grad for p in model.parameters())  # restored as it was


@pytest.mark.parametrize("mode", ["ghost", "direct", "auto"])
@pytest.mark.parametrize("shape", [(3, 7), (3, 5, 7), (2, 4, 3, 7)])
def test_linear_sq_norms_equal_explicit_per_example_weight_gradients(mode, shape) -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(7, 6)
    a = torch.randn(*shape)
    g = torch.randn(*shape[:-1], 6)
    want = []
    for i in range(shape[0]):
        lin.zero_grad()
        (lin(a[i]) * g[i]).sum().backward()  # ∂/∂θ of Σ_s g_s·z_s = per-example gradient
        want.append(float(lin.weight.grad.pow(2).sum() + lin.bias.grad.pow(2).sum()))
    got = linear_sq_norms(a, g, has_bias=True, mode=mode)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


# --- gradient ----------------------------------------------------------------------------------


def hidden_grad_norms_loop(model: torch.nn.Module, batch) -> np.ndarray:
    """Per example: ‖∂ℓ_i/∂h_l‖ over real tokens, from its own forward and backward."""
    rows = []
    for i in range(int(batch["labels"].shape[0])):
        ex = one(batch, i)
        outs: list[torch.Tensor] = []

        def keep(_m, _a, out, outs=outs):
            h = out if isinstance(out, torch.Tensor) else out[0]
            h.retain_grad()
            outs.append(h)

        hs = [blk.register_forward_hook(keep) for blk in layer_list(model)]
        try:
            example_loss(model, ex).backward()
        finally:
            for h in hs:
                h.remove()
        real = ex["attention_mask"][0].bool()
        rows.append([float(h.grad[0][real].double().norm()) for h in outs])
        model.zero_grad()
    return np.array(rows)


@pytest.mark.parametrize("build", [tiny_bert, tiny_gpt2, tiny_llama])
def test_gradient_is_mean_per_example_output_gradient_norm(build) -> None:
    model = build(num_layers=3)
    batches = toy_batches(2, 4, 10, seed=4)
    got = IMPORTANCE.get("gradient")(model, batches, cfg=CFG)
    want = np.concatenate([hidden_grad_norms_loop(model, b) for b in batches])
    np.testing.assert_allclose(np.array(got.per_example), want, rtol=1e-5)
    np.testing.assert_allclose(got.scores, want.mean(axis=0), rtol=1e-5)


def test_gradient_matches_central_finite_differences() -> None:
    """Float64 model; every coordinate of layer 1's output perturbed by ±ε for example 1 of 2."""
    model = tiny_gpt2(num_layers=3).double()
    (batch,) = toy_batches(1, 2, 6, seed=5)
    got = IMPORTANCE.get("gradient")(model, [batch], cfg=CFG)
    ex = one(batch, 1)
    block = layer_list(model)[1]
    with torch.no_grad():
        base: list[torch.Tensor] = []
        h = block.register_forward_hook(
            lambda _m, _a, out: base.append(
                (out if isinstance(out, torch.Tensor) else out[0]).clone()
            )
        )
        example_loss(model, ex)
        h.remove()
    eps = 1e-6
    grad = torch.zeros_like(base[0])

    def loss_with(delta: torch.Tensor) -> float:
        def add(_m, _a, out):
            return (out[0] + delta, *out[1:]) if isinstance(out, tuple) else out + delta

        handle = block.register_forward_hook(add)
        try:
            with torch.no_grad():
                return float(example_loss(model, ex))
        finally:
            handle.remove()

    for idx in np.ndindex(*base[0].shape):
        d = torch.zeros_like(base[0])
        d[idx] = eps
        grad[idx] = (loss_with(d) - loss_with(-d)) / (2 * eps)
    real = ex["attention_mask"][0].bool()
    fd_norm = float(grad[0][real].norm())
    assert got.per_example[1][1] == pytest.approx(fd_norm, rel=1e-5)


def test_gradient_is_equal_through_identity_blocks() -> None:
    """Pre-LN GPT-2 with blocks 2 and 3 planted as the identity: h_1 = h_2 = h_3, so the loss
    gradient with respect to each is the same tensor and the three scores are equal."""
    model, batches = tiny_gpt2(num_layers=4), toy_batches(2, 4, 10)
    for layer in (2, 3):
        for name, mod in layer_list(model)[layer].named_modules():
            if name.endswith("c_proj"):
                with torch.no_grad():
                    mod.weight.zero_()
                    mod.bias.zero_()
    got = IMPORTANCE.get("gradient")(model, batches, cfg=CFG)
    ex = np.array(got.per_example)
    np.testing.assert_allclose(ex[:, 2], ex[:, 1], rtol=1e-6)
    np.testing.assert_allclose(ex[:, 3], ex[:, 1], rtol=1e-6)
    assert not np.allclose(ex[:, 0], ex[:, 1], rtol=1e-3)


def test_fisher_and_gradient_can_disagree() -> None:
    """Scaling block 0's output projections 10× makes its parameter gradients dominate fisher,
    while the gradient at its output (set by the blocks above) does not rise to the top: the two
    methods rank layer 0 differently, so neither is a monotone transform of the other."""
    model, batches = tiny_bert(num_layers=4), toy_batches(2, 6, 10)
    with torch.no_grad():
        for name, p in layer_list(model)[0].named_parameters():
            if "output.dense" in name:
                p.mul_(10.0)
    got = score_methods(model, batches, ("fisher", "gradient"), CFG)
    assert got["fisher"].ranks()[0] == 0
    assert got["gradient"].ranks()[0] != 0


# --- taylor ------------------------------------------------------------------------------------


def test_taylor_is_abs_weight_times_batch_mean_gradient() -> None:
    model = tiny_llama(num_layers=2)
    batches = toy_batches(1, 6, 8, seed=6) + toy_batches(1, 3, 8, seed=7)
    got = IMPORTANCE.get("taylor")(model, batches, cfg=CFG)
    rows = []
    for b in batches:
        loss = example_loss(model, b)
        row = []
        for block in layer_list(model):
            ps = list(block.parameters())
            gs = torch.autograd.grad(loss, ps, retain_graph=True)
            row.append(
                sum(
                    float((p.detach().double() * g.double()).abs().sum())
                    for p, g in zip(ps, gs, strict=True)
                )
            )
        rows.append(row)
    rows = np.array(rows)
    assert got.per_example is None  # defined on the batch gradient: bootstrap over batches
    np.testing.assert_allclose(got.per_batch, rows, rtol=1e-5)
    np.testing.assert_allclose(got.scores, (6 * rows[0] + 3 * rows[1]) / 9, rtol=1e-5)


def test_one_backward_feeds_all_four_as_each_alone() -> None:
    model, batches = tiny_gpt2(num_layers=3), toy_batches(2, 4, 10)
    names = ("fisher", "fisher_mask", "gradient", "taylor")
    shared = score_methods(model, batches, names, CFG)
    for name in names:
        alone = IMPORTANCE.get(name)(model, batches, cfg=CFG)
        np.testing.assert_allclose(shared[name].scores, alone.scores, rtol=1e-6)
        if alone.per_example is not None:
            np.testing.assert_allclose(shared[name].per_example, alone.per_example, rtol=1e-6)
