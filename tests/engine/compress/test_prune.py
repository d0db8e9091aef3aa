"""Structured pruning: exact parameter removal, unchanged kept units, analytic GFLOPs drop,
the gradual schedule, recovery's own learning rate, scores, and weight masks."""

from __future__ import annotations

import copy

import pytest
import torch

from engine.compress import STAGES, StageContext, masked
from engine.compress.prune import PruneConfig
from engine.compress.schedule import pruning_events, sparsity_at
from engine.compress.scores import unit_scores
from engine.compress.structure import (
    ffn_width,
    head_ids,
    remove_heads,
    remove_neurons,
    sync_config,
)
from engine.measure import count_gflops, count_multiply_adds, count_params
from tests.conftest import tiny_bert, tiny_gpt2, tiny_llama, toy_batches

H, D, HEADS, FFN = 32, 8, 4, 64  # tiny_bert: hidden 32, 4 heads of 8, FFN 64


def _train(n_batches: int = 4) -> dict[str, torch.Tensor]:
    bs = toy_batches(n_batches, batch_size=8)
    return {k: torch.cat([b[k] for b in bs]) for k in bs[0]}


def _ctx(train: dict[str, torch.Tensor] | None = None, seed: int = 0) -> StageContext:
    train = train if train is not None else _train()
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(len(train["labels"]), 5, generator=g)
    return StageContext(teacher=None, train=train, teacher_logits=logits, importance={}, seed=seed)


