"""Importance runtime: out-of-memory retry, bf16 policy, multi-node actors, layer selection
from any method (including hybrid and consensus)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch

import engine.importance  # noqa: F401  (registers every method)
from engine.compress import STAGES, StageContext
from engine.compress.truncate import TruncateConfig, select_layers
from engine.config import ConfigError, load_study
from engine.importance import IMPORTANCE
from engine.importance.base import DERIVED
from engine.importance.compute import (
    BF16_SAFE,
    is_out_of_memory,
    score_methods,
    split_batches,
    uses_bf16,
)
from engine.importance.config import ImportanceConfig
from engine.models import layer_list
from tests.conftest import tiny_bert, tiny_gpt2, toy_batches

GRAD_AND_FWD = ("fisher", "gradient", "taylor", "ablation", "block_influence")


def plant_oom(
    model: torch.nn.Module, max_batch: int, make_error
) -> torch.utils.hooks.RemovableHandle:
    """The real model raises ``make_error()`` whenever it is called on more than ``max_batch``
    examples — the condition a too-large batch meets on a GPU, planted on the CPU."""

    def pre(_m: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        if ids.shape[0] > max_batch:
            raise make_error()

    return model.register_forward_pre_hook(pre, with_kwargs=True)


# --- out of memory → batch halved and retried, logged ---------------------------------------


def test_oom_halves_batches_and_gives_the_result_of_the_halved_batches(caplog) -> None:
    model, batches = tiny_gpt2(num_layers=3), toy_batches(2, 8, 10)
    cfg = ImportanceConfig(ablation_metric="kl")
    expected = score_methods(model, split_batches(batches), GRAD_AND_FWD, cfg)
    handle = plant_oom(model, 4, lambda: torch.OutOfMemoryError("CUDA out of memory (planted)"))
    try:
        with caplog.at_level(logging.WARNING, logger="engine.importance.compute"):
            got = score_methods(model, batches, GRAD_AND_FWD, cfg)
    finally:
        handle.remove()
    for m in GRAD_AND_FWD:
        assert got[m].batch_sizes == (4, 4, 4, 4), m
        assert got[m].num_examples == 16
        np.testing.assert_array_equal(got[m].per_batch, expected[m].per_batch, err_msg=m)
    # the first group to run hits the limit once; later groups start from the halved batches
    warnings = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "batch size 8" in warnings[0] and "largest 4" in warnings[0]


def test_oom_in_a_later_group_reruns_earlier_groups_so_derived_methods_combine(caplog) -> None:
    """Only the backward pass runs out of memory (planted: only with gradients on); the
    forward pass that ran before it on whole batches is rerun on the halves, so hybrid can
    combine fisher and block_influence batch by batch."""
    model, batches = tiny_gpt2(num_layers=3), toy_batches(2, 8, 10)
    cfg = ImportanceConfig(hybrid_weights={"fisher": 1.0, "block_influence": 1.0})
    names = ("hybrid", "fisher", "block_influence", "ablation")
    expected = score_methods(model, split_batches(batches), names, cfg)

    def pre(_m: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if torch.is_grad_enabled() and kwargs["input_ids"].shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (planted, backward only)")

    handle = model.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with caplog.at_level(logging.WARNING, logger="engine.importance.compute"):
            got = score_methods(model, batches, names, cfg)
    finally:
        handle.remove()
    warnings = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert len(warnings) == 1 and "['fisher']" in warnings[0], warnings
    for m in names:
        assert got[m].batch_sizes == (4, 4, 4, 4), m
        np.testing.assert_array_equal(got[m].per_batch, expected[m].per_batch, err_msg=m)


def test_oom_as_runtime_error_message_is_retried_until_it_fits(caplog) -> None:
    model, batches = tiny_bert(num_layers=2), toy_batches(1, 8, 10)
    handle = plant_oom(model, 2, lambda: RuntimeError("CUDA error: out of memory"))
    try:
        # a method function alone has no retry: the planted error reaches the caller ...
        with pytest.raises(RuntimeError, match="out of memory") as err:
            IMPORTANCE.get("fisher")(model, batches, cfg=ImportanceConfig())
        assert is_out_of_memory(err.value)
        # ... the engine retries it
        with caplog.at_level(logging.WARNING, logger="engine.importance.compute"):
            got = score_methods(model, batches, ("fisher",), ImportanceConfig())["fisher"]
    finally:
        handle.remove()
    assert got.batch_sizes == (2, 2, 2, 2)  # 8 → 4 → 2: two halvings
    assert sum("out of memory" in r.getMessage() for r in caplog.records) == 2
    quarter = split_batches(split_batches(batches))
    ref = score_methods(model, quarter, ("fisher",), ImportanceConfig())["fisher"]
    assert got.per_batch == ref.per_batch


def test_other_errors_and_oom_at_batch_one_are_raised() -> None:
    model, batches = tiny_gpt2(num_layers=2), toy_batches(1, 4, 10)
    handle = plant_oom(model, 0, lambda: torch.OutOfMemoryError("CUDA out of memory (planted)"))
    try:
        with pytest.raises(torch.OutOfMemoryError):  # does not fit even one example
            score_methods(model, batches, ("fisher",), ImportanceConfig())
    finally:
        handle.remove()
    handle = plant_oom(model, 0, lambda: RuntimeError("shape mismatch"))
    try:
        with pytest.raises(RuntimeError, match="shape mismatch"):  # not retried
            score_methods(model, batches, ("ablation",), ImportanceConfig())
    finally:
        handle.remove()
    assert not is_out_of_memory(ValueError("out of memory"))
    # the model is left as it was: no hooks, requires_grad restored
    assert all(not b._forward_hooks for b in layer_list(model))
    assert all(p.requires_grad for p in model.parameters())


# --- bf16 autocast only where numerically safe ---------------------------------------------


def test_bf16_only_for_gradient_groups_on_cuda() -> None:
    on = ImportanceConfig(autocast_bf16=True)
    off = ImportanceConfig(autocast_bf16=False)
    grads = frozenset({"fisher", "fisher_mask", "gradient", "taylor"})
    assert grads == BF16_SAFE
    assert uses_bf16(grads, "cuda", on)
    assert not uses_bf16(grads, "cuda", off)
    assert not uses_bf16(grads, "cpu", on)
    for m in IMPORTANCE.names():
        if m not in grads and m not in DERIVED:
            assert not uses_bf16({m}, "cuda", on), m


@pytest.mark.gpu
def test_bf16_gradient_pass_ranks_like_float32_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from tests.engine.importance.test_methods import scale_output_projections

    model = tiny_bert(num_layers=4).cuda()
    scale_output_projections(model, 2, 10.0)
    batches = [{k: v.cuda() for k, v in b.items()} for b in toy_batches(2, 8, 12)]
    names = ("fisher", "gradient", "taylor")
    bf16 = score_methods(model, batches, names, ImportanceConfig(autocast_bf16=True))
    fp32 = score_methods(model, batches, names, ImportanceConfig(autocast_bf16=False))
    # the planted layer leads the parameter-gradient methods; ``gradient`` (the norm of
    # ∂L/∂h at each block's output) is not moved by scaling a block's own weights — on CPU in
    # float32 it ranks layer 2 second of four, scores within 3 % of each other — so only its
    # bf16/float32 agreement is asserted
    for m in ("fisher", "taylor"):
        assert bf16[m].ranks()[2] == 0 and fp32[m].ranks()[2] == 0, m
    for m in names:
        np.testing.assert_allclose(bf16[m].scores, fp32[m].scores, rtol=0.1)


# --- several nodes ----------------------------------------------------------------------------


@pytest.mark.cluster
def test_actors_on_two_nodes_equal_one_actor(caplog) -> None:
    """Two 1-CPU nodes; each actor needs 0.75 CPU, so two actors must sit on different nodes
    and fetch the model across the object stores. Scores equal one actor's, bit for bit."""
    import ray
    from ray.cluster_utils import Cluster

    from engine.importance.runner import compute_importance
    from tests.engine.importance.test_methods import as_data

    was_running = ray.is_initialized()
    if was_running:
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 150 * 2**20},
    )
    try:
        cluster.add_node(num_cpus=1, object_store_memory=150 * 2**20)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        deadline = time.monotonic() + 60
        while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        model = tiny_gpt2(num_layers=3)
        data = as_data(toy_batches(n_batches=4, batch_size=4, seq=10))
        base = {"num_batches": 4, "batch_size": 4, "bootstrap_samples": 200}
        methods = ("fisher", "ablation", "block_influence", "consensus")
        base["consensus_methods"] = ("fisher", "ablation", "block_influence")
        one = compute_importance(model, data, ImportanceConfig(methods=methods, actors=1, **base))
        with caplog.at_level(logging.INFO, logger="engine.importance.runner"):
            two = compute_importance(
                model, data, ImportanceConfig(methods=methods, actors=2, **base)
            )
        placed = [r.args for r in caplog.records if r.getMessage().startswith("importance actor")]
        assert len(placed) == 2
        assert placed[0][1] != placed[1][1], "both actors landed on one node"
        assert {placed[0][1], placed[1][1]} <= {n["NodeID"] for n in ray.nodes()}
        for m in methods:
            assert one[m].scores == two[m].scores, m
            assert one[m].per_batch == two[m].per_batch, m
            assert one[m].ci_low == two[m].ci_low, m
    finally:
        ray.shutdown()
        cluster.shutdown()
        if was_running:  # give the session's shared local Ray back to later tests
            ray.init(
                num_cpus=2,
                object_store_memory=300 * 2**20,
                include_dashboard=False,
                log_to_driver=False,
            )


