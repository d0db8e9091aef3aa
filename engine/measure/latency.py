"""Forward-pass latency, throughput and peak memory of one model on one batch.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` after a reset (bytes held by
tensors during the timed forwards). On CPU there is no allocator counter, so we read the
process's peak resident set size (Linux ``VmHWM``) after resetting it through
``/proc/self/clear_refs`` and subtract the RSS before the timed forwards: the extra memory
the forwards touched. Where that reset is not possible (non-Linux, restricted /proc) we fall
back to the growth of ``resource.getrusage(...).ru_maxrss``, a lower bound that is 0 when the
process peaked higher earlier.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["measure_latency"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset Linux's peak-RSS watermark (``echo 5 > /proc/self/clear_refs``)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _ru_maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class _CpuPeak:
    """Peak extra resident memory over a block (see the module docstring)."""

    def __enter__(self) -> _CpuPeak:
        self.exact = _reset_peak_rss() and _status_bytes("VmRSS") is not None
        self.before = _status_bytes("VmRSS") if self.exact else _ru_maxrss_bytes()
        self.peak_bytes = 0
        return self

    def __exit__(self, *exc: object) -> None:
        after = _status_bytes("VmHWM") if self.exact else _ru_maxrss_bytes()
        self.peak_bytes = max(0, int(after or 0) - int(self.before or 0))


def measure_latency(
    model: nn.Module, batch: dict[str, torch.Tensor], *, repeats: int, warmup: int
) -> dict[str, float]:
    """Time ``repeats`` forwards of ``model(**batch)`` after ``warmup`` untimed ones.

    ``labels`` in ``batch`` is dropped (a loss is not part of inference). Runs under
    ``torch.inference_mode()``; on CUDA each timed forward is bracketed by synchronisations.

    Returns:
        ``latency_ms_p50``, ``latency_ms_p95`` (per batch), ``throughput_per_s`` (examples/s
        at this batch size, from the median) and ``peak_mem_bytes``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    inputs: dict[str, Any] = {k: v for k, v in batch.items() if k != "labels"}
    if not inputs:
        raise ValueError("batch has no model inputs")
    batch_size = int(next(iter(inputs.values())).shape[0])
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    was_training = model.training
    model.eval()
    times_s: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(**inputs)
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            cpu_peak = _CpuPeak()
            with cpu_peak:
                for _ in range(repeats):
                    if cuda:
                        torch.cuda.synchronize(device)
                    t0 = time.perf_counter()
                    model(**inputs)
                    if cuda:
                        torch.cuda.synchronize(device)
                    times_s.append(time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated(device) if cuda else cpu_peak.peak_bytes
    finally:
        model.train(was_training)
    ms = np.asarray(times_s) * 1e3
    p50 = float(np.percentile(ms, 50))
    return {
        "latency_ms_p50": p50,
        "latency_ms_p95": float(np.percentile(ms, 95)),
        "throughput_per_s": batch_size / (p50 / 1e3),
        "peak_mem_bytes": float(peak),
    }
