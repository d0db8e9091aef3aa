"""The Ray Tune trainable: one student = teacher → pipeline of stages → measurement.

The trainable only adapts: it rebuilds the teacher from shared inputs (passed by object
reference through ``tune.with_parameters``), runs the study's stages in order through the
stage registry, measures the result and reports one row. A stage that raises marks the
trial ``failed`` with its error; the study goes on with the rest.

With ``search.report_every_steps`` set, training stages also report intermediate results
(validation quality and cost of the model being trained) through :class:`TrialReporter`, so a
scheduler can stop the trial early; its row then keeps the last intermediate metrics.

With ``search.checkpoint_every`` also set, the first such report at least that many steps
after the previous checkpoint carries a Tune checkpoint (see :mod:`engine.checkpoint`): the
model being trained, the pipeline position (stage index), what earlier stages recorded, and
the training state (optimizer, LR schedule, example order, step, RNG). A trial Tune retries
after its worker died (``FailureConfig(max_failures)``) starts from that checkpoint: finished
stages are skipped and the stage in progress continues at the saved step, giving the same
model as an uninterrupted run.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.checkpoint import FAULT_KEY, TrialCheckpointer, TrialResume, resume_from
from engine.compress import STAGES, StageContext
from engine.compress.base import trial_columns
from engine.config import StudyConfig, with_values
from engine.device import autocast, autocast_dtype, ray_gpu_ids, worker_device
from engine.importance import LayerScores
from engine.phases import PhaseClock
from engine.tasks import get_task, metric_columns
from engine.train import TrainingState
from engine.worker import (
    SharedHandle,
    begin_trial,
    mark_imported,
    shared_inputs,
    worker_columns,
)

__all__ = [
    "SharedInputs",
    "TrialReporter",
    "run_trial",
    "trial_seed",
    "trial_values",
]


@dataclass
class SharedInputs:
    """Computed once per study on the driver, shared by every trial by reference."""

    teacher_config: dict[str, Any]
    teacher_state: dict[str, torch.Tensor]
    teacher_train_logits: np.ndarray
    splits: dict[str, dict[str, np.ndarray]]  # train / valid / test arrays
    num_labels: int
    importance: dict[str, LayerScores]


def trial_values(config: dict[str, Any]) -> dict[str, Any]:
    """The dotted-path settings of a Tune config (everything but the seed)."""
    return dict(config.get("values", {}))


def trial_seed(config: dict[str, Any], repeats: tuple[int, ...]) -> int:
    """The seed of a Tune config: ``seed`` if set, else ``repeats[__trial_index__]``."""
    if "seed" in config:
        return int(config["seed"])
    return int(repeats[int(config.get("__trial_index__", 0))])


def _structure_key(model: torch.nn.Module) -> tuple:
    """The model object and the shapes of its parameters: structured pruning removes heads
    and neurons from the same module object, so its cost must be counted again."""
    return (id(model), tuple((n, tuple(p.shape)) for n, p in model.named_parameters()))


@dataclass
class TrialReporter:
    """``ctx.report`` of a trial: measures the model being trained every ``every`` steps.

    ``measure`` gives validation quality (``valid_*``) and the cost metrics the objectives
    need (GFLOPs and size; latency only when an objective asks for it: timed here, beside
    the other trials, it steers the search only; the results' latency columns come from the
    phase after the sweep, :mod:`engine.latency_phase`).
    """

    study: StudyConfig
    valid: dict[str, np.ndarray]
    device: torch.device
    every: int
    sink: Any  # called with each metrics dict (tune.report in a trial)
    base: dict[str, Any] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)
    checkpointer: TrialCheckpointer | None = None
    autocast_dtype: torch.dtype | None = None
    clock: PhaseClock = field(default_factory=PhaseClock)  # charged as phase "report"
    _cost: dict[tuple, dict[str, float]] = field(default_factory=dict)

    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        with self.clock.phase("report"):
            return self._measure(model)

    def _measure(self, model: torch.nn.Module) -> dict[str, float]:
        from engine.measure import count_gflops, count_params, evaluate, weights_bytes

        _, metrics = evaluate(
            model,
            self.valid,
            task=self.study.task,
            batch_size=self.study.measure.eval_batch_size,
            device=self.device,
            autocast_dtype=self.autocast_dtype,
        )
        out = metric_columns(metrics, "valid_")
        key = _structure_key(model)  # count again only when the architecture changed
        if key not in self._cost:
            self._cost = {
                key: {
                    "gflops": float(count_gflops(model, self.study.data.max_length)),
                    "params": float(count_params(model)),
                    "weights_bytes": float(weights_bytes(model)),
                }
            }
        out.update(self._cost[key])
        if any(o.metric == "latency_ms_p50" for o in self.study.search.objectives):
            out["latency_ms_p50"] = self._latency(model)
        return out

    def _latency(self, model: torch.nn.Module) -> float:
        from engine.measure import measure_latency

        bs = self.study.measure.batch_size
        batch = {
            k: torch.as_tensor(self.valid[k][:bs], device=self.device)
            for k in ("input_ids", "attention_mask")
        }
        m = self.study.measure
        with autocast(self.device, self.autocast_dtype):
            lat = measure_latency(model, batch, repeats=m.latency_repeats, warmup=m.warmup)
        return float(lat["latency_ms_p50"])

    def __call__(self, metrics: dict[str, Any], training: TrainingState | None = None) -> None:
        """Report ``metrics``; with a checkpointer, the live ``training`` state rides along
        when a checkpoint is due."""
        with self.clock.phase("report"):
            self._report(metrics, training)

    def _report(self, metrics: dict[str, Any], training: TrainingState | None) -> None:
        payload = {**self.base, **metrics, "wall_s": time.perf_counter() - self.start}
        if self.checkpointer is None:
            self.sink(payload)
            return
        self.checkpointer.maybe_fail(payload.get("step"))
        with self.checkpointer.checkpoint(payload.get("step"), training) as ckpt:
            if ckpt is None:
                self.sink(payload)
            else:
                self.sink(payload, checkpoint=ckpt)


def build_student(
    study: StudyConfig,
    shared: SharedInputs,
    seed: int,
    device: torch.device,
    save_dir: str | Path | None = None,
    report: Any = None,
    checkpointer: TrialCheckpointer | None = None,
    resume: TrialResume | None = None,
    dtype: torch.dtype | None = None,
    clock: PhaseClock | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Run the pipeline on a fresh copy of the teacher; returns the model and the record
    (the stages' typed records as ``compression.json`` holds them, plus the trial's ``oom``
    and ``saved_to``).

    With ``save_dir`` the result is saved there in HF format (:mod:`engine.compress.save`).
    With ``resume`` the pipeline continues from a checkpoint: stages before its stage are
    skipped and that stage's training continues at the saved step. ``dtype``: the autocast
    dtype of the stages' forwards (None = float32). The record's ``oom`` entry counts the
    training's out-of-memory retries (:class:`engine.train.OomLog`). ``clock``: where the time
    goes (phases ``build``, ``train`` — every stage — and ``save``).
    """
    clock = clock or PhaseClock()
    with clock.phase("build"):
        model, ctx, first = _start(study, shared, seed, device, report, resume, dtype)
    for i, name in enumerate(study.pipeline.order):
        if i < first:
            continue  # finished before the checkpoint
        ctx.resume = resume.stage_resume() if resume is not None and i == first else None
        if checkpointer is not None:
            checkpointer.enter(i, name, model, ctx, step=ctx.resume.step if ctx.resume else 0)
        stage_cfg = getattr(study.pipeline, name, None)
        with clock.phase("train"):
            model = STAGES.get(name)(model, stage_cfg, ctx)
        if ctx.resume is not None:
            ctx.resume.check_taken()  # a resumed stage must continue its training
    ctx.resume = None
    oom = {"retries": ctx.oom.retries, "micro_batch_size": ctx.oom.micro_batch_size}
    if save_dir is not None:
        from engine.compress.save import save_compressed

        pipeline = study.pipeline.model_dump(mode="json")
        with clock.phase("save"):
            save_compressed(
                model, save_dir, records=ctx.records, trial={"oom": oom}, pipeline=pipeline
            )
    record = {**ctx.record, "oom": oom}
    if save_dir is not None:
        record["saved_to"] = str(save_dir)
    return model, record


