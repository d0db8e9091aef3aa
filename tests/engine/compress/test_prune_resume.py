"""The prune stage reports and resumes mid-stage like distill: reports arrive every N stage
steps (pruning phase, then recovery) with the GFLOPs of the model as pruned at that moment; a
checkpoint taken anywhere in the stage — mid-stretch, at a pruning event, in recovery — lets a
retried trial finish with exactly the uninterrupted trial's model; and a structured-pruned
model (uneven heads per layer) survives the checkpoint file unchanged. Early exit's head
training reports and resumes the same way."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.checkpoint import CHECKPOINT_FILE, TrialCheckpointer, load_trial_state
from engine.compress import StageContext
from engine.compress.prune import prune_structured_to, stage_steps
from engine.compress.structure import head_ids
from engine.config import StudyConfig, load_study
from engine.measure import count_gflops
from engine.models import layer_list
from engine.train import TrainingState
from engine.trial import TrialReporter, build_student
from tests.conftest import tiny_bert, toy_batches
from tests.engine.test_checkpoint import _shared, _steps

SEQ = 12
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    """As a trial runs (threads_per_trial=1); tiny models on a loaded 2-core machine train
    several times faster on one thread than on two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _study(method: str = "structured", extra: tuple[str, ...] = ()) -> StudyConfig:
    """Pruning phase of 6 steps (events at t = 0, 3, 6), then 4 recovery steps: stage steps
    1 … 10 (64 rows / batch 8 = 8 steps an epoch, so the order crosses an epoch)."""
    return load_study(
        "smoke",
        [
            f"data.max_length={SEQ}",
            "pipeline.order=[prune]",
            f"pipeline.prune.method={method}",
            *(["pipeline.prune.criterion=taylor"] if method == "structured" else []),
            "pipeline.prune.head_sparsity=0.5",
            "pipeline.prune.neuron_sparsity=0.5",
            "pipeline.prune.weight_sparsity=0.5",
            "pipeline.prune.steps=6",
            "pipeline.prune.prune_every=3",
            "pipeline.prune.score_batches=2",
            "pipeline.prune.batch_size=8",
            "pipeline.prune.lr=1e-3",
            "pipeline.prune.recovery_steps=4",
            "pipeline.prune.recovery_lr=1e-3",
            "pipeline.prune.recovery_warmup_ratio=0.5",
            "search.report_every_steps=2",
            "search.checkpoint_every=2",
            "threads_per_trial=1",
            "measure.latency_repeats=1",
            *extra,
        ],
    )


def _reporter(study: StudyConfig, shared, sink, checkpointer=None) -> TrialReporter:
    return TrialReporter(study, shared.splits["valid"], CPU, 2, sink, checkpointer=checkpointer)


@dataclass
class _SeesTraining(TrialReporter):
    """A trial's reporter that keeps the live training state its last report came with."""

    live: TrainingState | None = None

    def __call__(self, metrics: dict[str, Any], training: TrainingState | None = None) -> None:
        self.live = training
        super().__call__(metrics, training)


def test_reports_follow_the_stage_steps_and_gflops_fall_with_each_pruning_event() -> None:
    """Reports at stage steps 2 … 10; each report's GFLOPs equal a fresh fvcore count of the
    live model at that moment (a figure cached from the unpruned model would not)."""
    study, shared = _study(), _shared()
    reports: list[dict[str, Any]] = []
    counted: list[float] = []
    heads: list[int] = []

    def sink(payload: dict[str, Any]) -> None:
        live = reporter.live
        assert live is not None
        reports.append(payload)
        model = copy.deepcopy(live.model)
        counted.append(count_gflops(model, SEQ))
        heads.append(sum(len(head_ids(b)) for b in layer_list(model)))

    reporter = _SeesTraining(study, shared.splits["valid"], CPU, 2, sink)
    _, record = build_student(study, shared, 0, CPU, report=reporter)
    assert [r["step"] for r in reports] == [2, 4, 6, 8, 10]
    assert stage_steps(study.pipeline.prune) == 10
    gflops = [r["gflops"] for r in reports]
    assert gflops == counted
    # events at t = 0 (sparsity 0: nothing), 3, 6: a report at step s sees the events < s
    assert gflops[0] > gflops[1] == gflops[2] > gflops[3] == gflops[4]
    assert heads[0] == 16 and heads[3] == 8 and heads[1] < 16
    assert record["prune"]["schedule"][1]["heads"] > 0
    assert all(0 <= r["valid_accuracy"] <= 1 for r in reports)