# --- layer selection by any method, the hybrid or the consensus -----------------------------


def _ctx(importance) -> StageContext:
    return StageContext(
        teacher=None,  # type: ignore[arg-type]
        train={},
        teacher_logits=torch.empty(0),
        importance=importance,
        seed=0,
    )


def test_truncate_uses_every_method_hybrid_and_consensus() -> None:
    model, batches = tiny_gpt2(num_layers=4), toy_batches(2, 4, 10)
    cfg = ImportanceConfig(mc_samples=2, conductance_steps=2)
    names = tuple(IMPORTANCE.names())
    assert {"hybrid", "consensus"} <= set(names)
    scores = score_methods(model, batches, names, cfg)
    ctx = _ctx(scores)
    for m in names:
        kept = select_layers(m, 2, 4, ctx)
        assert kept == scores[m].top_k(2), m
        student = STAGES.get("truncate")(model, TruncateConfig(keep_layers=2, strategy=m), ctx)
        assert ctx.record["truncate"]["kept_layers"] == kept
        # the student's blocks are the kept teacher blocks, weights copied
        for j, i in enumerate(kept):
            a = dict(layer_list(student)[j].named_parameters())
            for name, p in layer_list(model)[i].named_parameters():
                torch.testing.assert_close(a[name], p)


