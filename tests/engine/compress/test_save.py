"""Save → reload is exact for truncated, pruned, masked and quantized models."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from engine.compress import STAGES, StageContext
from engine.compress.prune import PruneConfig
from engine.compress.quantize import QuantizeConfig
from engine.compress.save import MANIFEST, load_compressed, save_compressed
from engine.compress.truncate import TruncateConfig
from tests.conftest import tiny_bert, tiny_shared_inputs, toy_batches


def _ctx() -> StageContext:
    bs = toy_batches(4, batch_size=8)
    train = {k: torch.cat([b[k] for b in bs]) for k in bs[0]}
    logits = torch.randn(32, 5, generator=torch.Generator().manual_seed(0))
    return StageContext(teacher=None, train=train, teacher_logits=logits, importance={}, seed=0)


def _run(order: list[tuple[str, object]]) -> tuple[torch.nn.Module, StageContext]:
    model, ctx = tiny_bert(), _ctx()
    for name, cfg in order:
        model = STAGES.get(name)(model, cfg, ctx)
    return model, ctx


def _logits(model: torch.nn.Module) -> torch.Tensor:
    b = toy_batches(1, batch_size=8, seed=5)[0]
    with torch.no_grad():
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits


TRUNC = ("truncate", TruncateConfig(keep_layers=2, strategy="uniform"))
FFN_ONLY = (
    "prune",
    PruneConfig(criterion="magnitude", head_sparsity=0, neuron_sparsity=0.5, recovery_steps=2),
)
HEADS = (
    "prune",
    PruneConfig(
        criterion="magnitude", head_sparsity=0.4, neuron_sparsity=0.25, steps=2, batch_size=8
    ),
)


@pytest.mark.parametrize(
    "order", [[TRUNC], [FFN_ONLY], [TRUNC, FFN_ONLY]], ids=["truncate", "ffn", "truncate+ffn"]
)
def test_plain_from_pretrained_reloads_exactly(tmp_path: Path, order) -> None:
    model, ctx = _run(order)
    save_compressed(model, tmp_path, records=ctx.records)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(_logits(model), _logits(again))
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["plain_from_pretrained"] is True
    assert manifest["record"] == json.loads(json.dumps(ctx.record, default=str))


@pytest.mark.parametrize("order", [[HEADS], [HEADS, TRUNC]], ids=["heads", "heads+truncate"])
def test_head_pruned_models_reload_exactly(tmp_path: Path, order) -> None:
    model, ctx = _run(order)
    save_compressed(model, tmp_path, records=ctx.records)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["pruned_heads"]  # the removed heads, by (renumbered) layer
    again = load_compressed(tmp_path)
    assert torch.equal(_logits(model), _logits(again))
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in model.parameters())


def test_masked_model_reloads_with_its_zeros(tmp_path: Path) -> None:
    model, ctx = _run([("prune", PruneConfig(method="semi_structured_2_4"))])
    save_compressed(model, tmp_path, records=ctx.records)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(_logits(model), _logits(again))


def test_quantized_model_is_saved_as_float_and_requantized_exactly(tmp_path: Path) -> None:
    model, ctx = _run([FFN_ONLY, ("quantize", QuantizeConfig())])
    save_compressed(model, tmp_path, records=ctx.records)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["requantize"] == "dynamic_int8"
    again = load_compressed(tmp_path)
    assert torch.equal(_logits(model), _logits(again))
    without = dataclasses.replace(ctx.records["quantize"], float_model=None)
    with pytest.raises(ValueError, match="float model"):
        save_compressed(model, tmp_path / "x", records={**ctx.records, "quantize": without})


def test_a_save_that_fails_half_way_leaves_a_directory_load_refuses(tmp_path: Path) -> None:
    """compression.json marks a whole directory: a re-save that fails after it started (here
    the quantize stage, lacking its float model) leaves none, so the weights left from the
    old save (or a half of the new) are never loaded as if they were complete."""
    model, ctx = _run([FFN_ONLY, ("quantize", QuantizeConfig())])
    save_compressed(model, tmp_path, records=ctx.records)
    assert (tmp_path / MANIFEST).is_file() and (tmp_path / "model.safetensors").is_file()
    without = dataclasses.replace(ctx.records["quantize"], float_model=None)
    with pytest.raises(ValueError, match="float model"):
        save_compressed(model, tmp_path, records={**ctx.records, "quantize": without})
    assert not (tmp_path / MANIFEST).exists()
    with pytest.raises(FileNotFoundError, match=MANIFEST):
        load_compressed(tmp_path)
    save_compressed(model, tmp_path, records=ctx.records)  # a finished save is whole again
    assert torch.equal(_logits(model), _logits(load_compressed(tmp_path)))


@pytest.mark.slow
def test_trials_save_their_model_unless_measure_save_models_is_false(
    tmp_path: Path, ray_local
) -> None:
    """Two real Tune trials of the trial function on a tiny teacher, one per setting: the
    default writes models/<trial_id>/ (reloadable, same test predictions); false writes
    nothing under models/ and leaves model_dir empty, with the same results otherwise."""
    from ray import tune

    from engine.config import validate
    from engine.trial import run_trial

    shared = tiny_shared_inputs(train_batches=2, eval_batches=1)
    splits = shared.splits
    study = validate(
        {
            "name": "save-models", "description": "save on/off", "data": {"max_length": 12},
            "pipeline": {"order": ["truncate", "distill"],
                         "truncate": {"keep_layers": 2, "strategy": "uniform"},
                         "distill": {"max_steps": 2, "batch_size": 8}},
            "measure": {"batch_size": 4, "latency_repeats": 1, "warmup": 0},
        },
        "test",
    )  # fmt: skip
    run_dir = tmp_path / "run"
    grid = tune.Tuner(
        tune.with_parameters(run_trial, study=study, shared=shared, run_dir=str(run_dir)),
        param_space={
            "seed": 0,
            "values": tune.grid_search([{"measure.save_models": s} for s in (True, False)]),
        },
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
    ).fit()
    rows = {r.config["values"]["measure.save_models"]: r.metrics for r in grid}
    assert {k: r["status"] for k, r in rows.items()} == {True: "ok", False: "ok"}, rows
    saved = Path(rows[True]["model_dir"])
    assert saved.parent == run_dir / "models" and (saved / "model.safetensors").is_file()
    assert rows[False]["model_dir"] is None
    assert [p.name for p in (run_dir / "models").iterdir()] == [saved.name]  # only one
    for metric in ("accuracy", "gflops", "params", "weights_bytes"):  # same student either way
        assert rows[True][metric] == rows[False][metric]
    again = load_compressed(saved)
    b = {k: torch.as_tensor(v) for k, v in splits["test"].items()}
    with torch.no_grad():
        preds = again(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    acc = float((preds.argmax(-1) == b["labels"]).float().mean())
    assert acc == pytest.approx(rows[True]["accuracy"])


def test_a_head_pruned_model_saved_before_the_config_kept_its_widths_reloads(
    tmp_path: Path,
) -> None:
    """A model saved before the FFN widths moved into the config (config.json without
    ``ffn_widths_before_pruning``) reloads exactly, with the same kept heads."""
    from engine.compress.structure import head_ids
    from engine.models import layer_list

    model, ctx = _run([HEADS])
    save_compressed(model, tmp_path, records=ctx.records)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["ffn_widths_before_pruning"] == [64] * 4  # tiny_bert's FFN, before pruning
    del cfg["ffn_widths_before_pruning"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    again = load_compressed(tmp_path)
    assert torch.equal(_logits(model), _logits(again))
    assert [head_ids(b) for b in layer_list(again)] == [head_ids(b) for b in layer_list(model)]
    assert again.config.pruned_heads == model.config.pruned_heads
