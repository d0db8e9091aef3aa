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
        criterion="magnitude", head_sparsity=0.5, neuron_sparsity=0.75, initial_sparsity=0.1, steps=6, prune_every=2,
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
    cfg = PruneConfig(criterion="magnitude", lr=5e-4, recovery_lr=2e-5, recovery_steps=5,
                      recovery_warmup_ratio=0.0, steps=2, batch_size=8)  # fmt: skip
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
    for crit in ("magnitude", "taylor", "fisher", "weight_taylor"):
        h, n = unit_scores(model, crit, heads=True, batches=bs)
        assert h is not None and len(h) == 4 and h[2].shape == (HEADS,)
        assert int(h[2].argmin()) == 1, crit
        assert int(n[2].argmin()) == 9, crit
        if crit != "magnitude":
            assert float(h[2][1]) == 0.0 and float(n[2][9]) == 0.0
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_weight_taylor_is_the_sum_of_weight_times_gradient_over_each_unit() -> None:
    """BERT layout, indexed by hand: a head owns rows h·D…(h+1)·D of Q, K, V and those columns
    of the attention output; a neuron its row of the up projection and its column of the down
    projection. Score = Σ |w · ∂L/∂w| there, ∂L/∂w summed over both batches; biases out."""
    model = tiny_bert()
    bs = toy_batches(2, batch_size=8)
    ref = copy.deepcopy(model)
    for b in bs:
        logits = ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        torch.nn.functional.cross_entropy(logits, b["labels"]).backward()
    h, n = unit_scores(model, "weight_taylor", heads=True, batches=bs)
    assert h is not None
    for i, blk in enumerate(ref.bert.encoder.layer):
        att = blk.attention
        want_h = []
        for head in range(HEADS):
            rows = slice(head * D, (head + 1) * D)
            tot = sum((lin.weight[rows] * lin.weight.grad[rows]).abs().sum()
                      for lin in (att.self.query, att.self.key, att.self.value))  # fmt: skip
            o = att.output.dense
            want_h.append(tot + (o.weight[:, rows] * o.weight.grad[:, rows]).abs().sum())
        up, down = blk.intermediate.dense, blk.output.dense
        want_n = (up.weight * up.weight.grad).abs().sum(1) + (
            down.weight * down.weight.grad
        ).abs().sum(0)
        torch.testing.assert_close(h[i], torch.stack(want_h).detach(), rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(n[i], want_n.detach(), rtol=1e-5, atol=1e-9)
    assert all(p.grad is None for p in model.parameters())  # the model's grads left as found
    assert float(torch.stack(h).min()) > 0  # every unit matters, so the check is informative


def test_by_default_structured_pruning_cuts_the_lowest_weight_taylor_neurons_in_one_shot() -> None:
    """The defaults are the recipe measured best (weight-Taylor, one shot): with nothing but
    the sparsity set, every layer loses exactly its neurons of least Σ |w · ∂L/∂w| (up row +
    down column), the gradient of the labels' cross-entropy over the training set, computed
    here by hand. 32 examples at the default batch size 32: every score batch is the whole set,
    so the ranking does not depend on the draw. Masked methods resolve ``auto`` to magnitude,
    so switching ``method`` alone is valid, and they refuse any other criterion."""
    model = tiny_bert()
    train = _train()
    assert len(train["labels"]) == PruneConfig().batch_size
    ref = copy.deepcopy(model)
    logits = ref(input_ids=train["input_ids"], attention_mask=train["attention_mask"]).logits
    torch.nn.functional.cross_entropy(logits, train["labels"]).backward()
    cut = FFN // 4
    want = []
    for blk in ref.bert.encoder.layer:
        up, down = blk.intermediate.dense, blk.output.dense
        score = (up.weight * up.weight.grad).abs().sum(1) + (
            down.weight * down.weight.grad
        ).abs().sum(0)
        want.append(sorted(torch.argsort(score)[cut:].tolist()))
    ctx = _ctx(train)
    out = STAGES.get("prune")(model, PruneConfig(head_sparsity=0.0, neuron_sparsity=0.25), ctx)
    assert ctx.record["prune"]["criterion"] == "weight_taylor"
    assert [e["step"] for e in ctx.record["prune"]["schedule"]] == [0]  # one event: one shot
    for i, blk in enumerate(out.bert.encoder.layer):
        old = ref.bert.encoder.layer[i].intermediate.dense.weight
        kept = [int((old == row).all(1).nonzero()) for row in blk.intermediate.dense.weight]
        assert kept == want[i], i
    for method in ("unstructured", "semi_structured_2_4"):
        assert PruneConfig(method=method).criterion_used == "magnitude"
        with pytest.raises(ValueError, match="supports criterion 'magnitude' only"):
            PruneConfig(method=method, criterion="weight_taylor")


@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_llama])
def test_decoders_prune_ffn_neurons_and_heads(factory) -> None:
    model = factory()
    ctx = _ctx()
    out = STAGES.get("prune")(
        model, PruneConfig(criterion="magnitude", head_sparsity=0, neuron_sparsity=0.5), ctx
    )
    assert ctx.record["prune"]["ffn_width"] == ctx.record["prune"]["ffn_width_before"] // 2
    assert torch.isfinite(_logits(out, _train(1))).all()
    ctx = _ctx()  # heads too: 4 of 16 (tiny_llama: 2 key/value groups of 2 query heads)
    out = STAGES.get("prune")(
        factory(), PruneConfig(criterion="magnitude", head_sparsity=0.25), ctx
    )
    rec = ctx.record["prune"]
    assert rec["heads_total"] == 16 and sum(rec["heads_kept_per_layer"]) == 12
    assert sum(len(v) for v in out.config.pruned_heads.values()) == 4
    assert torch.isfinite(_logits(out, _train(1))).all()


