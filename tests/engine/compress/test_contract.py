"""Contract tests generated from the stage registry: every registered stage, with its
default config, on a tiny BERT. A new stage is tested here without new test code."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from engine.compress import STAGES, StageContext
from engine.compress.base import Stage, records_json, stage_list
from engine.compress.pipeline import full_budget, order_problems
from engine.compress.save import load_compressed, save_compressed
from engine.importance import LayerScores
from tests.conftest import tiny_bert, toy_batches

STAGE_LIST = stage_list()
IDS = [s.name for s in STAGE_LIST]
N_TRAIN = 16


def _train() -> dict[str, torch.Tensor]:
    bs = toy_batches(2, batch_size=8, seed=0)
    return {k: torch.cat([b[k] for b in bs]) for k in ("input_ids", "attention_mask", "labels")}


def _ctx(teacher: torch.nn.Module, seed: int = 0, report=None) -> StageContext:
    train = _train()
    with torch.no_grad():
        logits = teacher(
            input_ids=train["input_ids"], attention_mask=train["attention_mask"]
        ).logits
    # planted scores (layer i scores i) for every importance method a default may name
    scores = LayerScores(method="fisher", scores=(0.0, 1.0, 2.0, 3.0), num_examples=N_TRAIN)
    return StageContext(teacher=teacher, train=train, teacher_logits=logits,
                        importance={"fisher": scores}, seed=seed, report=report)  # fmt: skip


def _run(stage: Stage, seed: int = 0, report=None) -> tuple[torch.nn.Module, StageContext]:
    torch.manual_seed(seed)
    teacher = tiny_bert(num_layers=4)
    ctx = _ctx(teacher, seed, report)
    model = stage(copy.deepcopy(teacher), stage.default, ctx)
    return model, ctx


def _logits(model: torch.nn.Module) -> torch.Tensor:
    b = toy_batches(1, batch_size=8, seed=3)[0]
    model.eval()
    with torch.no_grad():
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits


@pytest.mark.parametrize("stage", STAGE_LIST, ids=IDS)
def test_default_config_validates_and_round_trips(stage: Stage) -> None:
    assert isinstance(stage.default, stage.config)
    dumped = stage.default.model_dump(mode="json")
    assert stage.config.model_validate(dumped) == stage.default
    assert STAGES.get(stage.name) is stage


@pytest.mark.parametrize("stage", STAGE_LIST, ids=IDS)
def test_apply_is_deterministic_and_its_record_serialises(stage: Stage, tmp_path: Path) -> None:
    a, ctx_a = _run(stage)
    b, ctx_b = _run(stage)
    torch.testing.assert_close(_logits(a), _logits(b), rtol=0, atol=0)
    rec = ctx_a.records[stage.name]
    assert isinstance(rec, stage.record) and list(ctx_a.records) == [stage.name]
    text = json.dumps(records_json(ctx_a.records))  # plain JSON, no default=str needed
    assert json.loads(text) == json.loads(json.dumps(records_json(ctx_b.records)))
    assert stage.record.from_json(json.loads(text)) == rec  # what a reload reads back


@pytest.mark.parametrize("stage", STAGE_LIST, ids=IDS)
def test_save_then_reload_gives_equal_outputs(stage: Stage, tmp_path: Path) -> None:
    model, ctx = _run(stage)
    save_compressed(model, tmp_path, records=ctx.records)
    again = load_compressed(tmp_path)
    assert torch.equal(_logits(model), _logits(again))


@pytest.mark.parametrize("stage", STAGE_LIST, ids=IDS)
def test_declared_budget_equals_the_steps_the_stage_trains(stage: Stage) -> None:
    steps: list[int] = []
    _run(stage, report=lambda m: steps.append(m["step"]))  # a plain callable: every step
    declared = stage.train_steps(stage.default, N_TRAIN) if stage.train_steps else 0
    assert len(steps) == declared
    assert stage.train_steps is not None or not steps
    pipeline = type("P", (), {"order": (stage.name,), stage.name: stage.default})()
    assert full_budget(pipeline, 1, N_TRAIN) == declared + 1
    assert full_budget(pipeline, None, N_TRAIN) == 1


@pytest.mark.parametrize("stage", STAGE_LIST, ids=IDS)
def test_placement_rules_hold_in_validation(stage: Stage) -> None:
    others = [s.name for s in STAGE_LIST if not s.last and s.name != stage.name]
    assert order_problems([*others, stage.name]) == []  # any stage may come last
    if stage.last:
        problems = order_problems([stage.name, *others])
        assert any(f"{stage.name!r} must be the last stage" in p for _, p in problems)
    else:
        assert order_problems([stage.name, *others]) == []
    for other in stage.not_with:
        assert order_problems([other, stage.name]) != []
    assert order_problems(["no_such_stage", stage.name]) == [
        (0, STAGES.unknown_message("no_such_stage"))
    ]
