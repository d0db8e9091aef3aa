"""The latency phase: saved students reloaded and timed under one condition after the sweep
(``engine/latency_phase.py``, ``engine.measure.interleaved_latency``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from engine.compress import STAGES, StageContext
from engine.compress.prune import PruneConfig
from engine.compress.quantize import QuantizeConfig
from engine.compress.save import save_compressed
from engine.compress.truncate import TruncateConfig
from engine.latency_phase import (
    TimingSetup,
    ToTime,
    apply_latency,
    load_for_timing,
    time_models,
    untimed_phase,
)
from engine.measure import interleaved_latency
from tests.conftest import tiny_bert, toy_batches

# Two identical students on one machine measured within this ratio of each other. The
# shipped ablation run's identical 2-layer students, each timed inside its trial beside
# another trial's training, were 336 / 198 = 1.70× apart, so 1.5× fails for that
# contamination. The phase times the students in turns, so outside load hits both alike. On
# the shared 2-core development machine at load average 4-15 (other engineers' tests and a
# study run beside it), 20 runs at this test's settings (batch 128 × 64 tokens, 31 rounds)
# stayed within 1.17× (35 runs with 15 rounds: within 1.31×; timed one model after the other
# instead of in turns: up to 2.1× with small batches).
IDENTICAL_RATIO = 1.5


def _ctx(seed: int = 0) -> StageContext:
    bs = toy_batches(4, batch_size=8, seed=seed)
    train = {k: torch.cat([b[k] for b in bs]) for k in bs[0]}
    logits = torch.randn(32, 5, generator=torch.Generator().manual_seed(seed))
    return StageContext(teacher=None, train=train, teacher_logits=logits, importance={}, seed=0)


def _student(out: Path, stages: list[tuple[str, object]]) -> tuple[torch.nn.Module, Path]:
    """A student built by the project's stages from the tiny teacher, saved as a trial would
    save it (``save_compressed``)."""
    model, ctx = tiny_bert(num_layers=4), _ctx()
    for name, cfg in stages:
        model = STAGES.get(name)(model, cfg, ctx)
    save_compressed(model, out, records=ctx.records)
    return model, out


def _setup(batch_size: int = 128, repeats: int = 31, warmup: int = 2) -> TimingSetup:
    b = toy_batches(1, batch_size=batch_size, seq=64, seed=3)[0]
    return TimingSetup(
        batch={k: b[k].numpy() for k in ("input_ids", "attention_mask")},
        repeats=repeats,
        warmup=warmup,
        threads=1,
        cuda=False,
    )


def test_identical_students_measure_alike_in_the_phase(tmp_path: Path) -> None:
    """Two students with the same architecture (2 of 4 layers, kept by two different
    strategies, like the ablation's fisher and uniform students) go through the phase as a
    sweep sends them: saved under models/, reloaded, timed with the teacher. Their p50s agree
    within ``IDENTICAL_RATIO`` (see its comment for why 1.5×: robust on a loaded 2-core
    machine, and failed by the 1.70× of the old in-trial contamination). Batch 128 × 64
    tokens makes one forward long (~10-30 ms here) against the scheduler's slices, so a
    forward's time averages the load rather than catching all or none of a preemption."""
    a = _student(tmp_path / "a", [("truncate", TruncateConfig(keep_layers=2, strategy="uniform"))])
    b = _student(
        tmp_path / "b", [("truncate", TruncateConfig(keep_layers=2, strategy="first_last"))]
    )
    items = [ToTime("a", "ok", str(a[1])), ToTime("b", "ok", str(b[1]))]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        phase = time_models(items, _setup(), tiny_bert(num_layers=4))
        assert torch.get_num_threads() == 2  # the caller's thread count is restored
    finally:
        torch.set_num_threads(before)
    p50 = [phase.rows[t]["latency_ms_p50"] for t in ("a", "b")]
    assert max(p50) / min(p50) <= IDENTICAL_RATIO, p50
    for t in ("a", "b", "teacher"):
        row = phase.rows[t]
        assert row["latency_phase"] == "serial" and row["latency_reason"] is None
        assert row["latency_threads"] == 1 and row["latency_device"] == "cpu"
        assert 0 < row["latency_ms_p50"] <= row["latency_ms_p95"]
        assert row["throughput_per_s"] == pytest.approx(128 / (row["latency_ms_p50"] / 1e3))
    assert phase.info["timed"] == 3 and phase.info["groups"] == 1
    assert phase.info["threads"] == 1 and phase.info["batch_size"] == 128


def test_pruned_and_quantized_students_reload_and_time(tmp_path: Path) -> None:
    """Head- and FFN-pruned and dynamic-int8 students reload as they were built (pruned
    shapes, int8 Linear modules on CPU) and get a figure; rows without a saved model get NaN
    and the reason, never another condition's number."""
    trunc = ("truncate", TruncateConfig(keep_layers=2, strategy="uniform"))
    heads = (
        "prune",
        PruneConfig(
            criterion="magnitude", head_sparsity=0.4, neuron_sparsity=0.25, steps=2, batch_size=8
        ),
    )
    ffn = (
        "prune",
        PruneConfig(criterion="magnitude", head_sparsity=0, neuron_sparsity=0.5, recovery_steps=2),
    )
    pruned, pruned_dir = _student(tmp_path / "pruned", [heads, trunc])
    quant, quant_dir = _student(tmp_path / "quant", [trunc, ffn, ("quantize", QuantizeConfig())])

    again, device = load_for_timing(pruned_dir, cuda=False)
    shapes = {n: p.shape for n, p in pruned.named_parameters()}
    assert {n: p.shape for n, p in again.named_parameters()} == shapes and device.type == "cpu"
    again, device = load_for_timing(quant_dir, cuda=True)  # dynamic int8 runs on CPU anyway
    assert device.type == "cpu"
    n_int8 = sum(isinstance(m, DynamicLinear) for m in again.modules())
    assert n_int8 == sum(isinstance(m, DynamicLinear) for m in quant.modules()) > 0

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    items = [
        ToTime("pruned", "ok", str(pruned_dir)),
        ToTime("quant", "ok", str(quant_dir)),
        ToTime("stopped", "stopped", None),
        ToTime("failed", "failed", None),
        ToTime("unsaved", "ok", None),
        ToTime("elsewhere", "ok", str(tmp_path / "on-another-node")),
        ToTime("broken", "ok", str(broken)),
    ]
    phase = time_models(items, _setup(batch_size=8, repeats=3, warmup=1))
    for t in ("pruned", "quant"):
        assert phase.rows[t]["latency_phase"] == "serial", phase.rows[t]
        assert math.isfinite(phase.rows[t]["latency_ms_p50"])
        assert phase.rows[t]["latency_device"] == "cpu"
    reasons = {
        "stopped": "trial stopped",
        "failed": "trial failed",
        "unsaved": "measure.save_models=false",
        "elsewhere": "no saved model at",
        "broken": "reload or first forward failed",
    }
    for t, reason in reasons.items():
        row = phase.rows[t]
        assert row["latency_phase"] == "none" and reason in row["latency_reason"], row
        assert all(math.isnan(row[c]) for c in ("latency_ms_p50", "latency_ms_p95"))
    assert "teacher" not in phase.rows and phase.info["timed"] == 2


def test_apply_latency_keeps_in_trial_figures_apart() -> None:
    """The public columns hold only the phase's figures (NaN where it has none); what a
    trial measured itself survives only under ``latency_in_trial_*``."""
    rows = [
        {"trial_id": "teacher", "latency_ms_p50": 40.0, "latency_ms_p95": 41.0},
        {"trial_id": "t1", "latency_ms_p50": 336.0, "latency_ms_p95": 350.0, "throughput_per_s": 1},
        {"trial_id": "t2", "status": "failed"},
    ]
    timed = time_models([], _setup(batch_size=4, repeats=1, warmup=0), tiny_bert(num_layers=1))
    phase = untimed_phase(["t1", "t2"], "planted")
    phase.rows["teacher"] = timed.rows["teacher"]
    out = {r["trial_id"]: r for r in apply_latency(rows, phase)}
    assert out["teacher"]["latency_ms_p50"] == timed.rows["teacher"]["latency_ms_p50"]
    assert out["teacher"]["latency_in_trial_ms_p50"] == 40.0
    assert out["teacher"]["latency_phase"] == "serial"
    assert math.isnan(out["t1"]["latency_ms_p50"]) and math.isnan(out["t1"]["throughput_per_s"])
    assert out["t1"]["latency_in_trial_ms_p50"] == 336.0
    assert out["t1"]["latency_in_trial_ms_p95"] == 350.0
    assert out["t1"]["latency_phase"] == "none" and out["t1"]["latency_reason"] == "planted"
    assert "latency_in_trial_ms_p50" not in out["t2"]
    assert rows[1]["latency_ms_p50"] == 336.0  # the input rows are not modified


def test_interleaved_latency_orders_models_by_their_work() -> None:
    """A model with 12 layers does 12× the layer work of a 1-layer one on the same batch:
    timed in turns, it is slower; each model's figures are its own (p50 ≤ p95, throughput
    = batch / p50). (Batch 64 and 11 rounds: with 8 layers, batch 16 and 5 rounds the
    difference was small enough for a loaded 2-core machine to flip it once.)"""
    b = toy_batches(1, batch_size=64, seq=32)[0]
    batch = {k: b[k] for k in ("input_ids", "attention_mask", "labels")}  # labels dropped
    small, large = tiny_bert(num_layers=1), tiny_bert(num_layers=12)
    out = interleaved_latency([(small, batch), (large, batch)], repeats=11, warmup=1)
    assert out[1]["latency_ms_p50"] > out[0]["latency_ms_p50"]
    for r in out:
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p95"]
        assert r["throughput_per_s"] == pytest.approx(64 / (r["latency_ms_p50"] / 1e3))
    assert not small.training and not large.training
    with pytest.raises(ValueError, match="repeats"):
        interleaved_latency([(small, batch)], repeats=0, warmup=0)


def test_models_beyond_the_memory_budget_are_timed_in_groups(tmp_path: Path) -> None:
    """With room for one student at a time, each is timed in its own group beside the
    teacher, and the teacher's figure per group is recorded (the drift between groups)."""
    trunc = ("truncate", TruncateConfig(keep_layers=2, strategy="uniform"))
    dirs = [_student(tmp_path / f"s{i}", [trunc])[1] for i in range(3)]
    items = [ToTime(f"s{i}", "ok", str(d)) for i, d in enumerate(dirs)]
    phase = time_models(
        items, _setup(batch_size=8, repeats=2, warmup=0), tiny_bert(2), resident_bytes=1
    )
    assert phase.info["groups"] == 3
    by_group = phase.info["teacher_p50_by_group"]
    assert len(by_group) == 3 and np.isfinite(by_group).all()
    assert phase.rows["teacher"]["latency_ms_p50"] == by_group[0]
    assert all(phase.rows[f"s{i}"]["latency_phase"] == "serial" for i in range(3))