def _unit_slices(model: torch.nn.Module) -> tuple[int, int, int]:
    """(head size d, query heads per unit g, units per layer) from the config."""
    cfg = model.config
    n = cfg.num_attention_heads
    g = n // getattr(cfg, "num_key_value_heads", n)
    return cfg.hidden_size // n, g, n // g


def _magnitude_by_hand(model: torch.nn.Module, of=None, reduce=None) -> list[list[float]]:
    """√(Σ w²) over every weight entry a head unit owns, picked out by index: GPT-2's fused
    c_attn holds Q, K, V as thirds of its columns, c_proj's rows are the heads' outputs;
    Llama's unit u is query heads u·g … (u+1)·g − 1 and key/value head u. ``of(layer)``
    replaces each layer's weight (e.g. by weight × gradient) and ``reduce`` the √(Σ w²)."""
    of = of or (lambda lin: lin.weight)
    reduce = reduce or (lambda ps: float(sum(float(p.double().pow(2).sum()) for p in ps)) ** 0.5)
    d, g, units = _unit_slices(model)
    e = model.config.hidden_size
    out = []
    for i in range(model.config.num_hidden_layers):
        row = []
        for u in range(units):
            if hasattr(model, "transformer"):
                a = model.transformer.h[i].attn
                parts = [of(a.c_attn)[:, t * e + u * d : t * e + (u + 1) * d] for t in range(3)]
                parts.append(of(a.c_proj)[u * d : (u + 1) * d, :])
            else:
                a = model.model.layers[i].self_attn
                q = slice(u * g * d, (u + 1) * g * d)
                kv = slice(u * d, (u + 1) * d)
                parts = [of(a.q_proj)[q], of(a.k_proj)[kv], of(a.v_proj)[kv],
                         of(a.o_proj)[:, q]]  # fmt: skip
            row.append(reduce([p.detach() for p in parts]))
        out.append(row)
    return out


