"""Ensemble teacher (``teacher.ensemble: N``): the teacher's recipe fine-tuned under N seeds.

Member k is the ``teacher`` section with ``seed = teacher.seed + k``, fine-tuned and cached
like the teacher (``ensemble`` is not part of :func:`engine.teacher.teacher_key`, so member 0
*is* the teacher a study without an ensemble trains, under the same key). The preparation
(:mod:`engine.prepare`) trains or loads the members and builds :class:`EnsembleArtifacts`.

What the ensemble changes:

* the students' distillation targets: ``SharedInputs.teacher_train_logits`` is the members'
  mean train output Σ_k z_k / N (the equal-weight case of
  :func:`engine.compress.distill.ensemble_logits`), so every stage that distils from the
  teacher's outputs (prune's pruning-aware KD, distill, early_exit) distils from the ensemble;
* a reference row ``ensemble`` in ``results.parquet`` (``status = "reference"``): the task's
  quality of the members' mean output on valid and test, with its per-example table, and
  ``manifest["teacher"]["ensemble"]`` (members' seeds, cache keys, own quality).

What it does not change: the model the students start from, the ``teacher`` row, feature
distillation (hidden states, attention maps) and the study's importance scores are member
0's, the model whose layers the students keep. The other members' importance ranks are
recorded beside theirs in the manifest, to show whether a ranking belongs to the recipe or
to one seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.tasks import Task, get_task, metric_columns
from engine.teacher import TeacherArtifacts, TeacherConfig

__all__ = [
    "ENSEMBLE_ID",
    "EnsembleArtifacts",
    "build_ensemble",
    "mean_outputs",
    "member_configs",
    "member_outputs",
]

ENSEMBLE_ID = "ensemble"  # its reference row's trial_id and its per-example table's name


def member_configs(cfg: TeacherConfig) -> list[TeacherConfig]:
    """The teacher recipe of each member, seeds ``cfg.seed`` + 0 … N − 1 (``[cfg]`` without
    an ensemble). Member 0 is ``cfg`` itself."""
    if cfg.ensemble is None:
        return [cfg]
    return [cfg.model_copy(update={"seed": cfg.seed + k}) for k in range(cfg.ensemble)]


def mean_outputs(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """The members' mean output Σ_k z_k / N (summed in float64), as float32."""
    if not outputs or len({np.shape(z) for z in outputs}) != 1:
        raise ValueError(
            f"need members' outputs of one shape, got {[np.shape(z) for z in outputs]}"
        )
    return np.mean(np.stack([np.asarray(z, np.float64) for z in outputs]), axis=0).astype(
        np.float32
    )


def member_outputs(
    config: dict[str, Any],
    state: dict[str, Any],
    splits: Mapping[str, Mapping[str, np.ndarray]],
    *,
    task: str | Task,
    batch_size: int,
    gpus: float = 0.0,
    precision: str = "auto",
) -> dict[str, np.ndarray]:
    """One member's float32 outputs on each split (a plain function: the caller runs it as a
    Ray task with the trial resources, on the GPU Ray assigned when ``gpus`` > 0)."""
    from engine.device import autocast_dtype, worker_device
    from engine.measure import evaluate
    from engine.teacher import load_model

    device = worker_device(gpus)
    dtype = autocast_dtype(precision, device)  # type: ignore[arg-type]
    model = load_model(config, state, task)
    out = {}
    for name, split in splits.items():
        out[name], _ = evaluate(
            model,
            dict(split),
            task=task,
            batch_size=batch_size,
            device=device,
            autocast_dtype=dtype,
        )
    return out


@dataclass
class EnsembleArtifacts:
    """The ensemble as the study uses it.

    Attributes:
        train_logits: the members' mean train output, what students distil from.
        outputs: split → the members' mean output (valid, test).
        metrics: the task's quality of ``outputs`` (test as plain names, valid as ``valid_``).
        members: per member: ``seed``, ``cache_key``, ``cached`` and its own ``metrics``
            (plus ``importance_ranks`` when the preparation scored it).
    """

    train_logits: np.ndarray
    outputs: dict[str, np.ndarray]
    metrics: dict[str, Any]
    members: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """What the manifest records (``manifest["teacher"]["ensemble"]``)."""
        return {"size": len(self.members), "metrics": self.metrics, "members": self.members}


def build_ensemble(
    members: Sequence[TeacherArtifacts],
    seeds: Sequence[int],
    evals: Sequence[Mapping[str, np.ndarray]],
    splits: Mapping[str, Mapping[str, np.ndarray]],
    task: str | Task,
) -> EnsembleArtifacts:
    """Average the members' train outputs (``members[k].train_logits``) and their outputs
    on each split in ``evals[k]`` (:func:`member_outputs`), and score the averages on
    ``splits`` with ``task``."""
    if not len(members) == len(seeds) == len(evals) or len(members) < 2:
        raise ValueError(
            f"an ensemble needs ≥ 2 members, each with a seed and outputs "
            f"(got {len(members)}, {len(seeds)}, {len(evals)})"
        )
    task = get_task(task)
    outputs = {name: mean_outputs([e[name] for e in evals]) for name in evals[0]}
    metrics: dict[str, Any] = {}
    for name, z in outputs.items():
        metrics.update(
            metric_columns(task.score(z, splits[name]), "" if name == "test" else f"{name}_")
        )
    return EnsembleArtifacts(
        train_logits=mean_outputs([m.train_logits for m in members]),
        outputs=outputs,
        metrics=metrics,
        members=[
            {"seed": int(s), "cache_key": m.key, "cached": m.cached, "metrics": m.metrics}
            for m, s in zip(members, seeds, strict=True)
        ],
    )
