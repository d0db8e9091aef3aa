"""The latency phase: every saved model timed under one stated condition, after the sweep.

A latency taken inside a Tune trial times the model *and* whatever trains beside it on the
same cores: in the shipped ``ablation`` run two identical 2-layer students (same GFLOPs)
measured p50 198 ms and 336 ms at batch 32 (issue 12). So the public latency columns
(``latency_ms_p50``, ``latency_ms_p95``, ``throughput_per_s``) come from this phase instead:
once every trial has finished, one process reloads each trial's student from
``models/<trial_id>/`` (:func:`engine.compress.save.load_compressed`) and times them all,
one forward at a time, on the same batch (the first ``measure.batch_size`` test examples),
with the same ``measure.warmup`` and ``measure.latency_repeats`` and the same torch thread
count (the trial's: ``threads_per_trial`` or ``resources.cpus``). The models take turns, one
timed forward each per round (:func:`engine.measure.interleaved_latency`), so load from
outside the study that comes and goes during the phase hits each model alike; timed one
after the other, two identical tiny models differed by up to 2.1× on a shared 2-core
machine. The teacher is timed with them (in every group, when a large study is timed in
groups that fit in memory), so its row is comparable with the students'.

Rows say what they hold: ``latency_phase`` (``serial``, or ``none`` with ``latency_reason``
when a row has no figure: a failed or stopped trial, ``measure.save_models=false``, a model
directory the measuring node cannot read), ``latency_threads`` and ``latency_device``. What
the trial measured itself is kept only as ``latency_in_trial_ms_p50``/``_p95``.

Plain functions, no Ray: :func:`time_models` runs in a notebook; the sweep runs it as one Ray
task that holds a whole node (:mod:`engine.sweep`), so nothing else of the study shares it.
Example::

    setup = timing_setup(study, splits["test"])
    phase = time_models([ToTime("abc_00001", "ok", "run/models/abc_00001")], setup)
    rows = apply_latency(rows, phase)
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.config import StudyConfig
from sweepcore.rundir import TEACHER_ID

__all__ = [
    "IN_TRIAL_COLUMNS",
    "LATENCY_COLUMNS",
    "LatencyPhase",
    "TimingSetup",
    "ToTime",
    "apply_latency",
    "load_for_timing",
    "time_models",
    "timing_setup",
    "untimed_phase",
]

LATENCY_COLUMNS = ("latency_ms_p50", "latency_ms_p95", "throughput_per_s")
# where a trial's own figures go (throughput is batch / p50, so it is not kept twice)
IN_TRIAL_COLUMNS = {
    "latency_ms_p50": "latency_in_trial_ms_p50",
    "latency_ms_p95": "latency_in_trial_ms_p95",
}


@dataclass(frozen=True)
class TimingSetup:
    """The one condition every model is timed under."""

    batch: dict[str, np.ndarray]  # input_ids, attention_mask: the first batch_size test rows
    repeats: int
    warmup: int
    threads: int
    cuda: bool  # time on the GPU (when there is one); dynamic int8 always runs on CPU

    def describe(self) -> dict[str, Any]:
        return {
            "batch_size": len(self.batch["input_ids"]),
            "seq_len": int(self.batch["input_ids"].shape[1]),
            "repeats": self.repeats,
            "warmup": self.warmup,
            "threads": self.threads,
        }


@dataclass(frozen=True)
class ToTime:
    """One row to time: the trial, its status and where it saved its student."""

    trial_id: str
    status: str | None
    model_dir: str | None


@dataclass
class LatencyPhase:
    """Per trial id the latency columns; ``info`` describes the phase (for the manifest)."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def timing_setup(study: StudyConfig, test: dict[str, np.ndarray]) -> TimingSetup:
    """The study's measurement settings: batch from the test split, trial thread count."""
    bs = study.measure.batch_size
    return TimingSetup(
        batch={k: np.asarray(test[k][:bs]) for k in ("input_ids", "attention_mask")},
        repeats=study.measure.latency_repeats,
        warmup=study.measure.warmup,
        threads=study.threads_per_trial or max(1, int(study.resources.cpus)),
        cuda=study.resources.gpus > 0,
    )


def _untimed(reason: str) -> dict[str, Any]:
    return {
        **dict.fromkeys(LATENCY_COLUMNS, math.nan),
        "latency_phase": "none",
        "latency_reason": reason,
        "latency_threads": None,
        "latency_device": None,
    }


def _why_not(item: ToTime) -> str | None:
    """Why a row cannot be timed, or None when its saved model should be there."""
    if item.status != "ok":
        return f"trial {item.status or 'unfinished'}: no final model to time"
    if not item.model_dir:
        return "measure.save_models=false: no saved model to reload and time"
    if not Path(item.model_dir, "config.json").is_file():
        return f"no saved model at {item.model_dir} on the measuring node ({platform.node()})"
    return None


def _place(model: nn.Module, record: dict[str, Any], cuda: bool) -> tuple[nn.Module, torch.device]:
    """The device a model is timed on, as in :func:`engine.assess.assess`."""
    from engine.compress.base import measure_placement

    device = torch.device("cuda" if cuda and torch.cuda.is_available() else "cpu")
    place = measure_placement(record, model, device)  # e.g. bitsandbytes layers stay put
    return (model.to(place.device) if place.move else model), place.device


@dataclass
class _Loaded:
    trial_id: str
    model: nn.Module
    batch: dict[str, torch.Tensor]
    device: torch.device


