"""Measure one built model: quality on valid/test, fvcore GFLOPs, size, latency.

Used for the teacher row and for every trial, so both are measured the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from engine.compress.base import measure_placement, stage_columns
from engine.compress.structure import shape_text
from engine.config import StudyConfig
from engine.device import autocast, precision_name
from engine.measure import (
    count_gflops,
    count_params,
    count_params_nonzero,
    evaluate,
    measure_latency,
    weights_bytes,
)
from engine.models import num_layers
from engine.phases import PhaseClock
from engine.tasks import get_task, metric_columns

__all__ = ["assess"]


def assess(
    model: PreTrainedModel,
    splits: dict[str, dict[str, np.ndarray]],
    study: StudyConfig,
    device: torch.device,
    record: dict[str, Any] | None = None,
    autocast_dtype: torch.dtype | None = None,
    on_examples: Callable[[str, Any], None] | None = None,
    clock: PhaseClock | None = None,
) -> dict[str, Any]:
    """Quality on each split (``test`` unprefixed, others prefixed ``<split>_``) and cost.

    ``record`` (what the compression stages did, as saved in ``compression.json``): each
    registered stage adds its columns (its defaults when it did not run), e.g.
    ``gflops_theoretical`` = ``gflops`` × (1 − mask sparsity), ``quant``, ``exit_curve``;
    ``gflops`` stays the dense fvcore count. A stage may say where its output is measured
    (a dynamic-int8 model runs on CPU whatever the trial's device). ``autocast_dtype``: the
    forwards of evaluation and latency run under that autocast (the ``precision`` column);
    GFLOPs are counted without it (the same multiply-adds either way). The latency it
    measures is the trial's own (beside whatever else runs then); the sweep moves it to
    ``latency_in_trial_*`` and fills the public columns in its latency phase
    (:mod:`engine.latency_phase`). ``on_examples(split, table)`` receives the task's
    per-example table of the test split and of a ``transfer`` split
    (:meth:`engine.tasks.Task.example_table`; None for tasks without one). ``clock``: the
    quality passes count as phase ``eval``, everything after them (GFLOPs, sizes, the stages'
    columns, latency) as ``measure``.
    """
    clock = clock or PhaseClock()
    place = measure_placement(record, model, device)  # e.g. dynamic int8 runs on CPU
    device = place.device
    if not place.autocast:
        autocast_dtype = None
    if place.move:
        model.to(device)
    model.eval()
    with clock.phase("eval"):
        row = _quality(model, splits, study, device, autocast_dtype, on_examples)
    with clock.phase("measure"):
        row.update(_cost(model, splits, study, device, record, autocast_dtype, row))
    return row


def _quality(
    model: PreTrainedModel,
    splits: dict[str, dict[str, np.ndarray]],
    study: StudyConfig,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    on_examples: Callable[[str, Any], None] | None,
) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for split, data in splits.items():
        outputs, metrics = evaluate(
            model,
            data,
            task=study.task,
            batch_size=study.measure.eval_batch_size,
            device=device,
            autocast_dtype=autocast_dtype,
        )
        prefix = "" if split == "test" else f"{split}_"
        row.update(metric_columns(metrics, prefix))
        if split in ("test", "transfer") and on_examples is not None:
            on_examples(split, get_task(study.task).example_table(outputs, data))
        del outputs
    return row


def _cost(
    model: PreTrainedModel,
    splits: dict[str, dict[str, np.ndarray]],
    study: StudyConfig,
    device: torch.device,
    record: dict[str, Any] | None,
    autocast_dtype: torch.dtype | None,
    quality: dict[str, Any],
) -> dict[str, Any]:
    row: dict[str, Any] = {}
    seq = study.data.max_length
    row["gflops"] = float(count_gflops(model, seq))
    task = get_task(study.task)
    # e.g. quant, exit_curve
    row.update(stage_columns(record, model, splits, {**quality, **row}, task))
    row["params"] = int(count_params(model))
    row["params_nonzero"] = int(count_params_nonzero(model))
    row["weights_bytes"] = int(weights_bytes(model))
    row["student_layers"] = int(num_layers(getattr(model, "backbone", model)))
    row["student_shape"] = shape_text(getattr(model, "config", None), row["student_layers"])
    test = splits["test"]
    bs = study.measure.batch_size
    batch = {
        "input_ids": torch.as_tensor(test["input_ids"][:bs], device=device),
        "attention_mask": torch.as_tensor(test["attention_mask"][:bs], device=device),
    }
    with autocast(device, autocast_dtype):
        lat = measure_latency(
            model, batch, repeats=study.measure.latency_repeats, warmup=study.measure.warmup
        )
    row.update({k: v if isinstance(v, str) else float(v) for k, v in lat.items()})
    if hasattr(model, "last_layers_executed"):  # the timed forwards' real average depth
        row["exit_avg_layers"] = float(model.last_layers_executed)
    row["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    row["precision"] = precision_name(autocast_dtype)
    return row
