"""Preparation, once per study: data → teacher → importance, and the teacher's results row.

Each piece is computed once for the whole study (the teacher and its logits are cached by
content hash) and handed to every trial as :class:`engine.trial.SharedInputs`.
"""

from __future__ import annotations

import os
import time
from typing import Any

from engine.config import StudyConfig
from engine.tasks import get_task

__all__ = ["prepare", "teacher_row"]


def prepare(cfg: StudyConfig, timings: dict[str, float]) -> tuple[Any, Any, Any]:
    """Data → teacher → importance, each computed once for the whole study."""
    import ray
    import torch

    from engine.importance.runner import compute_importance
    from engine.teacher import finetune, load_cache, load_model, save_cache, teacher_key
    from engine.trial import SharedInputs

    t0 = time.perf_counter()
    data = get_task(cfg.task).prepare(cfg.data, cfg.teacher.model)
    splits = {"train": data.train, "valid": data.valid, "test": data.test}
    if data.transfer is not None:  # another domain, scored as transfer_* columns
        splits["transfer"] = data.transfer
    timings["data_s"] = time.perf_counter() - t0
    print(
        f"[data] {cfg.data.corpus}: train {len(data.train['labels'])}, "
        f"valid {len(data.valid['labels'])}, test {len(data.test['labels'])} "
        f"({timings['data_s']:.1f} s)",
        flush=True,
    )

    t0 = time.perf_counter()
    res = cfg.resources
    precision = f"{res.precision}/{'gpu' if res.gpus > 0 else 'cpu'}"
    outputs = get_task(cfg.task).head_outputs(data.num_labels)  # the head's width
    # float32 CPU runs (the default) keep their cache keys; anything else is keyed apart
    key = teacher_key(
        cfg.teacher,
        data.train,
        outputs,
        precision=None if precision in ("auto/cpu", "fp32/cpu") else precision,
        task=cfg.task,
    )
    art = load_cache(key)
    if art is None:
        print(f"[teacher] fine-tuning {cfg.teacher.model} (cache key {key})", flush=True)
        task = ray.remote(finetune).options(
            num_cpus=cfg.resources.cpus, num_gpus=cfg.resources.gpus
        )
        art = ray.get(
            task.remote(
                cfg.teacher,
                data.train,
                {k: v for k, v in splits.items() if k != "train"},
                outputs,
                key=key,
                threads=None,  # nothing else runs while the study prepares: use the whole node
                gpus=res.gpus,
                precision=res.precision,
                task=cfg.task,
            )
        )
        save_cache(art)
    timings["teacher_s"] = time.perf_counter() - t0
    quality = ", ".join(f"{m} {art.metrics[f'test_{m}']:.3f}" for m in get_task(cfg.task).metrics)
    print(
        f"[teacher] {'cached' if art.cached else 'trained'}: test {quality} "
        f"({timings['teacher_s']:.1f} s)",
        flush=True,
    )

    t0 = time.perf_counter()
    teacher = load_model(art.config, art.state_dict, cfg.task)
    scores = compute_importance(teacher, data.train, cfg.importance)
    del teacher
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    timings["importance_s"] = time.perf_counter() - t0
    for m, s in scores.items():
        print(f"[importance] {m}: ranks {list(s.ranks())}", flush=True)

    shared = SharedInputs(art.config, art.state_dict, art.train_logits, splits, outputs, scores)
    return data, art, shared


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
            write_examples(run_dir, examples_name(split, "teacher"), table, get_task(cfg.task))
    row.update(
        trial_id="teacher",
        seed=cfg.teacher.seed,
        status="ok",
        error=None,
        kept_layers=",".join(map(str, range(row["student_layers"]))),
    )
    return row
