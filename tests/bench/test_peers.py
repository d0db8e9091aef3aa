"""``bench/peers.py``: the Torch-Pruning arm removes what its criterion says on a planted model
and builds the same shapes as the engine's per-layer prune (so the two are compared at equal
GFLOPs); the paired t interval covers at its stated rate."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("torch_pruning")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from peers import paired, t_interval, tp_prune  # noqa: E402

from engine.compress.prune import prune_structured_to  # noqa: E402
from engine.measure import count_gflops  # noqa: E402

HEADS, HEAD_DIM, FFN, LAYERS = 4, 8, 32, 2


def _bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=64, hidden_size=HEADS * HEAD_DIM, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=32,
        num_labels=3, attn_implementation="eager",
    )  # fmt: skip
    return BertForSequenceClassification(cfg).eval()


def _batches(n: int = 2):
    g = torch.Generator().manual_seed(1)
    return [
        {
            "input_ids": torch.randint(1, 64, (4, 12), generator=g),
            "attention_mask": torch.ones(4, 12, dtype=torch.long),
            "labels": torch.randint(0, 3, (4,), generator=g),
        }
        for _ in range(n)
    ]


def _plant(model, dead_heads: dict[int, list[int]], dead_ffn: dict[int, list[int]]) -> None:
    """Zero every weight of the planted heads and neurons (they carry nothing)."""
    with torch.no_grad():
        for layer, heads in dead_heads.items():
            blk = model.bert.encoder.layer[layer]
            for h in heads:
                rows = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
                for lin in (blk.attention.self.query, blk.attention.self.key,
                            blk.attention.self.value):  # fmt: skip
                    lin.weight[rows] = 0
                    lin.bias[rows] = 0
                blk.attention.output.dense.weight[:, rows] = 0
        for layer, neurons in dead_ffn.items():
            blk = model.bert.encoder.layer[layer]
            blk.intermediate.dense.weight[neurons] = 0
            blk.intermediate.dense.bias[neurons] = 0
            blk.output.dense.weight[:, neurons] = 0


def test_magnitude_arm_removes_exactly_the_planted_dead_heads_and_neurons() -> None:
    model = _bert()
    dead_heads = {0: [1, 3], 1: [0, 2]}
    dead_ffn = {0: list(range(0, 32, 4)), 1: list(range(3, 32, 4))}  # 8 of 32 in each layer
    _plant(model, dead_heads, dead_ffn)
    before = copy.deepcopy(model)
    tp_prune(model, heads_kept=2, ffn_kept=24, importance="magnitude", batches=_batches(),
             loss=torch.nn.functional.cross_entropy)  # fmt: skip
    for layer in range(LAYERS):
        old, new = before.bert.encoder.layer[layer], model.bert.encoder.layer[layer]
        live = [h for h in range(HEADS) if h not in dead_heads[layer]]
        rows = torch.cat([torch.arange(h * HEAD_DIM, (h + 1) * HEAD_DIM) for h in live])
        assert torch.equal(new.attention.self.query.weight, old.attention.self.query.weight[rows])
        keep = [n for n in range(FFN) if n not in dead_ffn[layer]]
        assert torch.equal(new.intermediate.dense.weight, old.intermediate.dense.weight[keep])
        assert new.attention.self.num_attention_heads == 2
    # the dead units carried nothing, so the pruned model computes what the planted one did
    b = _batches(1)[0]
    kw = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
    with torch.no_grad():
        torch.testing.assert_close(model(**kw).logits, before(**kw).logits, rtol=1e-5, atol=1e-5)


def test_torch_pruning_and_the_engine_build_the_same_shapes_so_the_same_gflops() -> None:
    teacher = _bert(seed=3)
    ours, peer = copy.deepcopy(teacher), copy.deepcopy(teacher)
    prune_structured_to(ours, heads_removed=LAYERS * 3, neurons_removed=[20] * LAYERS,
                        criterion="magnitude", per_layer=True)  # fmt: skip
    tp_prune(peer, heads_kept=1, ffn_kept=12, importance="taylor", batches=_batches(),
             loss=torch.nn.functional.cross_entropy)  # fmt: skip
    shapes = [{n: tuple(p.shape) for n, p in m.named_parameters()} for m in (ours, peer)]
    assert shapes[0] == shapes[1]
    assert count_gflops(ours, 12) == pytest.approx(count_gflops(peer, 12), rel=1e-9)
    assert count_gflops(peer, 12) < count_gflops(teacher, 12)


def test_the_t_interval_covers_the_mean_at_its_stated_rate() -> None:
    rng = np.random.default_rng(0)
    hits = 0
    draws = 4000
    for _ in range(draws):
        _, lo, hi = t_interval(rng.normal(0.3, 2.0, size=5))
        hits += lo <= 0.3 <= hi
    # binomial sd at p = 0.95, n = 4000 is 0.0034: 0.94-0.96 is about ±3 sd
    assert 0.94 <= hits / draws <= 0.96


def test_paired_differences_use_only_the_seeds_both_arms_ran() -> None:
    rows = [
        {"arm": "a", "level": "2.7x", "seed": 0, "acc": 0.70},
        {"arm": "a", "level": "2.7x", "seed": 1, "acc": 0.60},
        {"arm": "a", "level": "2.7x", "seed": 2, "acc": 0.90},  # b lacks seed 2
        {"arm": "b", "level": "2.7x", "seed": 0, "acc": 0.65},
        {"arm": "b", "level": "2.7x", "seed": 1, "acc": 0.50},
        {"arm": "b", "level": "4x", "seed": 2, "acc": 0.10},
    ]
    p = paired(rows, "a", "b", "2.7x", "acc")
    assert p["seeds"] == [0, 1]
    assert p["mean"] == pytest.approx((0.05 + 0.10) / 2)
    # by hand: d = (0.05, 0.10), sd = 0.035355, t_{0.975, 1} = 12.7062
    half = 12.7062 * 0.0353553 / np.sqrt(2)
    assert p["lo"] == pytest.approx(0.075 - half, abs=1e-4)
    assert p["hi"] == pytest.approx(0.075 + half, abs=1e-4)


def test_engine_weight_taylor_removes_exactly_what_torch_pruning_taylor_removes() -> None:
    # an independent library as the oracle: per layer, the same heads and FFN neurons go
    teacher = _bert(seed=5)
    ours, peer = copy.deepcopy(teacher), copy.deepcopy(teacher)
    batches = _batches(3)
    prune_structured_to(ours, heads_removed=LAYERS * 2, neurons_removed=[20] * LAYERS,
                        criterion="weight_taylor", batches=batches, per_layer=True)  # fmt: skip
    tp_prune(peer, heads_kept=2, ffn_kept=12, importance="taylor", batches=batches,
             loss=torch.nn.functional.cross_entropy)  # fmt: skip
    for (name, a), (_, b) in zip(ours.named_parameters(), peer.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert any(  # and it is a real choice: not simply the first units of each layer
        not torch.equal(
            ours.bert.encoder.layer[i].intermediate.dense.weight,
            teacher.bert.encoder.layer[i].intermediate.dense.weight[:12],
        )
        for i in range(LAYERS)
    )


def test_the_latency_architecture_has_the_runs_shapes() -> None:
    # an uneven global prune (as engine-gradual leaves it) rebuilt from its per-layer counts
    from types import SimpleNamespace

    from peers import architecture

    teacher = _bert(seed=7)
    shared = SimpleNamespace(teacher_config=teacher.config.to_dict(),
                             teacher_state=teacher.state_dict())  # fmt: skip
    pruned = copy.deepcopy(teacher)
    b = _batches(2)
    prune_structured_to(pruned, heads_removed=3, neurons_removed=[10, 10], criterion="taylor",
                        batches=b)  # fmt: skip
    layers = pruned.bert.encoder.layer
    row = {"heads_per_layer": [x.attention.self.num_attention_heads for x in layers],
           "ffn_per_layer": [x.intermediate.dense.out_features for x in layers]}  # fmt: skip
    rebuilt = architecture(shared, "rating_classification", row)
    shapes = [{n: tuple(p.shape) for n, p in m.named_parameters()} for m in (pruned, rebuilt)]
    assert shapes[0] == shapes[1]
    assert row["ffn_per_layer"] == [FFN - 10, FFN - 10]
    depth = architecture(shared, "rating_classification", {"heads_per_layer": [HEADS],
                                                           "ffn_per_layer": [FFN]})  # fmt: skip
    assert len(depth.bert.encoder.layer) == 1


@pytest.mark.parametrize(
    "arm",
    [
        "engine-oneshot",
        "engine-gradual-wt",
        "engine-oneshot-wt-hkd",
        "engine-oneshot-wt-lr3e-4",
        "engine-oneshot-wt-lr3e-4-gffn",
        "engine-oneshot-wt-lr3e-4-nall",
        "engine-oneshot-wt-lr3e-4-t1",
        "engine-oneshot-wt-lr3e-4-sb16",
    ],
)
def test_every_engine_arm_trains_the_same_total_steps(arm: str) -> None:
    # the bench's fairness claim: whichever stages an arm runs, their optimizer steps add up
    # to --steps (counted by each stage's own train_steps over the order it runs)
    from peers import ARMS, LEVELS, _study

    from engine.compress.base import STAGES
    from engine.config import with_values

    opts = {"steps": 85, "score_batches": 8, "recovery_lr": 1e-4, "alpha_hidden": 1.0,
            "heads": 12, "ffn": 1536}  # fmt: skip
    values = ARMS[arm].values(LEVELS["2.7x"], opts)
    cfg = with_values(_study("prune-recipe", []), values)
    total = sum(
        STAGES.get(name).train_steps(getattr(cfg.pipeline, name), 1440)
        for name in cfg.pipeline.order
        if STAGES.get(name).train_steps is not None
    )
    assert total == 85
    if arm.endswith("-hkd"):
        assert list(cfg.pipeline.order) == ["prune", "distill"]
        assert cfg.pipeline.distill.alpha_hidden == 1.0
        assert cfg.pipeline.prune.criterion == "weight_taylor"
    if "-lr3e-4" in arm:  # its own rate, not --recovery-lr's
        assert cfg.pipeline.prune.recovery_lr == 3e-4
    rankings = (cfg.pipeline.prune.head_ranking, cfg.pipeline.prune.neuron_ranking)
    if arm.endswith("-gffn"):
        assert rankings == ("per_layer", "global")
    if arm.endswith("-nall"):
        assert rankings == ("global_normalized", "global_normalized")
    prune = cfg.pipeline.prune
    if arm.endswith("-t1"):  # only the temperature differs from the study's KD
        assert (prune.temperature, prune.alpha_distill, prune.alpha_task) == (1.0, 0.5, 0.5)
    if arm.endswith("-sb16"):
        assert prune.score_batches == 16