def _start(
    study: StudyConfig,
    shared: SharedInputs,
    seed: int,
    device: torch.device,
    report: Any,
    resume: TrialResume | None,
    dtype: torch.dtype | None,
) -> tuple[torch.nn.Module, StageContext, int]:
    """The teacher, the stages' context and the model the pipeline starts from (a copy of
    the teacher, or the checkpoint's model), and the index of the first stage to run."""
    from engine.teacher import load_model

    torch.manual_seed(seed)
    teacher = load_model(shared.teacher_config, shared.teacher_state, study.task).to(device)
    train = {
        k: torch.as_tensor(shared.splits["train"][k]) for k in get_task(study.task).view.arrays
    }
    ctx = StageContext(
        teacher=teacher,
        train=train,
        teacher_logits=torch.as_tensor(shared.teacher_train_logits),
        importance=shared.importance,
        seed=seed,
        device=device,
        autocast_dtype=dtype,
        report=report,
        task=get_task(study.task),
    )
    if resume is None:
        return (
            load_model(shared.teacher_config, shared.teacher_state, study.task).to(device),
            ctx,
            0,
        )
    model = resume.model.to(device)
    ctx.records = dict(resume.record)
    if resume.attn_implementation and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(resume.attn_implementation)
    return model, ctx, resume.stage_index