def load_for_timing(model_dir: str | Path, cuda: bool) -> tuple[nn.Module, torch.device]:
    """A saved student as the phase times it: reloaded with
    :func:`~engine.compress.save.load_compressed` (re-quantized, heads re-pruned, exit heads
    attached) and placed on its timing device."""
    from engine.compress.save import MANIFEST, load_compressed

    record = json.loads(Path(model_dir, MANIFEST).read_text()).get("record") or {}
    return _place(load_compressed(model_dir), record, cuda)


def _load(trial_id: str, model_dir: str, setup: TimingSetup) -> _Loaded:
    """Reload a saved student and run it once (a model that cannot run fails here, alone,
    not in the middle of a group's timing)."""
    return _ready(trial_id, *load_for_timing(model_dir, setup.cuda), setup)


def _ready(trial_id: str, model: nn.Module, device: torch.device, setup: TimingSetup) -> _Loaded:
    batch = {k: torch.as_tensor(v, device=device) for k, v in setup.batch.items()}
    model.eval()
    with torch.inference_mode():
        model(**batch)
    return _Loaded(trial_id, model, batch, device)


def _timed(lat: dict[str, float], device: torch.device) -> dict[str, Any]:
    return {
        **{k: float(lat[k]) for k in LATENCY_COLUMNS},
        "latency_phase": "serial",
        "latency_reason": None,
        "latency_threads": torch.get_num_threads(),
        "latency_device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def time_models(
    items: list[ToTime],
    setup: TimingSetup,
    teacher: nn.Module | None = None,
    *,
    resident_bytes: int = 4 * 2**30,
) -> LatencyPhase:
    """Reload every saved model in ``items`` and time them all under ``setup``, in turns
    (:func:`engine.measure.interleaved_latency`), so outside load that comes and goes hits
    every model alike.

    Models are held in memory together up to ``resident_bytes`` of weights; a study with more
    is timed in groups, one after the other, and the teacher (when given) is timed in every
    group: its row holds the first group's figure, ``info["teacher_p50_by_group"]`` all of
    them (how far the machine drifted between groups). A model that cannot be reloaded or
    run gets NaN and its reason; the others are still timed.
    """
    from engine.measure import interleaved_latency, weights_bytes

    previous = torch.get_num_threads()
    torch.set_num_threads(setup.threads)
    phase = LatencyPhase(
        info={
            "phase": "serial",
            "node": platform.node(),
            **setup.describe(),
            "resident_bytes": resident_bytes,
            "started": dt.datetime.now(dt.UTC).isoformat(),
        }
    )
    anchor = None
    if teacher is not None:
        try:
            anchor = _ready(TEACHER_ID, *_place(teacher, {}, setup.cuda), setup)
        except Exception as e:
            phase.rows[TEACHER_ID] = _untimed(f"first forward failed: {type(e).__name__}: {e}")
    group: list[_Loaded] = []
    teacher_p50: list[float] = []
    groups = 0
    t0 = time.perf_counter()

    def time_group() -> None:
        nonlocal groups
        runs = ([anchor] if anchor is not None else []) + group
        if not runs:
            return
        groups += 1
        try:
            lats = interleaved_latency(
                [(r.model, r.batch) for r in runs], repeats=setup.repeats, warmup=setup.warmup
            )
        except Exception as e:  # a model that ran once but fails in turns: the group has none
            lats = None
            reason = f"timing failed in its group: {type(e).__name__}: {e}"
        for i, r in enumerate(runs):
            row = _timed(lats[i], r.device) if lats else _untimed(reason)
            if r is anchor:
                teacher_p50.append(row["latency_ms_p50"])
                phase.rows.setdefault(TEACHER_ID, row)
            else:
                phase.rows[r.trial_id] = row
        group.clear()
        gc.collect()

    try:
        held = 0
        for item in items:
            reason = _why_not(item)
            if reason is not None:
                phase.rows[item.trial_id] = _untimed(reason)
                continue
            try:
                loaded = _load(item.trial_id, str(item.model_dir), setup)
            except Exception as e:  # one unreadable model does not stop the phase
                phase.rows[item.trial_id] = _untimed(
                    f"reload or first forward failed: {type(e).__name__}: {e}"
                )
                continue
            size = weights_bytes(loaded.model)
            if group and held + size > resident_bytes:
                time_group()
                held = 0
            group.append(loaded)
            held += size
        if group or TEACHER_ID not in phase.rows:
            time_group()
    finally:
        torch.set_num_threads(previous)
    timed = [r for r in phase.rows.values() if r["latency_phase"] == "serial"]
    phase.info.update(
        groups=groups,
        teacher_p50_by_group=teacher_p50,
        timed=len(timed),
        untimed=len(phase.rows) - len(timed),
        devices=sorted({str(r["latency_device"]) for r in timed}),
        seconds=time.perf_counter() - t0,
        finished=dt.datetime.now(dt.UTC).isoformat(),
    )
    return phase


def untimed_phase(trial_ids: list[str], reason: str) -> LatencyPhase:
    """A phase that timed nothing (e.g. no node could be held): every row says why."""
    return LatencyPhase(
        rows={t: _untimed(reason) for t in trial_ids},
        info={"phase": "none", "reason": reason, "timed": 0, "untimed": len(trial_ids)},
    )


def apply_latency(rows: list[dict[str, Any]], phase: LatencyPhase) -> list[dict[str, Any]]:
    """``rows`` with the trials' own latency moved to ``latency_in_trial_*`` and the public
    columns filled from ``phase`` (NaN with a reason for a row it does not cover)."""
    out = []
    for row in rows:
        row = dict(row)
        for public, in_trial in IN_TRIAL_COLUMNS.items():
            if public in row:
                row[in_trial] = row.pop(public)
        row.pop("throughput_per_s", None)
        tid = str(row.get("trial_id"))
        row.update(phase.rows.get(tid) or _untimed("not part of the latency phase"))
        out.append(row)
    return out
