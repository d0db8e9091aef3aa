"""Preparation, once per study: data → teacher → importance, and the teacher's results row.

Each piece is computed once for the whole study, cached by content hash (the splits, the
teacher with its logits, the importance scores: :mod:`engine.cache`) and handed to every
trial as :class:`engine.trial.SharedInputs`. With
``teacher.ensemble: N`` the teacher is member 0 of N fine-tuned members (each cached), and
the trials' train logits are the members' mean (:mod:`engine.ensemble`).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

from engine.cache import cache_dir
from engine.config import StudyConfig
from engine.ensemble import build_ensemble, member_configs, member_outputs
from engine.tasks import get_task
from engine.teacher import TeacherConfig
from sweepcore.rundir import TEACHER_ID

__all__ = ["prepare", "teacher_row"]


def prepare(
    cfg: StudyConfig, timings: dict[str, float], cache: dict[str, Any] | None = None
) -> tuple[Any, Any, Any]:
    """Data → teacher → importance, each computed once for the whole study, or found in the
    preparation cache (:mod:`engine.cache`). ``cache``, when given, is told each piece's
    cache key and whether it was found (the manifest's ``cache`` section)."""
    import torch

    from engine.trial import SharedInputs

    cache = {} if cache is None else cache
    cache["dir"] = str(cache_dir())
    t0 = time.perf_counter()
    data, cache["data"] = _data(cfg)
    splits = {"train": data.train, "valid": data.valid, "test": data.test}
    if data.transfer is not None:  # another domain, scored as transfer_* columns
        splits["transfer"] = data.transfer
    timings["data_s"] = time.perf_counter() - t0
    print(
        f"[data] {cfg.data.corpus}: train {len(data.train['labels'])}, "
        f"valid {len(data.valid['labels'])}, test {len(data.test['labels'])} "
        f"({'cached, ' if cache['data']['cached'] else ''}{timings['data_s']:.1f} s)",
        flush=True,
    )
    for warning in data.stats.get("warnings", []):  # e.g. an order that is mostly tie-breaks
        print(f"[data] warning: {warning}", flush=True)

    t0 = time.perf_counter()
    outputs = get_task(cfg.task).head_outputs(data.num_labels)  # the head's width
    members = [_teacher(cfg, m, data, outputs) for m in member_configs(cfg.teacher)]
    art = members[0]  # the teacher the students start from (member 0 of an ensemble)
    if len(members) > 1:
        art = replace(art, ensemble=_ensemble(cfg, members, splits))
    timings["teacher_s"] = time.perf_counter() - t0
    quality = ", ".join(f"{m} {art.metrics[f'test_{m}']:.3f}" for m in get_task(cfg.task).metrics)
    print(
        f"[teacher] {'cached' if art.cached else 'trained'}: test {quality} "
        f"({timings['teacher_s']:.1f} s)",
        flush=True,
    )
    if art.ensemble is not None:
        quality = ", ".join(
            f"{m} {art.ensemble.metrics[m]:.3f}" for m in get_task(cfg.task).metrics
        )
        print(f"[teacher] ensemble of {len(members)} (mean output): test {quality}", flush=True)

    t0 = time.perf_counter()
    scores, cache["importance"] = _importance(cfg, art, data.train)
    if cache["importance"]["cached"]:
        print(f"[importance] cached (cache key {cache['importance']['key']})", flush=True)
    if art.ensemble is not None:  # the other members' ranks, for the manifest only
        for info, member in zip(art.ensemble.members[1:], members[1:], strict=True):
            ranked, _ = _importance(cfg, member, data.train)
            info["importance_ranks"] = {m: list(s.ranks()) for m, s in ranked.items()}
        art.ensemble.members[0]["importance_ranks"] = {
            m: list(s.ranks()) for m, s in scores.items()
        }
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    timings["importance_s"] = time.perf_counter() - t0
    for m, s in scores.items():
        print(f"[importance] {m}: ranks {list(s.ranks())}", flush=True)

    # with an ensemble the students distil from the members' mean train output
    logits = art.train_logits if art.ensemble is None else art.ensemble.train_logits
    shared = SharedInputs(art.config, art.state_dict, logits, splits, outputs, scores)
    return data, art, shared


def _data(cfg: StudyConfig) -> tuple[Any, dict[str, Any]]:
    """The study's prepared data: from the cache, else prepared by its task (with Ray Data)
    and cached; and ``{"key", "cached"}`` (key None: inputs that cannot be fingerprinted)."""
    from engine.data.cache import data_key, load_data, save_data

    key = data_key(cfg.task, cfg.data, cfg.teacher.model)
    data = None if key is None else load_data(key)
    if data is not None:
        return data, {"key": key, "cached": True}
    data = get_task(cfg.task).prepare(cfg.data, cfg.teacher.model)
    if key is not None:
        save_data(key, data)
    return data, {"key": key, "cached": False}


def _importance(cfg: StudyConfig, art: Any, train: Any) -> tuple[Any, dict[str, Any]]:
    """The layer-importance scores of the teacher ``art``: from the cache, else computed by
    the importance actors and cached; and ``{"key", "cached"}``."""
    from engine.importance.cache import importance_key, load_scores, save_scores
    from engine.importance.runner import compute_importance
    from engine.progress import Phase
    from engine.teacher import load_model

    key = importance_key(art.key, train, cfg.importance, cfg.task)
    scores = load_scores(key)
    if scores is not None:
        return scores, {"key": key, "cached": True}
    teacher = load_model(art.config, art.state_dict, cfg.task)
    with Phase("importance", unit="batch×method") as phase:
        scores = compute_importance(teacher, train, cfg.importance, progress=phase.show)
    save_scores(key, scores)
    return scores, {"key": key, "cached": False}


def _teacher(cfg: StudyConfig, teacher: TeacherConfig, data: Any, outputs: int) -> Any:
    """The fine-tuned ``teacher`` recipe (one ensemble member): from the cache, else
    fine-tuned as a Ray task with the trial resources and cached."""
    import ray

    from engine.progress import Phase, StepCounter, wait_with_progress
    from engine.teacher import finetune, load_cache, save_cache, teacher_key, training_line

    res = cfg.resources
    precision = f"{res.precision}/{'gpu' if res.gpus > 0 else 'cpu'}"
    # float32 CPU runs (the default) keep their cache keys; anything else is keyed apart
    key = teacher_key(
        teacher,
        data.train,
        outputs,
        precision=None if precision in ("auto/cpu", "fp32/cpu") else precision,
        task=cfg.task,
        valid=data.valid,
    )
    art = load_cache(key)
    if art is None:
        member = "" if cfg.teacher.ensemble is None else f" seed {teacher.seed}"
        print(f"[teacher] fine-tuning {teacher.model}{member} (cache key {key})", flush=True)
        task = ray.remote(finetune).options(num_cpus=res.cpus, num_gpus=res.gpus)
        counter = StepCounter()
        ref = task.remote(
            teacher,
            data.train,
            _evals(data),
            outputs,
            key=key,
            threads=None,  # nothing else runs while the study prepares: use the whole node
            gpus=res.gpus,
            precision=res.precision,
            task=cfg.task,
            progress=counter,
        )
        try:
            with Phase("teacher", unit="steps") as phase:
                art = wait_with_progress(ref, counter, phase)
        finally:
            counter.kill()
        save_cache(art)
    if (line := training_line(art.metrics.get("training"))) is not None:
        print(f"[teacher] {line}", flush=True)
    return art


def _evals(data: Any) -> dict[str, Any]:
    """The splits a teacher is scored on: valid, test and a ``transfer`` split if any."""
    out = {"valid": data.valid, "test": data.test}
    if getattr(data, "transfer", None) is not None:
        out["transfer"] = data.transfer
    return out


def _ensemble(cfg: StudyConfig, members: list[Any], splits: dict[str, Any]) -> Any:
    """The members' mean outputs and their quality; each member's valid/test outputs are
    computed as a Ray task with the trial resources."""
    import ray

    res = cfg.resources
    evals = {k: splits[k] for k in ("valid", "test")}
    task = ray.remote(member_outputs).options(num_cpus=res.cpus, num_gpus=res.gpus)
    outputs = ray.get(
        [
            task.remote(
                m.config,
                m.state_dict,
                evals,
                task=cfg.task,
                batch_size=cfg.measure.eval_batch_size,
                gpus=res.gpus,
                precision=res.precision,
            )
            for m in members
        ]
    )
    seeds = [m.seed for m in member_configs(cfg.teacher)]
    return build_ensemble(members, seeds, outputs, splits, cfg.task)


def teacher_row(cfg: StudyConfig, shared: Any, run_dir: Any = None) -> dict[str, Any]:
    """Measure the teacher exactly as trials are measured, with the trial resources; with
    ``run_dir`` its per-example table (the task's, if any) is written as ``teacher``."""
    import ray

    def measure(study: StudyConfig, shared: Any) -> tuple[dict[str, Any], Any]:
        import torch

        from engine.assess import assess
        from engine.device import autocast_dtype, worker_device
        from engine.teacher import load_model

        torch.set_num_threads(study.threads_per_trial or max(1, int(study.resources.cpus)))
        device = worker_device(study.resources.gpus)
        t0 = time.perf_counter()
        model = load_model(shared.teacher_config, shared.teacher_state, study.task)
        evals = {k: v for k, v in shared.splits.items() if k in ("valid", "test", "transfer")}
        tables: dict[str, Any] = {}
        row = assess(
            model,
            evals,
            study,
            device,
            None,
            autocast_dtype(study.resources.precision, device),
            on_examples=tables.__setitem__,
        )
        row["wall_s"] = time.perf_counter() - t0
        return row, tables

    task = ray.remote(measure).options(num_cpus=cfg.resources.cpus, num_gpus=cfg.resources.gpus)
    row, tables = ray.get(task.remote(cfg, shared))
    if run_dir is not None:
        from engine.rundir import examples_name, write_examples

        for split, table in tables.items():
            write_examples(run_dir, examples_name(split, TEACHER_ID), table, get_task(cfg.task))
    row.update(
        trial_id=TEACHER_ID,
        seed=cfg.teacher.seed,
        status="ok",
        error=None,
        kept_layers=",".join(map(str, range(row["student_layers"]))),
    )
    return row
