"""A new compression stage is one file: a throwaway stage written into a temporary package,
imported, and run through a real trial's path — study validation with a dotted override,
the results budget, ``build_student``, ``assess``, save → reload — with no engine file
edited."""

from __future__ import annotations

import importlib
import json
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from engine.compress.base import unregister_stage
from engine.config import ConfigError, load_study
from tests.conftest import tiny_shared_inputs, toy_batches

STAGE_FILE = '''
"""``toy`` stage: drop the last layer and scale the classifier's weights by ``factor``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import Field

from engine.compress.base import StageContext, StageRecord, register_stage
from engine.configbase import Section
from engine.models import keep_layers, num_layers


class ToyConfig(Section):
    factor: float = Field(1.0, gt=0)
    steps: int = Field(4, ge=0)  # what the stage would train (for the budget)


@dataclass(frozen=True)
class ToyRecord(StageRecord):
    factor: float
    layers_before: int


@register_stage(
    "toy",
    config=ToyConfig,
    record=ToyRecord,
    train_steps=lambda cfg, n_train: cfg.steps,
    last=True,
    last_reason="toys go last",
    row_columns=lambda rec: {"toy_factor": rec.factor if rec else None},
    columns=lambda rec, model, splits, row, task: {"toy_gflops_x2": 2 * row["gflops"]},
)
def apply(model, cfg: ToyConfig, ctx: StageContext):
    total = num_layers(model)
    model = keep_layers(model, list(range(total - 1)))
    with torch.no_grad():
        model.classifier.weight.mul_(cfg.factor)
    ctx.records["toy"] = ToyRecord(factor=cfg.factor, layers_before=total)
    return model
'''


@pytest.fixture
def toy_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pkg = tmp_path / "toy_stages"  # a namespace package: the stage file is the only file
    pkg.mkdir()
    (pkg / "toy.py").write_text(textwrap.dedent(STAGE_FILE))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toy_stages.toy")
    yield module
    unregister_stage("toy")


def _study_file(tmp_path: Path) -> Path:
    path = tmp_path / "toy_study.yaml"
    raw = {
        "name": "toy",
        "description": "a stage from outside the engine",
        "data": {"max_length": 12},
        "pipeline": {"order": ["truncate", "toy"],
                     "truncate": {"keep_layers": 2, "strategy": "uniform"}},
        "measure": {"batch_size": 4, "latency_repeats": 1, "warmup": 0},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_stage_in_one_file_runs_through_a_trial(toy_stage, tmp_path: Path) -> None:
    from engine.assess import assess
    from engine.compress.save import load_compressed
    from engine.trial import build_student
    from engine.tune_run import full_budget

    path = _study_file(tmp_path)
    study = load_study(str(path), ["pipeline.toy.factor=0.5", "search.report_every_steps=2"])
    assert study.pipeline.order == ("truncate", "toy")
    assert study.pipeline.toy.factor == 0.5 and study.pipeline.toy.steps == 4
    assert study.model_dump()["pipeline"]["toy"] == {"factor": 0.5, "steps": 4}
    # the budget: 4 declared steps reported every 2, plus the final result (truncate: none)
    assert full_budget(study, n_train=48) == 4 // 2 + 1
    # validation knows the stage: its keys, its values, its placement rule
    with pytest.raises(ConfigError, match=r"pipeline\.toy\.nope: unknown key"):
        load_study(str(path), ["pipeline.toy.nope=1"])
    with pytest.raises(ConfigError, match=r"pipeline\.toy\.factor"):
        load_study(str(path), ["pipeline.toy.factor=-1"])
    with pytest.raises(ConfigError, match="'toy' must be the last stage"):
        load_study(str(path), ["pipeline.order=[toy, truncate]"])

    shared = tiny_shared_inputs()
    splits, state = shared.splits, shared.teacher_state
    cpu = torch.device("cpu")
    model, record = build_student(study, shared, 0, cpu, tmp_path / "m")

    # uniform 2 of 4 keeps teacher layers 1 and 3; toy drops the last of those
    assert record["truncate"]["kept_layers"] == [1, 3]
    assert record["toy"] == {"factor": 0.5, "layers_before": 2}
    assert len(model.bert.encoder.layer) == 1
    torch.testing.assert_close(
        model.bert.encoder.layer[0].output.dense.weight,
        state["bert.encoder.layer.1.output.dense.weight"],
        rtol=0, atol=0,
    )  # fmt: skip
    torch.testing.assert_close(
        model.classifier.weight, 0.5 * state["classifier.weight"], rtol=0, atol=0
    )

    row = assess(model, {k: splits[k] for k in ("valid", "test")}, study, cpu, record)
    assert row["toy_gflops_x2"] == 2 * row["gflops"] and row["student_layers"] == 1
    from engine.compress.base import trial_columns

    assert trial_columns(record)["toy_factor"] == 0.5
    assert trial_columns({})["toy_factor"] is None  # a trial without the stage

    again = load_compressed(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "compression.json").read_text())
    assert manifest["record"]["toy"] == {"factor": 0.5, "layers_before": 2}
    assert manifest["pipeline"]["toy"] == {"factor": 0.5, "steps": 4}
    b = toy_batches(1, batch_size=8, seed=3)[0]
    with torch.no_grad():
        kw = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
        assert torch.equal(model.eval()(**kw).logits, again.eval()(**kw).logits)


def test_the_toy_stage_is_gone_after_the_test() -> None:
    from engine.compress import STAGES

    assert "toy" not in STAGES
    with pytest.raises(ConfigError, match="unknown compression stage 'toy'"):
        load_study("smoke", ["pipeline.order=[toy]"])