def _logits(model: torch.nn.Module, data: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits


def test_removing_heads_and_neurons_removes_exactly_those_parameters() -> None:
    model = tiny_bert()
    before = count_params(model)
    ref = copy.deepcopy(model)
    layer0, layer1 = model.bert.encoder.layer[0], model.bert.encoder.layer[1]
    remove_heads(layer0, [1, 3])
    remove_neurons(layer1, list(range(10)))
    # per head: Q, K, V rows (3·(H·D + D)) and output-projection columns (H·D)
    per_head = 3 * (H * D + D) + H * D
    # per neuron: up-projection row and bias (H + 1), down-projection column (H)
    per_neuron = 2 * H + 1
    assert before - count_params(model) == 2 * per_head + 10 * per_neuron
    assert head_ids(layer0) == [0, 2]
    q_old = ref.bert.encoder.layer[0].attention.self.query.weight
    kept_rows = torch.cat([torch.arange(0, D), torch.arange(2 * D, 3 * D)])
    assert torch.equal(layer0.attention.self.query.weight, q_old[kept_rows])
    o_old = ref.bert.encoder.layer[0].attention.output.dense.weight
    assert torch.equal(layer0.attention.output.dense.weight, o_old[:, kept_rows])
    assert layer0.attention.self.num_attention_heads == 2
    assert layer1.intermediate.dense.weight.shape == (FFN - 10, H)
    d_old = ref.bert.encoder.layer[1].output.dense.weight
    assert torch.equal(layer1.output.dense.weight, d_old[:, 10:])
    with pytest.raises(ValueError, match="every head"):
        remove_heads(layer0, [0, 1])


def test_kept_units_contribute_exactly_as_before_pruning() -> None:
    """Independent computation: the unpruned model with the removed heads' output-projection
    columns and the removed neurons' down-projection columns zeroed gives the same logits."""
    model = tiny_bert()
    zeroed = copy.deepcopy(model)
    data = _train(2)
    heads = {0: [0, 2], 2: [3]}
    neurons = {1: [0, 5, 7, 63], 3: list(range(0, 64, 2))}
    with torch.no_grad():
        for layer, hs in heads.items():
            o = zeroed.bert.encoder.layer[layer].attention.output.dense.weight
            for h in hs:
                o[:, h * D : (h + 1) * D] = 0
        for layer, ns in neurons.items():
            zeroed.bert.encoder.layer[layer].output.dense.weight[:, ns] = 0
    for layer, hs in heads.items():
        remove_heads(model.bert.encoder.layer[layer], hs)
    for layer, ns in neurons.items():
        remove_neurons(model.bert.encoder.layer[layer], ns)
    torch.testing.assert_close(_logits(model, data), _logits(zeroed, data), rtol=1e-5, atol=1e-5)

    def hidden(m: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            out = m.bert(input_ids=data["input_ids"], attention_mask=data["attention_mask"])
        return out.last_hidden_state

    torch.testing.assert_close(hidden(model), hidden(zeroed), rtol=1e-5, atol=1e-5)
    assert (hidden(model) - hidden(tiny_bert())).abs().max() > 1e-2  # pruning did change it


@pytest.mark.parametrize(("heads", "neurons"), [(1, 0), (3, 0), (0, 16), (2, 40)])
def test_fvcore_gflops_drop_by_the_analytic_amount(heads: int, neurons: int) -> None:
    seq = 16
    model = tiny_bert()
    full = count_gflops(model, seq)
    # a head per token: Q, K, V (3·H·D) and O (D·H) MACs, plus QKᵀ and AV (2·seq·D)
    head_macs = seq * (4 * H * D + 2 * seq * D)
    neuron_macs = seq * 2 * H  # up-projection row and down-projection column per token
    block = model.bert.encoder.layer[1]
    remove_heads(block, list(range(heads)))
    remove_neurons(block, list(range(neurons)))
    expected = full - 2 * (heads * head_macs + neurons * neuron_macs) / 1e9
    assert count_gflops(model, seq) == pytest.approx(expected, rel=0.01)
    assert count_multiply_adds(model, seq) * 2 / 1e9 == pytest.approx(expected, rel=1e-9)


def test_gradual_schedule_matches_the_formula_at_every_step() -> None:
    s_i, s_f, n, e = 0.1, 0.6, 10, 3.0
    for t in range(n + 1):
        assert sparsity_at(t, initial=s_i, final=s_f, steps=n, exponent=e) == pytest.approx(
            s_f + (s_i - s_f) * (1 - t / n) ** e, abs=1e-12
        )
    events = pruning_events(initial=s_i, final=s_f, steps=n, every=3, exponent=e)
    assert [t for t, _ in events] == [0, 3, 6, 9, 10]
    assert events[0][1] == pytest.approx(s_i) and events[-1][1] == pytest.approx(s_f)
    assert pruning_events(initial=0, final=0.5, steps=0, every=1, exponent=3) == [(0, 0.5)]


def test_the_stage_prunes_to_the_schedule_at_every_pruning_step() -> None:
    model = tiny_bert()
    ctx = _ctx()
    cfg = PruneConfig(
        head_sparsity=0.5, neuron_sparsity=0.75, initial_sparsity=0.1, steps=6, prune_every=2,
        exponent=2.0, batch_size=8, kd=True,
    )  # fmt: skip
    out = STAGES.get("prune")(model, cfg, ctx)
    rec = ctx.record["prune"]
    heads_gone = neurons_gone = 0
    for ev in rec["schedule"]:
        t = ev["step"]
        s_h = sparsity_at(t, initial=0.1, final=0.5, steps=6, exponent=2.0)
        s_n = sparsity_at(t, initial=0.1, final=0.75, steps=6, exponent=2.0)
        assert ev["head_sparsity"] == pytest.approx(s_h)
        heads_gone += ev["heads"]
        neurons_gone += ev["neurons"]
        assert heads_gone == round(s_h * 16)  # 4 layers × 4 heads
        assert neurons_gone == 4 * round(s_n * FFN)  # the same count from every layer
    assert [e["step"] for e in rec["schedule"]] == [0, 2, 4, 6]
    assert rec["prune_train_steps"] == 6
    assert sum(rec["heads_kept_per_layer"]) == 8 and min(rec["heads_kept_per_layer"]) >= 1
    assert out.config.intermediate_size == 16
    assert sum(len(v) for v in out.config.pruned_heads.values()) == 8


def test_recovery_uses_its_own_learning_rate() -> None:
    ctx = _ctx()
    cfg = PruneConfig(lr=5e-4, recovery_lr=2e-5, recovery_steps=5, recovery_warmup_ratio=0.0,
                      steps=2, batch_size=8)  # fmt: skip
    STAGES.get("prune")(tiny_bert(), cfg, ctx)
    rec = ctx.record["prune"]["recovery"]
    assert rec["steps"] == 5
    assert rec["optimizer_lr"] == pytest.approx(2e-5)  # the optimizer's base lr
    assert rec["peak_lr"] == pytest.approx(2e-5)  # and the largest lr any step used


def test_scores_find_planted_dead_units() -> None:
    """A head whose output projection is zero and a neuron whose down-projection column is
    zero change nothing: every criterion must rank them last in their layer."""
    model = tiny_bert()
    with torch.no_grad():
        blk = model.bert.encoder.layer[2]
        blk.attention.output.dense.weight[:, 1 * D : 2 * D] = 0
        for lin in (blk.attention.self.query, blk.attention.self.key, blk.attention.self.value):
            lin.weight[D : 2 * D] *= 0.01  # also tiny, so magnitude agrees
        blk.output.dense.weight[:, 9] = 0
        blk.intermediate.dense.weight[9] *= 0.01
    bs = toy_batches(2, batch_size=8)
    for crit in ("magnitude", "taylor", "fisher"):
        h, n = unit_scores(model, crit, heads=True, batches=bs)
        assert h is not None and len(h) == 4 and h[2].shape == (HEADS,)
        assert int(h[2].argmin()) == 1, crit
        assert int(n[2].argmin()) == 9, crit
        if crit != "magnitude":
            assert float(h[2][1]) == 0.0 and float(n[2][9]) == 0.0
    assert all(p.requires_grad for p in model.parameters())  # flags restored


@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_llama])
def test_decoders_prune_ffn_neurons_and_refuse_heads(factory) -> None:
    model = factory()
    ctx = _ctx()
    out = STAGES.get("prune")(model, PruneConfig(head_sparsity=0, neuron_sparsity=0.5), ctx)
    assert ctx.record["prune"]["ffn_width"] == ctx.record["prune"]["ffn_width_before"] // 2
    assert torch.isfinite(_logits(out, _train(1))).all()
    with pytest.raises(ValueError, match="head pruning supports BERT"):
        STAGES.get("prune")(factory(), PruneConfig(head_sparsity=0.25), _ctx())