def _mask_grads_by_hand(model: torch.nn.Module, data: dict[str, torch.Tensor]) -> torch.Tensor:
    """∂L/∂m for a mask m on each head unit, put on the *weights*: the output projection's
    input rows/columns of unit u are multiplied by m_u (L = mean cross-entropy on ``data``)."""
    d, g, units = _unit_slices(model)
    layers = model.config.num_hidden_layers
    m = torch.ones(layers, units, requires_grad=True)
    gpt2 = hasattr(model, "transformer")
    weights = {}
    for i in range(layers):
        scale = m[i].repeat_interleave(g * d)
        if gpt2:
            w = model.transformer.h[i].attn.c_proj.weight
            weights[f"transformer.h.{i}.attn.c_proj.weight"] = w.detach() * scale[:, None]
        else:
            w = model.model.layers[i].self_attn.o_proj.weight
            weights[f"model.layers.{i}.self_attn.o_proj.weight"] = w.detach() * scale[None, :]
    model.eval()
    logits = torch.func.functional_call(
        model, weights, kwargs={"input_ids": data["input_ids"],
                                "attention_mask": data["attention_mask"]},
    ).logits  # fmt: skip
    loss = torch.nn.functional.cross_entropy(logits, data["labels"])
    (grad,) = torch.autograd.grad(loss, m)
    return grad


