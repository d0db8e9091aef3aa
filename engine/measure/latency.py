"""Forward-pass latency, throughput and peak memory of one model on one batch.

Peak memory (``peak_mem_bytes``) = the bytes of the model's weights (:func:`weights_bytes`,
quantized payloads included) + ``peak_activation_bytes``, the largest amount of tensor memory
one forward holds *above what was allocated before it* (activations, attention scores,
kernel workspaces). How the activation peak was taken is the ``peak_mem_method`` column:

* ``cuda_max_allocated`` — ``torch.cuda.max_memory_allocated`` after a reset, minus
  ``memory_allocated`` before the forward (so other tensors on the GPU, e.g. the teacher, do
  not count);
* ``cpu_profiler`` — one extra, untimed forward under ``torch.profiler`` with
  ``profile_memory=True``: every allocation and free of PyTorch's CPU allocator is an event
  with signed ``nbytes``; the running sum in time order peaks at the answer. This is the CPU
  counterpart of ``max_memory_allocated`` and does not depend on the process's history;
* ``unavailable`` — the profiler could not run (e.g. another profiler is active):
  ``peak_activation_bytes`` and ``peak_mem_bytes`` are NaN.

Why not the resident set size: resetting Linux's ``VmHWM`` through ``/proc/self/clear_refs``
works in this container, but a forward's tensors are served from heap pages that earlier
work (warm-up, training) already made resident and glibc did not return, so the RSS hardly
moves: after a few training steps it grew by 8 KiB for a batch whose activations take MBs,
which is why the previous RSS-based measure read 0 in trials.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.measure.cost import weights_bytes

__all__ = ["forward_peak_bytes", "interleaved_latency", "measure_latency"]


def _cpu_profiler_peak(model: nn.Module, inputs: dict[str, Any]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(**inputs)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    if not events:
        raise RuntimeError("the profiler recorded no memory events")
    running = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        running += int(e.nbytes())  # + on allocation, - on free
        peak = max(peak, running)
    return peak


def forward_peak_bytes(model: nn.Module, inputs: dict[str, Any]) -> tuple[float, str]:
    """(peak tensor bytes one ``model(**inputs)`` holds above the bytes allocated before it,
    method); call under ``torch.inference_mode()``. NaN with ``unavailable`` when the CPU
    profiler cannot run."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        model(**inputs)
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before), "cuda_max_allocated"
    try:
        return float(_cpu_profiler_peak(model, inputs)), "cpu_profiler"
    except RuntimeError:
        return math.nan, "unavailable"


def _timed_forward(model: nn.Module, inputs: dict[str, Any], device: torch.device) -> float:
    """Seconds one ``model(**inputs)`` takes, bracketed by synchronisations on CUDA."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    model(**inputs)
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def measure_latency(
    model: nn.Module, batch: dict[str, torch.Tensor], *, repeats: int, warmup: int
) -> dict[str, Any]:
    """Time ``repeats`` forwards of ``model(**batch)`` after ``warmup`` untimed ones, then
    measure one more forward's peak memory (see the module docstring).

    ``labels`` in ``batch`` is dropped (a loss is not part of inference). Runs under
    ``torch.inference_mode()``; on CUDA each timed forward is bracketed by synchronisations.

    Returns:
        ``latency_ms_p50``, ``latency_ms_p95`` (per batch), ``throughput_per_s`` (examples/s
        at this batch size, from the median), ``peak_mem_bytes``, ``peak_activation_bytes``
        and ``peak_mem_method`` (a string).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    inputs: dict[str, Any] = {k: v for k, v in batch.items() if k != "labels"}
    if not inputs:
        raise ValueError("batch has no model inputs")
    batch_size = int(next(iter(inputs.values())).shape[0])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    times_s: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(**inputs)
            for _ in range(repeats):
                times_s.append(_timed_forward(model, inputs, device))
            activations, method = forward_peak_bytes(model, inputs)
    finally:
        model.train(was_training)
    ms = np.asarray(times_s) * 1e3
    p50 = float(np.percentile(ms, 50))
    return {
        "latency_ms_p50": p50,
        "latency_ms_p95": float(np.percentile(ms, 95)),
        "throughput_per_s": batch_size / (p50 / 1e3),
        "peak_mem_bytes": float(weights_bytes(model)) + activations,
        "peak_activation_bytes": activations,
        "peak_mem_method": method,
    }


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if not inputs:
        raise ValueError("batch has no model inputs")
    return inputs


def interleaved_latency(
    runs: Sequence[tuple[nn.Module, dict[str, torch.Tensor]]], *, repeats: int, warmup: int
) -> list[dict[str, float]]:
    """Time several models, each on its batch, in turns: ``warmup`` untimed forwards of each,
    then ``repeats`` rounds in which every model runs one timed forward (the order within a
    round shuffled under a fixed seed, so no model always follows the same one).

    Why in turns: load from outside the measuring process comes and goes within a second, and
    timing one model after the other gives each a different stretch of it. On a shared 2-core
    machine the same tiny model's p50 over successive quarter seconds moved between 3.8 and
    9.7 ms, and two identical models timed one after the other differed by up to 2.1×; timed
    in turns, by 1.12×. Timing in turns exposes every model to the same load.

    Returns per model, in ``runs`` order: ``latency_ms_p50``, ``latency_ms_p95`` (per batch)
    and ``throughput_per_s`` (examples/s at its batch size, from the median).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    prepared = []
    for model, batch in runs:
        inputs = _model_inputs(batch)
        device = next(model.parameters()).device
        prepared.append((model, inputs, device, model.training))
        model.eval()
    times_s: list[list[float]] = [[] for _ in prepared]
    order = list(range(len(prepared)))
    shuffle = random.Random(0)
    try:
        with torch.inference_mode():
            for model, inputs, _, _ in prepared:
                for _ in range(warmup):
                    model(**inputs)
            for _ in range(repeats):
                shuffle.shuffle(order)
                for i in order:
                    model, inputs, device, _ = prepared[i]
                    times_s[i].append(_timed_forward(model, inputs, device))
    finally:
        for model, _, _, was_training in prepared:
            model.train(was_training)
    out = []
    for (_, inputs, _, _), t in zip(prepared, times_s, strict=True):
        ms = np.asarray(t) * 1e3
        p50 = float(np.percentile(ms, 50))
        batch_size = int(next(iter(inputs.values())).shape[0])
        out.append(
            {
                "latency_ms_p50": p50,
                "latency_ms_p95": float(np.percentile(ms, 95)),
                "throughput_per_s": batch_size / (p50 / 1e3),
            }
        )
    return out