def test_two_four_masks_keep_two_of_every_four_and_survive_recovery() -> None:
    model = tiny_bert()
    g0 = count_gflops(model, 16)
    ctx = _ctx()
    cfg = PruneConfig(method="semi_structured_2_4", steps=3, recovery_steps=3, batch_size=8)
    out = STAGES.get("prune")(model, cfg, ctx)
    for _, w, _ in masked.prunable_weights(out):
        groups = (w.detach() != 0).reshape(-1, 4).sum(1)
        assert (groups <= 2).all()
    assert ctx.record["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert ctx.record["prune"]["dense_flops_reduced"] is False
    assert count_gflops(out, 16) == g0  # dense shapes: dense FLOPs unchanged


def test_unstructured_magnitude_hits_the_sparsity_and_keeps_the_largest() -> None:
    model = tiny_bert()
    ref = copy.deepcopy(model)
    ctx = _ctx()
    STAGES.get("prune")(model, PruneConfig(method="unstructured", weight_sparsity=0.3), ctx)
    assert ctx.record["sparsity"] == pytest.approx(0.3, abs=1e-3)
    for (_, w, _), (_, w0, _) in zip(
        masked.prunable_weights(model), masked.prunable_weights(ref), strict=True
    ):
        kept = w.detach() != 0
        assert torch.equal(w[kept], w0[kept])  # one-shot, no training: kept weights untouched
        assert w0.detach().abs()[~kept].max() <= w0.detach().abs()[kept].min()


def test_sync_config_rejects_uneven_ffn_widths() -> None:
    model = tiny_bert()
    remove_neurons(model.bert.encoder.layer[0], [0])
    with pytest.raises(ValueError, match="FFN widths differ"):
        sync_config(model)


def test_pruned_structure_lives_in_the_config_and_follows_truncation() -> None:
    """Kept head ids are a fact of the model's config (``pruned_heads``), not attributes on
    its modules: they survive a deep copy and a layer selection (truncate after prune), and
    the FFN widths before pruning (``ffn_widths_before_pruning``) too."""
    from engine.compress.prune import prune_structured_to
    from engine.models import keep_layers, layer_list

    model = tiny_bert()
    blocks = list(layer_list(model))
    remove_heads(blocks[1], [0])
    remove_heads(blocks[3], [1, 2])
    remove_heads(blocks[3], [0])  # current positions: original id 0 → positions shift
    assert model.config.pruned_heads == {"1": [0], "3": [0, 1, 2]}
    assert [head_ids(b) for b in blocks] == [[0, 1, 2, 3], [1, 2, 3], [0, 1, 2, 3], [3]]
    private = [k for m in model.modules() for k in vars(m) if k.startswith("_engine")]
    assert private == []
    small = keep_layers(model, [1, 3])  # a truncate after pruning renumbers the layers
    assert small.config.pruned_heads == {"0": [0], "1": [0, 1, 2]}
    assert [head_ids(b) for b in layer_list(small)] == [[1, 2, 3], [3]]
    assert model.config.pruned_heads == {"1": [0], "3": [0, 1, 2]}  # the source is untouched
    # FFN targets count against the widths before the first call, kept in the config
    fresh = tiny_bert()
    prune_structured_to(fresh, heads_removed=0, neurons_removed=[16] * 4, criterion="magnitude")
    assert fresh.config.ffn_widths_before_pruning == [FFN] * 4
    twin = copy.deepcopy(fresh)
    prune_structured_to(twin, heads_removed=0, neurons_removed=[40] * 4, criterion="magnitude")
    assert [ffn_width(b) for b in layer_list(twin)] == [FFN - 40] * 4  # 24 more, not 40
