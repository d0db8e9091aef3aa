"""Trial checkpoints: a training run continued from a snapshot equals an uninterrupted one bit
for bit, and a trial whose worker dies mid-distillation is retried by Tune from its last
checkpoint (not from step 0) and ends with exactly the uninterrupted trial's model."""

from __future__ import annotations

import copy
import json
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import pytest
import torch

import engine.train
from engine.checkpoint import StageResume
from engine.config import ConfigError, load_study
from engine.train import TrainingState, train_classifier
from tests.conftest import Live, tiny_bert, toy_batches


def _data(n_batches: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    batches = toy_batches(n_batches=n_batches, batch_size=8, seq=12, seed=seed)
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def _ce(s: torch.Tensor, y: torch.Tensor, _t: torch.Tensor | None) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(s, y)


def _train(model: torch.nn.Module, train: dict, on_step=None, report=None, resume=None) -> object:
    # 64 examples / batch 8 = 8 steps an epoch; 10 steps cross an epoch boundary
    return train_classifier(
        model,
        train,
        loss_fn=_ce,
        epochs=2,
        max_steps=10,
        lr=1e-3,
        batch_size=8,
        seed=3,
        on_step=on_step,
        report=report,
        resume=resume,
    )


def test_resumed_training_equals_uninterrupted_bit_for_bit() -> None:
    train = _data()
    torch.manual_seed(11)
    full = tiny_bert(num_layers=2)  # dropout 0.1: the torch RNG matters
    stats_full = _train(full, train)

    torch.manual_seed(11)
    part = tiny_bert(num_layers=2)
    saved: dict = {}

    def grab(step: int, st: TrainingState | None) -> None:
        if step == 5:  # mid-epoch: order and position in it must be restored
            assert st is not None and st.step == 5
            saved["snap"] = copy.deepcopy(st.snapshot())
            saved["model"] = copy.deepcopy(st.model.state_dict())

    _train(part, train, report=Live(grab))

    torch.manual_seed(999)  # whatever happened since, the snapshot's RNG state wins
    resumed = tiny_bert(num_layers=2, seed=5)
    resumed.load_state_dict(saved["model"])
    steps_seen: list[int] = []
    resume = StageResume(saved["snap"])
    stats = _train(resumed, train, on_step=lambda s, _l: steps_seen.append(s), resume=resume)
    assert resume.taken
    assert steps_seen == list(range(6, 11))  # continued at step 6, not 1
    assert stats.steps == stats_full.steps == 10
    assert stats.examples_seen == stats_full.examples_seen
    assert stats.final_loss == stats_full.final_loss
    assert stats.mean_loss_last_10 == stats_full.mean_loss_last_10
    for (name, a), (_, b) in zip(
        full.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # without the RNG state the continuation differs (the test above is not vacuous)
    snap = dict(saved["snap"], torch_rng=torch.manual_seed(999).get_state())
    other = tiny_bert(num_layers=2, seed=5)
    other.load_state_dict(saved["model"])
    _train(other, train, resume=StageResume(snap))
    assert not all(
        torch.equal(a, b)
        for a, b in zip(full.state_dict().values(), other.state_dict().values(), strict=True)
    )


def test_resume_refuses_a_snapshot_of_another_run_and_an_unused_one() -> None:
    train = _data()
    saved: dict = {}
    model = tiny_bert(num_layers=1)
    _train(model, train, report=Live(lambda _s, st: saved.setdefault("snap", st.snapshot())))
    # no ambient training state that could outlive the run (it is an argument now)
    assert not any(isinstance(v, ContextVar) for v in vars(engine.train).values())
    with pytest.raises(ValueError, match="10-step run, this run has 4 steps"):
        train_classifier(model, train, loss_fn=_ce, epochs=1, max_steps=4, lr=1e-3,
                         batch_size=8, seed=3, resume=StageResume(saved["snap"]))  # fmt: skip
    with pytest.raises(RuntimeError, match="did not resume"):
        StageResume(saved["snap"]).check_taken()


def test_a_stage_resume_is_taken_by_the_first_training_call_only() -> None:
    """Two training calls given the same resume: the first continues at the snapshot's step
    (5 of 10), the second starts at step 1 — as a multi-call stage needs."""
    train = _data()
    saved: dict = {}
    model = tiny_bert(num_layers=1)
    _train(
        model, train, report=Live(lambda s, st: s == 5 and saved.setdefault("snap", st.snapshot()))
    )
    resume = StageResume(saved["snap"])
    assert resume.step == 5 and resume.stage is None  # one call: no stage progress
    first: list[int] = []
    second: list[int] = []
    _train(model, train, on_step=lambda s, _l: first.append(s), resume=resume)
    resume.check_taken()  # taken: no error
    _train(model, train, on_step=lambda s, _l: second.append(s), resume=resume)
    assert first == list(range(6, 11)) and second == list(range(1, 11))


def test_checkpoint_every_must_ride_on_reports() -> None:
    with pytest.raises(ConfigError, match="checkpoint_every needs report_every_steps"):
        load_study("smoke", ["search.checkpoint_every=3"])
    cfg = load_study("smoke", ["search.report_every_steps=2", "search.checkpoint_every=3"])
    assert cfg.search.checkpoint_every == 3


def test_checkpoints_ride_on_the_first_report_due() -> None:
    """Reports every 2 steps, checkpoints every 3: at steps 4, 8, 12 (≥ 3 after the last)."""
    from engine.checkpoint import TrialCheckpointer
    from engine.compress import StageContext

    model = tiny_bert(num_layers=1)
    ctx = StageContext(
        teacher=model, train={}, teacher_logits=torch.zeros(1), importance={}, seed=0
    )
    ck = TrialCheckpointer(3, {})
    ck.enter(1, "distill", model, ctx)
    due = []
    train = _data(n_batches=2)

    def on_step(step: int, training: TrainingState | None) -> None:
        if step % 2 == 0:
            with ck.checkpoint(step, training) as c:
                due.append((step, c is not None))

    train_classifier(model, train, loss_fn=_ce, epochs=6, lr=1e-3, batch_size=8, seed=0,
                     report=Live(on_step))  # fmt: skip
    assert [s for s, d in due if d] == [4, 8, 12]
    assert ck.saved == 3 and ck.error is None
    ck.enter(2, "quantize", model, ctx)  # not resumable mid-training: no checkpoint
    with ck.checkpoint(99, None) as c:
        assert c is None
    # a checkpoint that cannot be written leaves the report without one, and says why
    ctx.records["hook"] = lambda: None  # type: ignore[assignment]
    ck.enter(1, "distill", model, ctx)
    due.clear()
    train_classifier(model, train, loss_fn=_ce, epochs=2, lr=1e-3, batch_size=8, seed=0,
                     report=Live(on_step))  # fmt: skip
    assert due == [(2, False), (4, False)] and ck.saved == 3
    assert ck.error is not None and "record 'hook'" in ck.error and "without pickle" in ck.error


# ------------------------------------------------------------------ Tune: a worker dies once


def _shared():
    from engine.trial import SharedInputs

    teacher = tiny_bert(num_layers=4)
    train = _data(n_batches=8)
    valid = _data(n_batches=2, seed=1)
    test = _data(n_batches=2, seed=2)
    with torch.no_grad():
        logits = teacher(input_ids=train["input_ids"], attention_mask=train["attention_mask"])
    return SharedInputs(
        teacher_config=teacher.config.to_dict(),
        teacher_state={k: v.clone() for k, v in teacher.state_dict().items()},
        teacher_train_logits=logits.logits.numpy(),
        splits={
            name: {k: v.numpy() for k, v in split.items()}
            for name, split in (("train", train), ("valid", valid), ("test", test))
        },
        num_labels=5,
        importance={},
    )


def _steps(trial_dir: Path) -> list[tuple[int, int]]:
    """(step, pid) of every intermediate result the trial logged, in order."""
    out = []
    for line in (trial_dir / "result.json").read_text().splitlines():
        r = json.loads(line)
        if "status" not in r:
            out.append((int(r["step"]), int(r["pid"])))
    return out


@pytest.mark.slow  # two tiny trials + one worker restart: ~30 s idle, a minute or two loaded
def test_worker_death_retries_from_the_last_checkpoint(ray_local, tmp_path: Path) -> None:
    from ray import tune
    from safetensors.torch import load_file

    from engine.checkpoint import CHECKPOINT_FILE, FAULT_KEY, load_trial_state
    from engine.trial import run_trial
    from engine.tune_run import trainable_for

    study = load_study(
        "smoke",
        [
            "data.max_length=12",
            "pipeline.truncate.strategy=uniform",
            "pipeline.distill.epochs=2",
            "pipeline.distill.max_steps=12",
            "pipeline.distill.batch_size=8",  # 64 / 8 = 8 steps an epoch: 12 cross one
            "search.report_every_steps=2",
            "search.checkpoint_every=2",
            "search.max_failures=1",
            "threads_per_trial=1",
            "measure.latency_repeats=1",
        ],
    )
    shared = _shared()
    marker = tmp_path / "died_once"
    fault = {"step": 5, "marker": str(marker)}  # dies at the report of step 6, before it
    run_dir = tmp_path / "run"
    tuner = tune.Tuner(
        trainable_for(study, run_trial, study=study, shared=shared, run_dir=str(run_dir)),
        param_space={"values": {}, "seed": 0, FAULT_KEY: tune.grid_search([None, fault])},
        tune_config=tune.TuneConfig(max_concurrent_trials=2),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "tune"),
            name="ckpt",
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    grid = tuner.fit()
    assert grid.num_errors == 0, [str(e)[:500] for e in grid.errors]
    by = {bool(r.config[FAULT_KEY]): r for r in grid}
    clean, faulty = by[False], by[True]
    assert marker.read_text() == "exited at step 6\n"  # the planted death happened, once
    for r in (clean, faulty):
        assert r.metrics["status"] == "ok", r.metrics.get("error")
        assert r.metrics["step"] == 12
    assert "resumed_step" not in clean.metrics or np.isnan(clean.metrics["resumed_step"])
    assert faulty.metrics["resumed_step"] == 4 and faulty.metrics["resumed_stage"] == "distill"
    # Tune's own log: steps 2, 4 by the first worker, then 6 … 12 by a new one (no restart
    # from step 0, which would log 2 and 4 again)
    logged = _steps(Path(faulty.path))
    assert [s for s, _ in logged] == [2, 4, 6, 8, 10, 12]
    assert len({p for s, p in logged if s <= 4}) == 1
    assert {p for s, p in logged if s <= 4}.isdisjoint({p for s, p in logged if s >= 6})
    # the same model and figures as the uninterrupted trial, exactly
    for k in ("valid_accuracy", "accuracy", "macro_f1", "gflops", "params"):
        assert faulty.metrics[k] == clean.metrics[k], k
    a = load_file(Path(clean.metrics["model_dir"]) / "model.safetensors")
    b = load_file(Path(faulty.metrics["model_dir"]) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the kept checkpoint leaves out the frozen embeddings (refilled from the teacher on load),
    # and nothing in it is pickled: safetensors and JSON only
    with faulty.checkpoint.as_directory() as d:
        assert sorted(p.name for p in Path(d).iterdir()) == sorted(
            [CHECKPOINT_FILE, "model.safetensors", "training.safetensors"]
        )
        raw = json.loads((Path(d) / CHECKPOINT_FILE).read_text())
        assert "bert.embeddings.word_embeddings.weight" in raw["from_reference"]
        resume = load_trial_state(d, shared.teacher_state, study)
    assert resume.step == 12 and resume.stage_index == 1
    emb = resume.model.get_parameter("bert.embeddings.word_embeddings.weight")
    assert torch.equal(emb, shared.teacher_state["bert.embeddings.word_embeddings.weight"])
    assert resume.record["truncate"].kept_layers == [1, 3]  # uniform 2 of 4, from stage 0


def test_a_resumed_stage_that_does_not_train_from_its_checkpoint_fails() -> None:
    """The trial hands the stage in progress its checkpoint as ``ctx.resume``; a stage that
    does not continue its training from it (here truncate, which does not train) is an
    error, not a silent restart."""
    from engine.checkpoint import TrialResume
    from engine.trial import build_student

    study = load_study("smoke", ["data.max_length=12", "pipeline.truncate.strategy=uniform"])
    shared = _shared()
    model = tiny_bert(num_layers=4)
    resume = TrialResume(model, 0, "truncate", {"step": 3}, record={})
    with pytest.raises(RuntimeError, match="did not resume its training"):
        build_student(study, shared, 0, torch.device("cpu"), resume=resume)


# ------------------------------------------------------------------ the format on disk


def test_a_tied_item_model_round_trips_without_pickle(tmp_path: Path) -> None:
    """A next-item model's catalogue head is its item embedding (tied): the checkpoint holds
    the tensor once, and the reloaded model gives the same scores with the tie intact."""
    from engine.checkpoint import CHECKPOINT_FILE, TrialCheckpointer, load_trial_state
    from engine.compress import StageContext
    from engine.tasks.item_models import build_item_model

    model = build_item_model("scratch:gpt2", 30, seed=2).eval()
    tie = ("score.weight", "transformer.wte.weight")  # the catalogue head, the item embedding
    head, emb = (model.get_parameter(n) for n in tie)
    assert head.data_ptr() == emb.data_ptr()  # tied, by the model's own definition
    ctx = StageContext(
        teacher=model, train={}, teacher_logits=torch.zeros(1), importance={}, seed=0
    )
    ck = TrialCheckpointer(1, {})
    ck.enter(0, "distill", model, ctx)
    ck._save(tmp_path, model, {"step": 0})
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".safetensors", ".safetensors"]
    raw = json.loads((tmp_path / CHECKPOINT_FILE).read_text())
    assert len(raw["tied"]) == 1  # one of the two names, saved once
    back = load_trial_state(tmp_path, {}, load_study("smoke-rec")).model.eval()
    ids = torch.randint(1, 30, (4, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).logits
        b = back(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(a, b)
    b_head, b_emb = (back.get_parameter(n) for n in tie)
    assert b_head.data_ptr() == b_emb.data_ptr() and torch.equal(b_emb, emb)


def test_a_checkpoint_of_the_pickled_format_is_refused_with_one_line(tmp_path: Path) -> None:
    """Format 1 pickled the live model (``trial_state.pt``): loading it is refused, and so is
    ``--resume`` of a run that holds one, before Ray starts."""
    from engine.checkpoint import CheckpointFormatError, load_trial_state
    from tests.conftest import sweep_in_process

    trial = tmp_path / "run" / "tune" / "run_trial_abc_00000" / "checkpoint_000001"
    trial.mkdir(parents=True)
    torch.save({"model": "anything"}, trial / "trial_state.pt")
    with pytest.raises(CheckpointFormatError, match="earlier version of the engine"):
        load_trial_state(trial, {}, load_study("smoke"))
    proc = sweep_in_process("smoke", "--resume", out=tmp_path / "run")
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line == (
        f"error: --resume: {trial}: a trial checkpoint written by an earlier version of the "
        "engine (trial_state.pt, a pickled model); this version cannot resume it: start a new "
        "run, or finish this one with the version that wrote it"
    )