def _placement(run_dir: str | None, trial_id: str) -> dict[str, Any]:
    """Where and when this attempt of the trial runs (the placement columns,
    :data:`engine.rundir.PLACEMENT_COLUMNS`): its Ray node and start time; with ``run_dir``
    the attempt is appended to the trial's attempts file first (:func:`engine.ledger.
    record_attempt`), and ``attempts`` / ``node_history`` count and list every start so far."""
    import ray
    from ray import tune

    from engine.ledger import attempts, record_attempt

    where = {"node_id": ray.get_runtime_context().get_node_id(), "started_at": time.time()}
    if not run_dir:
        return {**where, "attempts": 1, "node_history": where["node_id"]}
    try:
        record_attempt(
            run_dir, trial_id, {**where, "from_checkpoint": tune.get_checkpoint() is not None}
        )
        history = attempts(run_dir, trial_id)
    except OSError as e:  # the trial still runs; only its attempt history is lost
        return {**where, "ledger_error": f"{type(e).__name__}: {e}"}
    return {
        **where,
        "attempts": len(history),
        "node_history": ",".join(a["node_id"] for a in history),
    }


def run_trial(
    config: dict[str, Any],
    *,
    study: StudyConfig,
    shared: SharedInputs | SharedHandle,
    run_dir: str | None = None,
    unknown: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Tune function trainable. ``config = {"values": {dotted: value}, "seed": int}``
    (or ``__trial_index__`` into ``study.repeats`` when a searcher repeats each point).

    With ``run_dir`` the student is saved under ``run_dir/models/<trial_id>/``, and the final row
    is recorded in ``run_dir/trials/`` before it is reported (:mod:`engine.ledger`): a trial
    that finds its row there (finished, but not yet marked so when the driver died) reports it
    again, marked ``replayed``, instead of training. ``unknown`` (on ``--resume``,
    :func:`engine.ledger.unknown_finished`) holds the rows of trials that finished after Tune's
    last snapshot, by configuration × seed: a trial of one of those replays that row.

    ``shared`` is fetched once per worker (:mod:`engine.worker`, which also resets the process
    between the trials a reused worker runs); the row's ``phase_*_s`` columns say where the
    trial's time went (:mod:`engine.phases`) and its ``worker_*`` columns which process ran it
    and what that process paid to start."""
    from ray import tune

    from engine.assess import assess
    from engine.ledger import config_id, finished_row, record_finished, replay_key

    trial_id = tune.get_context().get_trial_id()
    if run_dir and (done := finished_row(run_dir, trial_id)) is not None:
        tune.report({**done, "replayed": True})  # finished before a driver kill: not rerun
        return
    start = time.perf_counter()
    seed = trial_seed(config, study.repeats)
    config_key = config_id(trial_values(config))
    if run_dir and (done := (unknown or {}).get(replay_key(config_key, seed))) is not None:
        # finished under another id after the last snapshot; recorded under this one too,
        # so a later --resume replays it by id
        done = {**done, "replayed": True}
        record_finished(run_dir, trial_id, done)
        tune.report(done)
        return
    threads = study.threads_per_trial or max(1, int(study.resources.cpus))
    clock = PhaseClock()
    with clock.phase("reset"):  # a reused worker starts the trial as a fresh one would
        begin_trial(seed, threads)
    row: dict[str, Any] = {"seed": seed, "config_id": config_key, **_placement(run_dir, trial_id)}
    try:
        with clock.phase("fetch"):  # once per worker and study (engine.worker)
            shared = shared_inputs(shared)
        trial_study = with_values(study, trial_values(config))
        device = worker_device(trial_study.resources.gpus)  # the GPU Ray assigned, if any
        dtype = autocast_dtype(trial_study.resources.precision, device)
        every = trial_study.search.report_every_steps
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        base = {"seed": seed, "device": name}
        row["gpu_ids"] = ",".join(ray_gpu_ids() or [])
        reporter = checkpointer = resume = None
        ckpt_every = trial_study.search.checkpoint_every
        if every is not None:
            if ckpt_every is not None:
                checkpointer = TrialCheckpointer(
                    ckpt_every, shared.teacher_state, fault=config.get(FAULT_KEY)
                )
                resume = resume_from(tune.get_checkpoint(), shared.teacher_state, trial_study)
            reporter = TrialReporter(
                trial_study,
                shared.splits["valid"],
                device,
                every,
                tune.report,
                base,
                checkpointer=checkpointer,
                autocast_dtype=dtype,
                clock=clock,
            )
        if resume is not None:
            row.update(resumed_stage=resume.stage_name, resumed_step=resume.step)
        save_dir = None
        if run_dir and trial_study.measure.save_models:
            save_dir = Path(run_dir, "models", trial_id)
        model, record = build_student(
            trial_study,
            shared,
            seed,
            device,
            save_dir,
            reporter,
            checkpointer,
            resume,
            dtype,
            clock,
        )
        evals = {k: v for k, v in shared.splits.items() if k in ("valid", "test", "transfer")}
        task = get_task(trial_study.task)
        write = None
        if run_dir and task.examples_dir is not None:
            from engine.rundir import examples_name, write_examples

            def write(split: str, table: Any) -> None:
                write_examples(run_dir, examples_name(split, trial_id), table, task)

        row.update(
            assess(model, evals, trial_study, device, record, dtype, on_examples=write, clock=clock)
        )
        row["oom_retries"] = record["oom"]["retries"]
        row["train_micro_batch_size"] = record["oom"]["micro_batch_size"]
        if checkpointer is not None and checkpointer.error:
            row["checkpoint_error"] = checkpointer.error
        row["model_dir"] = record.get("saved_to")
        row.update(trial_columns(record))  # e.g. kept_layers, step
        row["status"], row["error"] = "ok", None
    except Exception as e:  # a failing trial is data, not a crash of the study
        row["status"] = "failed"
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc(limit=8)
        for o in study.search.objectives:  # Tune requires the searched metrics in every result
            row.setdefault(o.metric, float("nan"))
    row.update(clock.columns())
    row.update(worker_columns())
    row["wall_s"] = time.perf_counter() - start
    row["finished_at"] = time.time()
    if run_dir:
        try:
            record_finished(run_dir, trial_id, row)
        except OSError as e:  # the row still reaches Tune; only the replay guard is lost
            row["ledger_error"] = f"{type(e).__name__}: {e}"
    tune.report(row)


mark_imported()  # this module loads torch, transformers and the engine: a worker's start-up
