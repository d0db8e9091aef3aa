"""The sweep itself: every student as a Ray Tune trial, then the latency phase.

:func:`run_tune` builds the Tuner (search algorithm, scheduler, resources) or restores an
interrupted one; :func:`full_budget` is the number of results a full-length trial reports (the
scheduler's ``max_t``); :func:`latency_phase` times the teacher and every saved student
serially on one node held whole; :func:`pareto_summary` marks and prints the Pareto set.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from engine.config import StudyConfig
from sweepcore.rundir import TEACHER_ID

__all__ = [
    "concurrency_line",
    "drop_checkpoints",
    "full_budget",
    "latency_phase",
    "pareto_summary",
    "run_tune",
    "trainable_for",
    "trials_at_once",
]


def full_budget(cfg: StudyConfig, n_train: int) -> int:
    """Results a full-length trial reports (:func:`engine.compress.pipeline.full_budget`)."""
    from engine.compress.pipeline import full_budget as budget

    return budget(cfg.pipeline, cfg.search.report_every_steps, n_train)


def trainable_for(cfg: StudyConfig, fn: Any, **params: Any) -> Any:
    """``fn`` with the study's per-trial resources (fractional GPUs allowed) and parameters."""
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(fn, **params) if params else fn,
        {"cpu": cfg.resources.cpus, "gpu": cfg.resources.gpus},
    )