def _run(study, shared, tmp: Path, resume=None, keep: bool = False):
    """build_student as a trial runs it; with ``keep`` the checkpoints are copied to ``tmp``
    by step. Returns (model, record, steps reported)."""
    steps: list[int] = []

    def sink(payload: dict[str, Any], checkpoint=None) -> None:
        steps.append(int(payload["step"]))
        if checkpoint is not None and keep:
            with checkpoint.as_directory() as d:
                shutil.copytree(d, tmp / f"step{payload['step']}")

    ck = TrialCheckpointer(2, shared.teacher_state)
    model, record = build_student(
        study, shared, 0, CPU, report=_reporter(study, shared, sink, ck), checkpointer=ck,
        resume=resume,
    )  # fmt: skip
    return model, record, steps


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("method", ["structured", "unstructured", "semi_structured_2_4"])
def test_resumed_prune_equals_the_uninterrupted_stage(method: str, tmp_path: Path) -> None:
    """Resume from the checkpoint at every report: 2 and 4 are mid-stretch (after the events
    at 0 and 3), 6 ends the pruning phase before its last event, 8 and 10 are in recovery."""
    study, shared = _study(method), _shared()
    clean, record, steps = _run(study, shared, tmp_path, keep=True)
    assert steps == [2, 4, 6, 8, 10]
    assert sorted(int(p.name[4:]) for p in tmp_path.glob("step*")) == steps
    for k in steps:
        resume = load_trial_state(tmp_path / f"step{k}", shared.teacher_state, study)
        assert resume.step == k and resume.stage_name == "prune"
        model, rec, later = _run(study, shared, tmp_path, resume=resume)
        assert later == [s for s in steps if s > k]  # continued, not restarted
        assert rec == record, k
        assert _same(model, clean), k
    # control: the same checkpoint without the example order (as if restarted) differs
    resume = load_trial_state(tmp_path / "step4", shared.teacher_state, study)
    resume.training.update(order=None, pos=0)
    resume.training["generator"] = torch.Generator().manual_seed(0).get_state()
    model, _, _ = _run(study, shared, tmp_path, resume=resume)
    assert not _same(model, clean)


