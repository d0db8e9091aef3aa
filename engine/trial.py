"""The Ray Tune trainable: one student = teacher → pipeline of stages → measurement.

The trainable only adapts: it rebuilds the teacher from shared inputs (passed by object
reference through ``tune.with_parameters``), runs the study's stages in order through the
stage registry, measures the result and reports one row. A stage that raises marks the
trial ``failed`` with its error; the study goes on with the rest.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.compress import STAGES, StageContext
from engine.config import StudyConfig, with_values
from engine.importance import LayerScores

__all__ = ["SharedInputs", "run_trial", "trial_values"]


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


def _device(study: StudyConfig) -> torch.device:
    if study.resources.gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def build_student(
    study: StudyConfig,
    shared: SharedInputs,
    seed: int,
    device: torch.device,
    save_dir: str | Path | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Run the pipeline on a fresh copy of the teacher; returns the model and the record.

    With ``save_dir`` the result is saved there in HF format (:mod:`engine.compress.save`).
    """
    from engine.teacher import load_model

    torch.manual_seed(seed)
    teacher = load_model(shared.teacher_config, shared.teacher_state).to(device)
    train = {
        k: torch.as_tensor(shared.splits["train"][k])
        for k in ("input_ids", "attention_mask", "labels")
    }
    ctx = StageContext(
        teacher=teacher,
        train=train,
        teacher_logits=torch.as_tensor(shared.teacher_train_logits),
        importance=shared.importance,
        seed=seed,
        device=device,
    )
    model = load_model(shared.teacher_config, shared.teacher_state).to(device)
    for name in study.pipeline.order:
        stage_cfg = getattr(study.pipeline, name, None)
        model = STAGES.get(name)(model, stage_cfg, ctx)
    if save_dir is not None:
        from engine.compress.save import save_compressed

        pipeline = study.pipeline.model_dump(mode="json")
        save_compressed(model, save_dir, record=ctx.record, extras=ctx.extras, pipeline=pipeline)
        ctx.record["saved_to"] = str(save_dir)
    return model, ctx.record


def run_trial(
    config: dict[str, Any],
    *,
    study: StudyConfig,
    shared: SharedInputs,
    run_dir: str | None = None,
) -> None:
    """Tune function trainable. ``config = {"values": {dotted: value}, "seed": int}``.

    With ``run_dir`` the student is saved under ``run_dir/models/<trial_id>/``."""
    from ray import tune

    from engine.assess import assess

    start = time.perf_counter()
    seed = int(config["seed"])
    threads = study.threads_per_trial or max(1, int(study.resources.cpus))
    torch.set_num_threads(threads)
    row: dict[str, Any] = {"seed": seed}
    try:
        trial_study = with_values(study, trial_values(config))
        device = _device(trial_study)
        save_dir = Path(run_dir, "models", tune.get_context().get_trial_id()) if run_dir else None
        model, record = build_student(trial_study, shared, seed, device, save_dir)
        evals = {k: v for k, v in shared.splits.items() if k in ("valid", "test")}
        row.update(assess(model, evals, trial_study, device, record))
        row["model_dir"] = record.get("saved_to")
        row["kept_layers"] = ",".join(map(str, record.get("truncate", {}).get("kept_layers", [])))
        row["status"], row["error"] = "ok", None
    except Exception as e:  # a failing trial is data, not a crash of the study
        row["status"] = "failed"
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc(limit=8)
    row["wall_s"] = time.perf_counter() - start
    tune.report(row)