def test_consensus_strategy_follows_the_planted_consensus() -> None:
    """Layers 0 and 2 top every component: consensus and hybrid keep exactly them (uniform
    would keep 1 and 3)."""
    from engine.importance.base import from_per_batch

    comps = {
        "fisher": [[0.9, 0.1, 0.8, 0.2], [0.7, 0.2, 0.9, 0.1]],
        "gradient": [[5.0, 1.0, 4.0, 2.0], [4.0, 1.0, 6.0, 2.0]],
        "attention": [[0.6, 0.3, 0.5, 0.1], [0.8, 0.2, 0.7, 0.3]],
    }
    parts = {m: from_per_batch(m, rows, [3, 5]) for m, rows in comps.items()}
    cfg = ImportanceConfig(consensus_methods=tuple(comps))
    parts["consensus"] = DERIVED["consensus"].combine(parts, cfg)
    parts["hybrid"] = DERIVED["hybrid"].combine(parts, cfg)
    assert select_layers("consensus", 2, 4, _ctx(parts)) == [0, 2]
    assert select_layers("hybrid", 2, 4, _ctx(parts)) == [0, 2]
    assert select_layers("uniform", 2, 4, _ctx(parts)) == [1, 3]


def test_study_strategies_must_be_computed_methods() -> None:
    cfg = load_study("importance", ["pipeline.truncate.strategy=hybrid"])
    assert cfg.pipeline.truncate.strategy == "hybrid"
    with pytest.raises(ConfigError) as err:
        load_study(
            "importance",
            [
                "importance.methods=[fisher,ablation]",
                "search.space={}",
                "pipeline.truncate.strategy=consensus",
            ],
        )
    (line,) = err.value.problems
    assert "pipeline.truncate.strategy: 'consensus'" in line and "importance.methods" in line