def test_structured_pruned_model_round_trips_through_a_trial_checkpoint(tmp_path: Path) -> None:
    model = tiny_bert()
    for p in model.get_input_embeddings().parameters():
        p.requires_grad_(False)  # left out of the file, refilled from the teacher
    teacher_state = {k: v.clone() for k, v in tiny_bert().state_dict().items()}
    prune_structured_to(model, heads_removed=7, neurons_removed=[20] * 4, criterion="magnitude")
    kept = [len(head_ids(b)) for b in layer_list(model)]
    assert len(set(kept)) > 1 and sum(kept) == 9  # uneven heads per layer
    ctx = StageContext(
        teacher=model, train={}, teacher_logits=torch.zeros(1), importance={}, seed=0
    )
    ck = TrialCheckpointer(1, teacher_state)
    ck.enter(0, "prune", model, ctx)
    ck._save(tmp_path, model, {"step": 0})
    raw = json.loads((tmp_path / CHECKPOINT_FILE).read_text())
    assert "bert.embeddings.word_embeddings.weight" in raw["from_reference"]
    back = load_trial_state(tmp_path, teacher_state, load_study("smoke")).model
    batch = toy_batches(2, batch_size=8, seq=SEQ)[1]
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = back(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(a, b)
    assert [head_ids(x) for x in layer_list(back)] == [head_ids(x) for x in layer_list(model)]
    assert back.config.pruned_heads == model.config.pruned_heads
    # pruning goes on from the reloaded model exactly as from the original (original head
    # ids and FFN widths before pruning travel with it)
    for m in (model, back):
        prune_structured_to(m, heads_removed=10, neurons_removed=[40] * 4, criterion="magnitude")
    assert _same(model, back)
    assert back.config.intermediate_size == 24


# ------------------------------------------------------------------ Tune: a worker dies twice


@pytest.mark.slow  # three tiny trials, two worker restarts: ~1 min idle, more under load
def test_worker_death_mid_prune_retries_from_the_last_checkpoint(ray_local, tmp_path) -> None:
    from ray import tune
    from safetensors.torch import load_file

    from engine.checkpoint import FAULT_KEY
    from engine.trial import run_trial
    from engine.tune_run import full_budget, trainable_for

    # recovery of 6 steps: stage steps 7 … 12, so a checkpoint (step 8) lies inside it
    study = _study("structured", ("pipeline.prune.recovery_steps=6",))
    shared = _shared()
    faults = {
        "schedule": {"step": 3, "marker": str(tmp_path / "died_schedule")},  # dies at 4
        "recovery": {"step": 9, "marker": str(tmp_path / "died_recovery")},  # dies at 10
    }
    tuner = tune.Tuner(
        trainable_for(study, run_trial, study=study, shared=shared, run_dir=str(tmp_path / "r")),
        param_space={
            "values": {},
            "seed": 0,
            FAULT_KEY: tune.grid_search([None, faults["schedule"], faults["recovery"]]),
        },
        tune_config=tune.TuneConfig(max_concurrent_trials=2),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "tune"),
            name="prune_ckpt",
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    grid = tuner.fit()
    assert grid.num_errors == 0, [str(e)[:500] for e in grid.errors]
    by = {(r.config[FAULT_KEY] or {}).get("step"): r for r in grid}
    clean = by[None]
    # the schedulers' budget counts what a full prune trial reports: 6 intermediate + final
    assert clean.metrics["training_iteration"] == full_budget(study, 64) == 7
    weights = load_file(Path(clean.metrics["model_dir"]) / "model.safetensors")
    for name, died_at, resumed_at in (("schedule", 4, 2), ("recovery", 10, 8)):
        r = by[faults[name]["step"]]
        assert Path(faults[name]["marker"]).read_text() == f"exited at step {died_at}\n"
        assert r.metrics["status"] == "ok", r.metrics.get("error")
        assert r.metrics["resumed_stage"] == "prune" and r.metrics["resumed_step"] == resumed_at
        logged = _steps(Path(r.path))
        assert [s for s, _ in logged] == [2, 4, 6, 8, 10, 12]  # none twice: no restart
        before = {p for s, p in logged if s <= resumed_at}
        assert before.isdisjoint({p for s, p in logged if s > resumed_at})  # a new worker
        for k in ("valid_accuracy", "accuracy", "macro_f1", "gflops", "params"):
            assert r.metrics[k] == clean.metrics[k], (name, k)
        w = load_file(Path(r.metrics["model_dir"]) / "model.safetensors")
        assert w.keys() == weights.keys() and all(torch.equal(w[k], weights[k]) for k in w)


# ------------------------------------------------------------------ early exit's head training


def test_early_exit_head_training_reports_and_resumes_exactly(tmp_path: Path) -> None:
    """The exit heads train under a tracked TrainingState: reports every 2 steps, and a retry
    from any of its checkpoints ends with the uninterrupted stage's heads and record."""
    from engine.compress.early_exit import EarlyExitClassifier

    study = load_study(
        "smoke",
        [
            f"data.max_length={SEQ}",
            "pipeline.order=[early_exit]",
            "pipeline.early_exit.steps=10",
            "pipeline.early_exit.batch_size=8",
            "pipeline.early_exit.threshold=0.3",
            "search.report_every_steps=2",
            "search.checkpoint_every=2",
            "threads_per_trial=1",
        ],
    )
    shared = _shared()
    clean, record, steps = _run(study, shared, tmp_path, keep=True)
    assert isinstance(clean, EarlyExitClassifier) and not clean.training
    assert steps == [2, 4, 6, 8, 10]
    # the frozen backbone still equals the teacher: left out of the file, refilled on load
    raw = json.loads((tmp_path / "step4" / CHECKPOINT_FILE).read_text())
    assert set(raw["from_reference"]) == {f"backbone.{k}" for k in shared.teacher_state}
    for k in (4, 10):
        resume = load_trial_state(tmp_path / f"step{k}", shared.teacher_state, study)
        assert resume.stage_name == "early_exit" and isinstance(resume.model, EarlyExitClassifier)
        model, rec, later = _run(study, shared, tmp_path, resume=resume)
        assert later == [s for s in steps if s > k]
        assert rec == record and _same(model, clean), k
    # control: the sampler's state dropped (as if restarted at step 4 with a fresh draw)
    resume = load_trial_state(tmp_path / "step4", shared.teacher_state, study)
    resume.training["generator"] = torch.Generator().manual_seed(0).get_state()
    model, _, _ = _run(study, shared, tmp_path, resume=resume)
    assert not _same(model, clean)