def trials_at_once(cfg: StudyConfig, resources: dict[str, float]) -> int:
    """How many trials fit at once in ``resources`` (Ray's ``CPU``/``GPU`` totals) at the
    study's per-trial CPUs and GPUs, capped by ``search.max_concurrent_trials``."""
    fits = [int(resources.get("CPU", 0.0) // cfg.resources.cpus)] if cfg.resources.cpus else []
    if cfg.resources.gpus:
        fits.append(int(resources.get("GPU", 0.0) // cfg.resources.gpus))
    n = min(fits) if fits else 0
    cap = cfg.search.max_concurrent_trials
    return min(n, cap) if cap else n


def concurrency_line(cfg: StudyConfig, resources: dict[str, float]) -> str:
    """One line on how the sweep uses the machine: trials at once, CPUs/GPUs and torch
    threads per trial, out of what the Ray cluster has now."""
    threads = cfg.threads_per_trial or max(1, int(cfg.resources.cpus))
    gpus = f", {cfg.resources.gpus:g} GPU" if cfg.resources.gpus else ""
    have = f"{resources.get('CPU', 0.0):g} CPUs"
    if resources.get("GPU"):
        have += f", {resources['GPU']:g} GPUs"
    n = trials_at_once(cfg, resources)
    return (
        f"{n} trial{'s' if n != 1 else ''} at once: {cfg.resources.cpus:g} "
        f"CPU{'s' if cfg.resources.cpus > 1 else ''}{gpus} and "
        f"{threads} torch thread{'s' if threads != 1 else ''} each, on the cluster's {have} "
        f"now (workers reused between trials: {'yes' if cfg.search.reuse_actors else 'no'})"
    )


def _cluster_resources() -> dict[str, float]:
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items()}


def run_tune(cfg: StudyConfig, shared: Any, run_dir: Path, resume: bool) -> Any:
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner

    from engine.progress import ProgressTable
    from engine.schedulers import SchedulerState, build_scheduler
    from engine.search import plan_search
    from engine.trial import run_trial
    from engine.worker import share

    storage = run_dir.resolve()
    # by reference: each worker fetches the inputs once, whatever number of trials it runs
    handle = share(shared)
    exp_dir = storage / "tune"
    if resume and Tuner.can_restore(str(exp_dir)):
        print(f"[sweep] resuming {exp_dir}", flush=True)
        unknown = _unknown_finished(storage, exp_dir)
        trainable = trainable_for(
            cfg, run_trial, study=cfg, shared=handle, run_dir=str(storage), unknown=unknown
        )
        tuner = Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, restart_errored=True)
    else:
        trainable = trainable_for(cfg, run_trial, study=cfg, shared=handle, run_dir=str(storage))
        plan = plan_search(cfg)
        max_t = full_budget(cfg, len(shared.splits["train"]["labels"]))
        print(
            f"[sweep] {cfg.search.algorithm}: {plan.configs} configurations × "
            f"{len(cfg.repeats)} seeds, scheduler {cfg.search.scheduler.name} "
            f"({max_t} results per full trial)",
            flush=True,
        )
        print(f"[sweep] {concurrency_line(cfg, _cluster_resources())}", flush=True)
        # No metric/mode here: the searcher and scheduler carry their own (ray #35909).
        # SchedulerState saves the scheduler's rungs with each experiment snapshot, which
        # Tune does not do, so --resume continues them; trial checkpoints keep only the last.
        scheduler = build_scheduler(cfg, max_t)
        tuner = Tuner(
            trainable,
            param_space=plan.param_space,
            tune_config=TuneConfig(
                search_alg=plan.search_alg,
                scheduler=scheduler,
                num_samples=plan.num_samples,
                max_concurrent_trials=cfg.search.max_concurrent_trials,
                # a finished trial's worker runs the next one: no new process, imports or
                # fetch of the shared inputs (engine.worker resets it between trials)
                reuse_actors=cfg.search.reuse_actors,
            ),
            run_config=RunConfig(
                name="tune",
                storage_path=str(storage),
                failure_config=FailureConfig(max_failures=cfg.search.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=1),
                callbacks=[
                    ProgressTable.for_study(cfg, total=plan.configs * len(cfg.repeats)),
                    SchedulerState(scheduler),
                ],
                verbose=0,
            ),
        )
    return tuner.fit()


def _unknown_finished(run_dir: Path, exp_dir: Path) -> dict[str, dict[str, Any]]:
    """Ledger rows of trials that finished after the experiment's last snapshot (so the
    restored experiment does not know them; :func:`engine.ledger.unknown_finished`)."""
    from ray.tune import ExperimentAnalysis

    from engine.ledger import unknown_finished

    known = {t.trial_id for t in ExperimentAnalysis(str(exp_dir)).trials}
    rows = unknown_finished(run_dir, known)
    if rows:
        print(
            f"[sweep] {len(rows)} trial(s) finished after the last snapshot: a trial of the "
            "same configuration × seed replays its row",
            flush=True,
        )
    return rows


def drop_checkpoints(grid: Any) -> int:
    """Delete the trial checkpoints of a finished study (local storage only): they exist to
    retry a trial whose worker died, and the finished students are saved under ``models/``."""
    import shutil

    dropped = 0
    for res in grid:
        ckpt = getattr(res, "checkpoint", None)
        if ckpt is not None and Path(ckpt.path).is_dir():
            shutil.rmtree(ckpt.path, ignore_errors=True)
            dropped += 1
    return dropped


def _measuring_node(cuda: bool) -> dict[str, Any] | None:
    """The node the latency phase holds whole: the driver's when it has CPUs (and a GPU for a
    GPU study), else the first alive node that does; None when no node qualifies."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    alive = sorted((n for n in ray.nodes() if n.get("Alive")), key=lambda n: n["NodeID"] != here)
    for n in alive:
        res = n.get("Resources") or {}
        if res.get("CPU", 0) >= 1 and (not cuda or res.get("GPU", 0) >= 1):
            return n
    return None


def latency_phase(
    cfg: StudyConfig, shared: Any, rows: list[dict[str, Any]], timings: dict[str, float]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Time the teacher and every saved student serially after the sweep
    (:mod:`engine.latency_phase`), in one Ray task that holds a whole node — all its CPUs
    (and GPUs) — so no trial, actor or other task of the study runs beside the timing; on a
    cluster this also picks a GPU node for a GPU study (the head has none). Returns the rows
    with the latency columns replaced and the phase's description for the manifest."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from engine.latency_phase import ToTime, apply_latency, time_models, timing_setup, untimed_phase

    items = [
        ToTime(str(r.get("trial_id")), r.get("status"), r.get("model_dir"))
        for r in rows
        if r.get("trial_id") != TEACHER_ID
    ]
    setup = timing_setup(cfg, shared.splits["test"])
    node = _measuring_node(setup.cuda)
    t0 = time.perf_counter()
    if node is None:
        phase = untimed_phase(
            [TEACHER_ID, *(i.trial_id for i in items)],
            "no alive node with a CPU" + (" and a GPU" if setup.cuda else "") + " to time on",
        )
    else:
        res = node["Resources"]
        cpus, gpus = res["CPU"], res.get("GPU", 0)
        print(
            f"[latency] timing the teacher and {len(items)} trials in turns on "
            f"{node.get('NodeManagerHostname', node['NodeID'][:8])} (held whole: {cpus:g} CPUs, "
            f"{gpus:g} GPUs), {setup.threads} torch threads, batch {cfg.measure.batch_size}, "
            f"warmup {setup.warmup}, repeats {setup.repeats}",
            flush=True,
        )

        def phase_task(teacher_config: dict[str, Any], teacher_state: dict[str, Any]) -> Any:
            from engine.teacher import load_model

            teacher = load_model(teacher_config, teacher_state, cfg.task)
            return time_models(items, setup, teacher)

        task = ray.remote(phase_task).options(
            num_cpus=cpus,
            num_gpus=gpus,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
        )
        try:
            phase = ray.get(task.remote(shared.teacher_config, shared.teacher_state))
            phase.info.update(node_cpus=cpus, node_gpus=gpus)
        except Exception as e:  # the study's results are kept; their latency says why not
            phase = untimed_phase(
                [TEACHER_ID, *(i.trial_id for i in items)],
                f"latency phase failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
            )
    timings["latency_s"] = time.perf_counter() - t0
    print(
        f"[latency] {phase.info.get('timed', 0)} timed, {phase.info.get('untimed', 0)} without "
        f"a figure ({timings['latency_s']:.1f} s)",
        flush=True,
    )
    return apply_latency(rows, phase), phase.info


def pareto_summary(cfg: StudyConfig, rows: list[dict[str, Any]]) -> Any:
    """Mark the Pareto set and print it: configurations that ran to the full budget, their
    objectives averaged over seeds, non-dominated on ``search.objectives``
    (:func:`sweepcore.pareto.config_front`, the report's definition too)."""
    import pandas as pd

    from sweepcore.pareto import config_front

    df = pd.DataFrame([r for r in rows if r.get("trial_id") != TEACHER_ID])
    objectives = [(o.metric, o.mode) for o in cfg.search.objectives]
    cols = [m for m, _ in objectives]
    if df.empty or any(c not in df for c in cols):
        return set()
    ok = df[df["status"] == "ok"]  # the report's rule too: only finished trials count
    configs = config_front(ok, objectives, key=["config_id"])
    front = configs[configs["on_front"]]
    counts = df["status"].value_counts().to_dict()
    print(f"[sweep] trials: {counts}", flush=True)
    print(
        f"[sweep] Pareto set on {', '.join(f'{m} ({d})' for m, d in objectives)} "
        f"over {len(configs)} finished configurations (mean over seeds): {len(front)}",
        flush=True,
    )
    if not front.empty:
        shown = front.set_index("config_id")[[*cols, "n_seeds"]]
        for key in [k for k in cfg.search.space if k in front]:
            shown[key] = front.set_index("config_id")[key]
        print(shown.sort_values(cols[-1]).to_string(float_format=lambda v: f"{v:.4g}"))
    split = {m.split("_", 1)[0] for m in cols if m.startswith(("valid_", "transfer_"))}
    if split:  # the search judged on held-out validation data; the report on test
        print(
            f"[sweep] (this is the search's front, judged on {', '.join(sorted(split))}; the "
            "report's Answer and Pareto set judge the students on test)",
            flush=True,
        )
    return set(front["config_id"])