@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_llama])
def test_decoder_head_scores_match_their_definition(factory) -> None:
    """Per head unit (a GPT-2 head; a Llama key/value group of 2 query heads): magnitude is the
    norm of the unit's weights, taylor |∂L/∂m|, fisher (∂L/∂m)² and weight_taylor
    Σ |w · ∂L/∂w| over the unit's weights, one batch."""
    model = factory()
    data = _train(1)
    units = _unit_slices(model)[2]
    grad = _mask_grads_by_hand(model, data)
    ref = copy.deepcopy(model)
    out = ref(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    torch.nn.functional.cross_entropy(out, data["labels"]).backward()
    wg = _magnitude_by_hand(ref, of=lambda lin: lin.weight * lin.weight.grad,
                            reduce=lambda ps: float(sum(p.double().abs().sum() for p in ps)))  # fmt: skip
    want = {
        "magnitude": torch.tensor(_magnitude_by_hand(model)),
        "taylor": grad.abs(),
        "fisher": grad.pow(2),
        "weight_taylor": torch.tensor(wg),
    }
    for crit, ref in want.items():
        h, _ = unit_scores(model, crit, heads=True, batches=[data])
        assert h is not None and [s.shape for s in h] == [(units,)] * 4
        torch.testing.assert_close(torch.stack(h).double(), ref.double(), rtol=1e-4, atol=1e-7)
    assert float(grad.abs().min()) > 0  # every unit matters, so the ranking is informative


@pytest.mark.parametrize("criterion", ["magnitude", "taylor"])
@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_llama])
def test_the_stage_removes_the_lowest_scored_decoder_heads(factory, criterion) -> None:
    """One-shot (no training): 8 of GPT-2's 16 heads go (Llama: 4 query heads = 2 of its 8
    key/value groups), ranked globally by the criterion with at least one unit kept per
    layer — every kept unit that was not its layer's last scores at least as high as every
    removed one. Scores from the definitions above, on the one training batch the stage
    scores on."""
    model = factory()
    data = _train(1)
    _, g, units = _unit_slices(model)
    if criterion == "magnitude":
        scores = torch.tensor(_magnitude_by_hand(model))
    else:
        scores = _mask_grads_by_hand(model, data).abs()
    ctx = _ctx(data)
    cfg = PruneConfig(head_sparsity=0.5 / g, neuron_sparsity=0.0, criterion=criterion,
                      batch_size=8, score_batches=1)  # fmt: skip
    out = STAGES.get("prune")(model, cfg, ctx)
    gone = {int(k): v for k, v in out.config.pruned_heads.items()}
    removed = {(i, h // g) for i, hs in gone.items() for h in hs}
    assert sum(len(hs) for hs in gone.values()) == 8 // g
    assert all(len(hs) == g * len({h // g for h in hs}) for hs in gone.values())  # whole units
    kept = {(i, u) for i in range(4) for u in range(units)} - removed
    sole = {(i, u) for i, u in kept if sum(k[0] == i for k in kept) == 1}
    assert len(kept) == 4 * units - 8 // g // g and {i for i, _ in kept} == set(range(4))
    assert len(kept - sole) >= 4  # the ranking, not the keep-one rule, decides most
    worst_removed = max(float(scores[k]) for k in removed)
    for k in kept - sole:
        assert float(scores[k]) >= worst_removed - 1e-6, (k, criterion)


def test_item_model_prunes_heads_gradually_then_recovers_and_reloads(tmp_path) -> None:
    """End to end on a next-item recommender: taylor scores on the catalogue loss, gradual
    pruning of heads and FFN neurons with KD in between, recovery, then save → reload."""
    from engine.compress.save import load_compressed, save_compressed
    from engine.tasks import get_task
    from engine.tasks.item_models import build_item_model

    model = build_item_model("scratch:gpt2", 50, seed=1)  # 6 layers × 2 heads, FFN 256
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 50, (16, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[:6, :4] = 0
    ids[mask == 0] = 0
    train = {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(1, 50, (16,))}
    ctx = StageContext(teacher=None, train=train, teacher_logits=torch.randn(16, 50),
                       importance={}, seed=0, task=get_task("next_item"))  # fmt: skip
    g0 = count_gflops(model, 10)
    cfg = PruneConfig(head_sparsity=0.5, neuron_sparsity=0.5, criterion="taylor", steps=4,
                      prune_every=2, recovery_steps=2, batch_size=8, kd=True)  # fmt: skip
    out = STAGES.get("prune")(model, cfg, ctx)
    rec = ctx.record["prune"]
    assert rec["heads_total"] == 12 and rec["heads_kept_per_layer"] == [1] * 6
    assert rec["ffn_width"] == 128 and rec["recovery"]["steps"] == 2
    assert [e["step"] for e in rec["schedule"]] == [0, 2, 4]
    assert count_gflops(out, 10) < g0
    save_compressed(out, tmp_path, records=ctx.records)
    again = load_compressed(tmp_path)
    batch = {"input_ids": ids, "attention_mask": mask}
    torch.testing.assert_close(_logits(again, batch), _logits(out, batch), rtol=0, atol=0)


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


@pytest.mark.parametrize("build", [tiny_bert, tiny_gpt2, tiny_llama])
def test_uneven_ffn_widths_and_heads_save_and_reload_exactly(build, tmp_path) -> None:
    """Per-layer FFN widths (and heads) that differ survive ``save_pretrained`` →
    ``load_pruned``: the same widths per layer and the same logits as the model saved."""
    from engine.compress.structure import load_pruned
    from engine.models import layer_list

    model = build(num_layers=3)
    blocks = list(layer_list(model))
    for block, gone in zip(blocks, ([0, 5, 9], list(range(20)), []), strict=True):
        remove_neurons(block, gone)
    remove_heads(blocks[1], [0, 1])  # GQA (llama): one whole key/value group
    sync_config(model)
    model.save_pretrained(tmp_path)
    back = load_pruned(tmp_path)
    want = [ffn_width(b) for b in blocks]
    assert len(set(want)) == 3
    assert [ffn_width(b) for b in layer_list(back)] == want
    data = _train(1)
    assert torch.equal(_logits(back, data), _logits(model.eval(), data))
    # a truncate after pruning keeps each kept layer's width in the config (renumbered)
    from engine.models import keep_layers

    small = keep_layers(model, [2, 1])
    small.save_pretrained(tmp_path / "small")  # no sync_config: the config alone must say
    back = load_pruned(tmp_path / "small")
    assert [ffn_width(b) for b in layer_list(back)] == [want[1], want[2]]  # forward order
    assert torch.equal(_logits(back, data), _logits(small.eval(), data))


def _plant_weak_neurons(model: torch.nn.Module, weak: dict[int, list[int]]) -> None:
    """Shrink the planted neurons' in- and out-weights 1000×: by magnitude (the L2 norm of a
    unit's weights) they are the least important, whatever layer they sit in."""
    with torch.no_grad():
        for layer, ns in weak.items():
            block = model.bert.encoder.layer[layer]
            block.intermediate.dense.weight[ns] *= 1e-3
            block.intermediate.dense.bias[ns] *= 1e-3
            block.output.dense.weight[:, ns] *= 1e-3


@pytest.mark.parametrize("ranking", ["global", "per_layer"])
def test_neuron_ranking_global_removes_the_planted_weakest_across_layers(ranking: str) -> None:
    """12 weak neurons planted unevenly (9 in layer 0, 3 in layer 2, none in 1): ranked
    across layers, a 12-neuron cut (neuron_sparsity 12 / 192) removes exactly them and leaves
    uneven widths (the record and the GFLOPs fall as the removed count says); ranked per
    layer, every layer loses 4."""
    model = tiny_bert(num_layers=3)
    weak = {0: [1, 4, 7, 10, 13, 16, 19, 22, 25], 2: [3, 30, 60]}
    _plant_weak_neurons(model, weak)
    ref = copy.deepcopy(model)
    ctx = _ctx()
    cfg = PruneConfig(
        criterion="magnitude", head_sparsity=0.0, neuron_sparsity=4 / FFN, neuron_ranking=ranking
    )
    STAGES.get("prune")(model, cfg, ctx)
    blocks, old = model.bert.encoder.layer, ref.bert.encoder.layer
    if ranking == "per_layer":
        assert [ffn_width(b) for b in blocks] == [FFN - 4] * 3
        assert ctx.record["prune"]["ffn_width"] == FFN - 4
        return
    assert [ffn_width(b) for b in blocks] == [FFN - 9, FFN, FFN - 3]
    assert ctx.record["prune"]["ffn_widths"] == [FFN - 9, FFN, FFN - 3]
    assert "ffn_width" not in ctx.record["prune"]
    for layer in range(3):
        keep = [n for n in range(FFN) if n not in weak.get(layer, [])]
        w_old = old[layer].intermediate.dense.weight
        assert torch.equal(blocks[layer].intermediate.dense.weight, w_old[keep])
    # every FFN neuron costs the same multiply-adds in every layer: 2·H per token
    drop = count_multiply_adds(ref, 16) - count_multiply_adds(model, 16)
    assert drop == 12 * 2 * H * 16


def _brute_lowest(scores: list[list[float]], total: int) -> set[tuple[int, int]]:
    """The set of ``total`` units with the smallest score sum keeping ≥ 1 per layer."""
    import itertools

    units = [(lay, pos) for lay, sc in enumerate(scores) for pos in range(len(sc))]
    feasible = (
        c
        for c in itertools.combinations(units, total)
        if all(sum(1 for lay, _ in c if lay == i) < len(sc) for i, sc in enumerate(scores))
    )
    return set(min(feasible, key=lambda c: sum(scores[lay][pos] for lay, pos in c)))


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_lowest_across_layers_is_the_cheapest_feasible_set(seed: int, normalized: bool) -> None:
    """Against a brute force over every subset: the units removed across layers are the
    feasible set (≥ 1 left per layer) of least total score — scores divided by their layer's
    mean when normalized. Layer 1 is planted with scores 50× larger (its own mean divides
    that away under normalization)."""
    from engine.compress.prune import _lowest_across

    g = torch.Generator().manual_seed(seed)
    sizes = [3, 4, 2]
    scores = [torch.rand(n, generator=g, dtype=torch.float64) for n in sizes]
    scores[1] = scores[1] * 50
    total = 5
    drop = _lowest_across(scores, total, normalized=normalized)
    got = {(lay, pos) for lay, ps in drop.items() for pos in ps}
    ref = [(sc / sc.mean()).tolist() if normalized else sc.tolist() for sc in scores]
    assert got == _brute_lowest(ref, total)


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


def _zero_gpt2_heads(model: torch.nn.Module, layer: int, heads: list[int]) -> None:
    """Plant heads with no weight at all: the lowest magnitude there is."""
    d, _, _ = _unit_slices(model)
    e = model.config.hidden_size
    a = model.transformer.h[layer].attn
    with torch.no_grad():
        for h in heads:
            for t in range(3):
                a.c_attn.weight[:, t * e + h * d : t * e + (h + 1) * d] = 0
            a.c_proj.weight[h * d : (h + 1) * d, :] = 0


@pytest.mark.parametrize("removed", [8, 6])
def test_per_layer_head_ranking_removes_the_same_count_from_every_layer(removed) -> None:
    """Layer 0's heads 0-2 planted at zero: global ranking strips layer 0 to its last head,
    ``per_layer`` takes an even share from each layer instead. The removed set must be the
    even allocation (per layer ⌊n/L⌋, one more in n mod L layers) with the least total
    magnitude, found by brute force over allocations and per-layer choices."""
    import itertools

    model = tiny_gpt2()  # 4 layers × 4 heads
    _zero_gpt2_heads(model, 0, [0, 1, 2])
    scores = _magnitude_by_hand(model)
    base, extra = divmod(removed, 4)
    best, best_sets = float("inf"), None
    for more in itertools.combinations(range(4), extra):
        for sets in itertools.product(*[
            itertools.combinations(range(4), base + (i in more)) for i in range(4)
        ]):  # fmt: skip
            total = sum(scores[i][h] for i, hs in enumerate(sets) for h in hs)
            if total < best - 1e-9:
                best, best_sets = total, {i: set(hs) for i, hs in enumerate(sets)}
    cfg = PruneConfig(
        criterion="magnitude",
        head_sparsity=removed / 16,
        neuron_sparsity=0.0,
        head_ranking="per_layer",
    )
    out = STAGES.get("prune")(copy.deepcopy(model), cfg, _ctx())
    gone = {int(k): set(v) for k, v in out.config.pruned_heads.items()}
    assert {i: gone.get(i, set()) for i in range(4)} == best_sets
    per_layer = sorted(len(v) for v in best_sets.values())
    assert per_layer == [base] * (4 - extra) + [base + 1] * extra

    cfg = PruneConfig(criterion="magnitude", head_sparsity=removed / 16, neuron_sparsity=0.0)
    out = STAGES.get("prune")(copy.deepcopy(model), cfg, _ctx())
    global_gone = {int(k): set(v) for k, v in out.config.pruned_heads.items()}
    assert global_gone[0] == {0, 1, 2}  # the planted heads, all of them: ranking is global


@pytest.mark.parametrize("removed", [4, 6])
def test_global_normalized_ranking_removes_the_least_relative_heads(removed) -> None:
    """Layer 2's attention weights planted 20x larger: the raw global ranking never touches
    it, while ``global_normalized`` compares each head with its own layer's mean. The removed
    set must be the one that minimises the sum of (head magnitude ÷ its layer's mean head
    magnitude), by brute force over every set of ``removed`` of the 16 heads."""
    import itertools

    model = tiny_gpt2()  # 4 layers × 4 heads
    with torch.no_grad():
        a = model.transformer.h[2].attn
        a.c_attn.weight.mul_(20)
        a.c_proj.weight.mul_(20)
    scores = _magnitude_by_hand(model)
    rel = {(i, h): scores[i][h] / (sum(scores[i]) / 4) for i in range(4) for h in range(4)}
    best = min(itertools.combinations(rel, removed), key=lambda hs: sum(rel[x] for x in hs))
    want = {i: {h for j, h in best if j == i} for i in range(4)}
    assert want[2], "the planted layer must lose a head under the relative ranking"

    def gone(ranking: str) -> dict[int, set[int]]:
        cfg = PruneConfig(
            criterion="magnitude",
            head_sparsity=removed / 16,
            neuron_sparsity=0.0,
            head_ranking=ranking,
        )
        out = STAGES.get("prune")(copy.deepcopy(model), cfg, _ctx())
        got = {int(k): set(v) for k, v in out.config.pruned_heads.items()}
        return {i: got.get(i, set()) for i in range(4)}

    assert gone("global_normalized") == want
    assert gone("global")[2] == set()  # raw scores: the large layer keeps every head


def test_per_layer_head_ranking_stays_even_over_a_gradual_schedule() -> None:
    """Three pruning events (sparsity 1/8 → 1/2 of 16 heads) with training in between: the
    cumulative removal still ends at 2 heads out of every layer."""
    model = tiny_gpt2()
    cfg = PruneConfig(criterion="magnitude", head_sparsity=0.5, neuron_sparsity=0.0,
                      initial_sparsity=0.125, steps=4, prune_every=2, head_ranking="per_layer",
                      batch_size=8)  # fmt: skip
    ctx = _ctx(_train(2))
    out = STAGES.get("prune")(model, cfg, ctx)
    rec = ctx.records["prune"]
    assert rec.schedule[0]["heads"] == 2  # 1/8 of 16 at t = 0
    assert rec.heads_kept_per_layer == [2, 2, 2, 2]
    assert out.config.n_head == 4 and sum(len(v) for v in out.config.pruned_heads.values()) == 8
