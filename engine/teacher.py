"""The teacher: fine-tuned once per (model, data, settings), cached by content hash.

The cache key hashes the teacher section of the study, the tokenised training data and the
label count, so a rerun or another study on the same inputs reuses the weights. Fine-tuning
runs as a Ray task with the trial resources (a GPU where trials get one), never assuming a
filesystem shared between nodes: weights come back through the object store and are cached
on the driver. The task runs on the GPU Ray assigned it (:func:`engine.device.worker_device`)
under the study's ``resources.precision``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator
from transformers import PreTrainedModel

from engine.cache import cache_dir
from engine.configbase import OptimConfig
from engine.device import autocast_dtype, precision_name, worker_device
from engine.early_stopping import EarlyStopping, Monitor, selection_subset
from engine.models import EMBEDDED_TEACHER
from engine.tasks import DEFAULT_TASK, Task, get_task, metric_columns
from engine.train import OomLog, planned_steps, train_classifier
from sweepcore.atomic import atomic_path, write_atomic

__all__ = [
    "TeacherArtifacts",
    "TeacherConfig",
    "cache_dir",
    "finetune",
    "fingerprint",
    "load_model",
    "teacher_key",
    "training_line",
]

CODE_VERSION = "teacher-v1"  # bump when the fine-tuning recipe changes
WEIGHTS = "state_dict.safetensors"  # the cached weights (no pickle)
LEGACY_WEIGHTS = "state_dict.pt"  # what entries written before safetensors hold


class TeacherConfig(OptimConfig):
    """The model that is compressed, and its task fine-tuning (cached by content hash)."""

    model: str = EMBEDDED_TEACHER
    epochs: float = Field(2.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    seed: int = Field(0, ge=0)
    # N >= 2: an ensemble of this recipe under seeds seed, seed + 1, ..., seed + N - 1 whose
    # mean output the students distil from (engine.ensemble); None: one teacher. Not part of
    # a member's cache key: member 0 is the teacher a study without an ensemble would train.
    ensemble: int | None = None
    # model selection on validation (engine.early_stopping): epochs / max_steps become the
    # budget, the best evaluation's weights are kept; None: train the whole budget
    early_stopping: EarlyStopping | None = None

    @field_validator("ensemble")
    @classmethod
    def _ensemble_size(cls, n: int | None) -> int | None:
        if n is not None and n < 2:
            raise ValueError(
                "an ensemble teacher needs at least 2 members (leave it out for one teacher)"
            )
        return n


@dataclass
class TeacherArtifacts:
    """Everything trials need from the teacher, small enough for the object store."""

    config: dict[str, Any]  # HF config as a dict
    state_dict: dict[str, torch.Tensor]
    train_logits: np.ndarray  # float32 [N_train, C]
    metrics: dict[str, Any]  # valid_/test quality (+ device, precision, oom_retries)
    key: str
    cached: bool = False
    ensemble: Any = None  # teacher.ensemble: engine.ensemble.EnsembleArtifacts (None: one teacher)


def fingerprint(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes() if a.dtype != object else "\x1f".join(map(str, a)).encode())
    return h.hexdigest()


def teacher_key(
    cfg: TeacherConfig,
    train: dict[str, np.ndarray],
    num_labels: int,
    precision: str | None = None,
    task: str | Task = DEFAULT_TASK,
    valid: dict[str, np.ndarray] | None = None,
) -> str:
    """Cache key of a fine-tuned teacher. With early stopping the validation rows that choose
    its weights (``valid``) enter the key. ``precision`` (e.g. ``"auto/gpu"``) enters the key
    only when given, so float32 CPU runs keep the keys they had before it existed;
    ``cfg.ensemble`` never enters it (member k's key is the recipe's with ``seed + k``).
    ``num_labels``: the head's outputs; the data hashed are ``task``'s arrays."""
    # a member's own recipe; no early stopping keeps the keys it had before the setting
    left_out = {"ensemble"} | ({"early_stopping"} if cfg.early_stopping is None else set())
    payload = {
        "code": CODE_VERSION,
        "teacher": cfg.model_dump(mode="json", exclude=left_out),
        "data": fingerprint({k: train[k] for k in get_task(task).view.arrays}),
        "num_labels": num_labels,
        "torch": torch.__version__.split("+")[0],
    }
    extra = get_task(task).teacher_inputs(train)
    if extra:  # e.g. title vectors (absent: unchanged keys)
        payload["inputs"] = fingerprint(extra)
    if get_task(task).teacher_recipe:  # a task's own teacher objective (absent: unchanged keys)
        payload["recipe"] = get_task(task).teacher_recipe
    if precision is not None:
        payload["precision"] = precision
    if cfg.early_stopping is not None:  # the weights kept depend on the validation rows too
        if valid is None:
            raise ValueError("a teacher with early stopping is keyed by its validation rows")
        subset = selection_subset(valid, cfg.early_stopping.eval_examples)
        payload["selection"] = fingerprint({k: subset[k] for k in get_task(task).view.arrays})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_model(
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    task: str | Task = DEFAULT_TASK,
) -> PreTrainedModel:
    """Rebuild ``task``'s model from its config dict and weights (no files needed)."""
    model = get_task(task).model_from_config(config)
    model.load_state_dict(state_dict)
    return model.eval()


