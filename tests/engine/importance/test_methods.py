"""Importance methods: registry contract, planted-model facts, hand computations, Ray runner."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import engine.importance  # noqa: F401  (registers every method)
from engine.importance import IMPORTANCE
from engine.importance.base import bootstrap_ci, from_per_batch, merge_scores
from engine.importance.compute import score_methods, split_batches
from engine.importance.config import ImportanceConfig
from engine.models import layer_list
from tests.conftest import tiny_bert, tiny_gpt2, tiny_llama, toy_batches

# small settings so every method runs in well under a second on a tiny model
FAST = {"conductance_steps": 4, "mc_samples": 3, "bootstrap_samples": 200}
METHODS = IMPORTANCE.names()


def plant_identity(model: torch.nn.Module, layer: int) -> None:
    """Zero a pre-LN decoder block's output projections: its output then equals its input."""
    block = layer_list(model)[layer]
    for name, mod in block.named_modules():
        if name.endswith(("c_proj", "o_proj", "down_proj")):
            with torch.no_grad():
                mod.weight.zero_()
                if getattr(mod, "bias", None) is not None:
                    mod.bias.zero_()


def as_data(batches: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    return {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}


# --- contract: generated from the registry ---------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_contract_one_finite_score_per_layer_deterministic(method: str, family: str) -> None:
    build = {"bert": tiny_bert, "gpt2": tiny_gpt2}[family]
    cfg = ImportanceConfig(**FAST)
    batches = toy_batches(n_batches=2, batch_size=4, seq=10)
    fn = IMPORTANCE.get(method)
    first = fn(build(num_layers=3), batches, cfg=cfg)
    again = fn(build(num_layers=3), batches, cfg=cfg)
    assert first.method == method
    assert len(first.scores) == 3
    assert all(math.isfinite(v) for v in first.scores)
    assert first.num_examples == 8
    assert first.scores == again.scores  # deterministic under the seed, bit for bit
    # the contract that makes actor merging exact: score = example-weighted per-batch mean
    assert first.per_batch is not None and first.batch_sizes == (4, 4)
    np.testing.assert_allclose(first.scores, np.mean(first.per_batch, axis=0), rtol=1e-12)
    # per-example methods: the score is the mean of the rows, per_batch each batch's mean
    if first.per_example is not None:
        rows = np.asarray(first.per_example)
        assert rows.shape == (8, 3) and np.isfinite(rows).all()
        np.testing.assert_allclose(first.scores, rows.mean(axis=0), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(
            first.per_batch, [rows[:4].mean(axis=0), rows[4:].mean(axis=0)], rtol=1e-12
        )
        assert first.per_example == again.per_example


@pytest.mark.parametrize("method", METHODS)
def test_contract_runs_on_llama(method: str) -> None:
    cfg = ImportanceConfig(**FAST)
    out = IMPORTANCE.get(method)(tiny_llama(num_layers=2), toy_batches(1, 4, 10), cfg=cfg)
    assert len(out.scores) == 2 and all(math.isfinite(v) for v in out.scores)


def test_shared_pass_equals_methods_run_alone() -> None:
    """One backward feeding four methods gives what each computes on its own."""
    model, batches = tiny_gpt2(num_layers=3), toy_batches(2, 4, 10)
    cfg = ImportanceConfig()
    shared = score_methods(model, batches, ("fisher", "fisher_mask", "gradient", "taylor"), cfg)
    for name, got in shared.items():
        alone = IMPORTANCE.get(name)(model, batches, cfg=cfg)
        np.testing.assert_allclose(got.scores, alone.scores, rtol=1e-6, atol=0)


# --- behavioural truths on planted models ----------------------------------------------------


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
def test_identity_layer_scores_exactly_zero_and_lowest_under_ablation(build) -> None:
    model, batches = build(num_layers=4), toy_batches(2, 6, 10)
    plant_identity(model, 2)
    kl = IMPORTANCE.get("ablation")(model, batches, cfg=ImportanceConfig(ablation_metric="kl"))
    loss = IMPORTANCE.get("ablation")(model, batches, cfg=ImportanceConfig(ablation_metric="loss"))
    # skipping a block whose output equals its input changes nothing, bit for bit
    assert kl.scores[2] == 0.0 and loss.scores[2] == 0.0
    assert all(kl.scores[i] > 0.0 for i in (0, 1, 3))
    assert kl.ranks()[2] == 3


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
def test_identity_layer_lowest_under_block_influence_and_patching(build) -> None:
    model, batches = build(num_layers=4), toy_batches(2, 6, 10)
    plant_identity(model, 1)
    cfg = ImportanceConfig()
    bi = IMPORTANCE.get("block_influence")(model, batches, cfg=cfg)
    assert bi.scores[1] == 0.0 and min(bi.scores[i] for i in (0, 2, 3)) > 0.0
    # the identity block contributes no update, so patching it in recovers nothing
    patched = IMPORTANCE.get("activation_patching")(model, batches, cfg=cfg)
    assert patched.scores[1] == 0.0
    # ... and dropout on its (zero) update changes nothing
    mc = IMPORTANCE.get("mc_dropout")(model, batches, cfg=ImportanceConfig(mc_metric="variance"))
    assert mc.scores[1] == 0.0 and min(mc.scores[i] for i in (0, 2, 3)) > 0.0


def scale_output_projections(model: torch.nn.Module, layer: int, factor: float) -> None:
    """Multiply a block's output projections (attention and MLP) by ``factor``."""
    names = ("c_proj", "o_proj", "down_proj", "attention.output.dense", "output.dense")
    block = layer_list(model)[layer]
    with torch.no_grad():
        for name, p in block.named_parameters():
            if any(n in name for n in names):
                p.mul_(factor)


@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_scaled_layer_scores_highest_under_parameter_gradient_methods(layer: int) -> None:
    """Post-LN BERT: a block whose update is scaled 10× dominates fisher and taylor (both read
    the block's parameter gradients; ``gradient`` reads its output's gradient, which the
    scaling does not raise — see tests/engine/importance/test_gradpass.py)."""
    model, batches = tiny_bert(num_layers=4), toy_batches(2, 6, 10)
    before = score_methods(model, batches, ("fisher", "taylor"), ImportanceConfig())
    scale_output_projections(model, layer, 10.0)
    got = score_methods(model, batches, ("fisher", "taylor"), ImportanceConfig())
    for name, s in got.items():
        assert s.ranks()[layer] == 0, (name, s.scores)
        assert s.scores[layer] > before[name].scores[layer]


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
@pytest.mark.parametrize("layer", [0, 3])
def test_scaled_layer_scores_highest_under_taylor_on_decoders(build, layer: int) -> None:
    """Pre-LN decoders: the final norm shrinks the scaled block's gradients (1/c) while its
    weights grow (c), so θ·∂L/∂θ — not the bare gradient — is the robust signal here."""
    model, batches = build(num_layers=4), toy_batches(2, 6, 10)
    scale_output_projections(model, layer, 10.0)
    got = IMPORTANCE.get("taylor")(model, batches, cfg=ImportanceConfig())
    assert got.ranks()[layer] == 0, got.scores


def gate_hook(gates: torch.Tensor, j: int):
    """Block output ``in + g_j · (out − in)``: g_j = 1 is the plain model, g_j = 0 skips it."""

    def hook(_m, args, kwargs, out):
        h_in = args[0] if args else kwargs["hidden_states"]
        h_out = out if isinstance(out, torch.Tensor) else out[0]
        new = h_in + gates[j] * (h_out - h_in)
        return new if isinstance(out, torch.Tensor) else (new, *out[1:])

    return hook


def test_fisher_mask_is_mean_squared_per_example_gate_gradient() -> None:
    """Gate gradients from one batched backward equal per-example backward passes."""
    model, (batch,) = tiny_llama(num_layers=2), toy_batches(1, 3, 8)
    got = IMPORTANCE.get("fisher_mask")(model, [batch], cfg=ImportanceConfig())
    layers = layer_list(model)
    sq = np.zeros(2)
    for i in range(3):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        gates = torch.ones(2, requires_grad=True)
        handles = [
            blk.register_forward_hook(gate_hook(gates, j), with_kwargs=True)
            for j, blk in enumerate(layers)
        ]
        try:
            logits = model(input_ids=one["input_ids"], attention_mask=one["attention_mask"]).logits
            (g,) = torch.autograd.grad(F.cross_entropy(logits, one["labels"]), [gates])
        finally:
            for h in handles:
                h.remove()
        sq += g.double().numpy() ** 2
    np.testing.assert_allclose(got.scores, sq / 3, rtol=1e-4)


# --- per-batch merging and bootstrap ---------------------------------------------------------


def test_merge_and_bootstrap_are_example_weighted_and_seeded() -> None:
    a = from_per_batch("m", [[1.0, 2.0]], [1])
    b = from_per_batch("m", [[4.0, 8.0], [7.0, 2.0]], [2, 3])
    merged = merge_scores([a, b])
    assert merged.scores == pytest.approx(((1 + 8 + 21) / 6, (2 + 16 + 6) / 6))
    assert merged.batch_sizes == (1, 2, 3) and merged.num_examples == 6
    ci = bootstrap_ci(merged, samples=500, level=0.9, seed=3)
    assert ci == bootstrap_ci(merged, samples=500, level=0.9, seed=3)
    for lo, s, hi, col in zip(
        ci.ci_low, ci.scores, ci.ci_high, zip(*merged.per_batch, strict=True), strict=True
    ):
        assert min(col) <= lo <= s <= hi <= max(col)
    assert bootstrap_ci(a).ci_low is None  # one batch: no interval


def test_oom_split_keeps_every_example() -> None:
    batches = toy_batches(2, 5, 6)
    halves = split_batches(batches)
    assert [int(b["labels"].shape[0]) for b in halves] == [3, 2, 3, 2]
    torch.testing.assert_close(
        torch.cat([b["input_ids"] for b in halves]), torch.cat([b["input_ids"] for b in batches])
    )


# --- Ray runner ------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_actors_equal_one_actor_and_table(ray_local) -> None:
    from engine.importance.runner import compute_importance, importance_table

    cpus_before = ray_local.available_resources().get("CPU", 0)
    model = tiny_gpt2(num_layers=3)
    plant_identity(model, 1)
    data = as_data(toy_batches(n_batches=5, batch_size=4, seq=10))  # 20 rows, 4×4 used
    base = {"num_batches": 4, "batch_size": 4, "ablation_metric": "kl", "bootstrap_samples": 200}
    methods = ("fisher", "ablation", "hybrid")
    one = compute_importance(model, data, ImportanceConfig(methods=methods, actors=1, **base))
    two = compute_importance(model, data, ImportanceConfig(methods=methods, actors=2, **base))
    assert set(one) == set(methods)
    for m in methods:
        assert one[m].scores == two[m].scores, m
        assert one[m].per_batch == two[m].per_batch
        assert one[m].ci_low == two[m].ci_low and one[m].ci_high == two[m].ci_high
        assert one[m].num_examples == 16
    # the same numbers as running the methods in-process on the same batches
    local = IMPORTANCE.get("fisher")(model, toy_batches(5, 4, 10)[:4], cfg=ImportanceConfig())
    np.testing.assert_allclose(one["fisher"].scores, local.scores, rtol=1e-6)
    assert one["ablation"].scores[1] == 0.0
    # the runner's actors were killed: the CPUs free before the call are free again
    # (ray.kill is asynchronous, so poll briefly)
    deadline = time.monotonic() + 30
    while ray_local.available_resources().get("CPU", 0) < cpus_before:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert ray_local.available_resources().get("CPU", 0) >= cpus_before

    table = importance_table(one)
    assert list(table.columns) == [
        "method",
        "layer",
        "score",
        "rank",
        "ci_low",
        "ci_high",
        "ci_unit",
        "ci_units",
        "ci_reliable",
        "score_rank_normalised",
    ]
    abl = table[table.method == "ablation"].set_index("layer")
    assert abl.loc[1, "rank"] == 2 and abl.loc[1, "score_rank_normalised"] == 0.0
    assert (abl["ci_low"] <= abl["score"] + 1e-15).all() and (
        abl["score"] <= abl["ci_high"] + 1e-15
    ).all()
    assert isinstance(table, pd.DataFrame) and len(table) == 9


def test_unknown_method_error_lists_known_names() -> None:
    from engine.importance.compute import expand_methods

    with pytest.raises(KeyError, match="did you mean 'fisher'") as err:
        expand_methods(("fishr",), ImportanceConfig())
    assert "block_influence" in str(err.value)
    # derived methods pull in their components, each once, before themselves
    cfg = ImportanceConfig(hybrid_weights={"fisher": 1.0, "gradient": 1.0})
    assert expand_methods(("fisher", "hybrid"), cfg) == ("fisher", "gradient", "hybrid")