def finetune(
    cfg: TeacherConfig,
    train: dict[str, np.ndarray],
    evals: dict[str, dict[str, np.ndarray]],
    num_labels: int,
    *,
    key: str,
    threads: int | None = None,
    gpus: float = 0.0,
    precision: str = "auto",
    task: str | Task = DEFAULT_TASK,
    progress: Any = None,
) -> TeacherArtifacts:
    """Fine-tune the teacher on ``train`` with ``task``'s loss (targets only); compute its
    train outputs and ``task``'s quality on each split in ``evals``. Plain function: the
    caller runs it as a Ray task. ``num_labels``: the head's outputs (classes for
    classification).

    ``threads`` None uses every core of the node. ``gpus``: what the task asked Ray for (the
    device is the GPU Ray assigned; CPU when 0). ``precision``: ``resources.precision``.
    ``progress``: a :class:`engine.train.ProgressReport` told every optimizer step (the
    driver's progress bar, :class:`engine.progress.StepCounter`)."""
    from engine.measure import evaluate

    # None = every core of this node (Ray caps torch at the task's num_cpus threads otherwise)
    torch.set_num_threads(threads or os.cpu_count() or 1)
    device = worker_device(gpus)
    dtype = autocast_dtype(precision, device)  # type: ignore[arg-type]
    task = get_task(task)
    model = task.build_model(cfg.model, num_labels, attn_implementation="sdpa", seed=cfg.seed)
    task.init_head(model, train)
    objective = task.teacher_training(train)
    tensors = {k: torch.as_tensor(v) for k, v in objective.arrays.items()}
    oom = OomLog()
    monitor = None
    n = len(tensors["labels"])
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    if cfg.early_stopping is not None:
        total = planned_steps(n, cfg.batch_size, cfg.epochs, cfg.max_steps)
        monitor = Monitor(
            model,
            selection_subset(evals["valid"], cfg.early_stopping.eval_examples),
            task,
            cfg.early_stopping,
            every=cfg.early_stopping.eval_every_steps or steps_per_epoch,
            total=total,
            device=device,
            autocast_dtype=dtype,
        )
    train_classifier(
        model,
        tensors,
        on_step=monitor,
        loss_fn=lambda s, y, _t: objective.loss(s, y),
        forward_kwargs=dict(objective.forward_kwargs),
        epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        freeze_embeddings=cfg.freeze_embeddings,
        seed=cfg.seed,
        device=device,
        autocast_dtype=dtype,
        oom=oom,
        report=progress,
    )
    metrics: dict[str, Any] = {}
    if monitor is not None:
        monitor.restore()  # the best evaluation's weights
        metrics["training"] = monitor.summary(steps_per_epoch)
    for split, data in evals.items():
        _, split_metrics = evaluate(
            model, data, task=task, batch_size=128, device=device, autocast_dtype=dtype
        )
        metrics.update(metric_columns(split_metrics, f"{split}_"))
    train_logits, _ = evaluate(
        model, train, task=task, batch_size=128, device=device, autocast_dtype=dtype
    )
    metrics["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    metrics["precision"] = precision_name(dtype)
    metrics["oom_retries"] = oom.retries
    model.cpu()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return TeacherArtifacts(model.config.to_dict(), state, train_logits, metrics, key)


def training_line(training: dict[str, Any] | None) -> str | None:
    """One line on an early-stopped teacher's run (``metrics["training"]``), or None."""
    if not training:
        return None
    how = (
        f"stopped early at step {training['steps_run']} of {training['budget_steps']}"
        if training["stopped_early"]
        else f"ran its whole budget of {training['budget_steps']} steps"
    )
    best = training["best_value"]
    return (
        f"{how} ({training['epochs_run']:g} of {training['budget_epochs']:g} epochs); kept "
        f"step {training['best_step']} (epoch {training['best_epoch']:g}), "
        f"{training['selection_metric']} {best:.4f} on {training['selection_examples']} rows"
        if best is not None
        else f"{how}; no finite {training['selection_metric']}: the last weights are kept"
    )


def save_cache(art: TeacherArtifacts, root: Path | None = None) -> Path:
    """Cache ``art`` under its key: weights as safetensors, train logits as ``.npy``,
    ``meta.json`` last (each file atomic; an entry without ``meta.json`` is a miss)."""
    from safetensors.torch import save as save_tensors

    d = (root or cache_dir()) / "teachers" / art.key
    # one contiguous copy per key: safetensors refuses tensors that share memory (tied weights)
    state = {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
        for k, v in art.state_dict.items()
    }
    write_atomic(d / WEIGHTS, save_tensors(state))
    with atomic_path(d / "train_logits.npy") as tmp, tmp.open("wb") as f:
        np.save(f, art.train_logits)
    write_atomic(d / "meta.json", json.dumps({"config": art.config, "metrics": art.metrics}))
    return d


def load_cache(key: str, root: Path | None = None) -> TeacherArtifacts | None:
    """The cached teacher under ``key``, or None (absent, incomplete or damaged: a miss).

    Entries written before the safetensors switch (``state_dict.pt``) still load, as plain
    tensors only (``weights_only=True``): the cache key did not change."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = (root or cache_dir()) / "teachers" / key
    try:
        meta = json.loads((d / "meta.json").read_text())
        if (d / WEIGHTS).is_file():
            state = load_file(d / WEIGHTS, device="cpu")
        else:
            state = torch.load(d / LEGACY_WEIGHTS, map_location="cpu", weights_only=True)
        logits = np.load(d / "train_logits.npy")
    except (OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError):
        return None
    return TeacherArtifacts(meta["config"], state, logits, meta["metrics"], key, cached=True)
