"""Where a trial, task or actor runs, in which precision, and what counts as out of memory.

**Device from what Ray assigned.** A worker started with ``num_gpus > 0`` (a Tune trial with
``resources.gpus``, the teacher's fine-tuning task, an importance actor with
``gpus_per_actor``) gets GPU ids from Ray (``ray.get_gpu_ids()``), and Ray sets
``CUDA_VISIBLE_DEVICES`` to them, so torch numbers them from ``cuda:0``. Fractional requests
(``gpus: 0.25``) give several workers the same id: they share that GPU. The engine therefore
runs on the first assigned GPU, at its position in ``CUDA_VISIBLE_DEVICES`` — never on
whatever ``torch.cuda.is_available()`` happens to show, which on a node with several GPUs
and ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`` would be another worker's GPU. Outside a
Ray worker (a notebook, the driver) a GPU request means the current CUDA device.

**Precision** (``resources.precision``): ``auto`` runs forwards under bf16 autocast where the
device supports it (CUDA with ``torch.cuda.is_bf16_supported()``) and float32 elsewhere;
``bf16`` asks for bf16 autocast on any device (CPU autocast too: slow, but it lets the path be
tested without a GPU); ``fp32`` never autocasts. Weights and optimizer state stay float32
(autocast casts per op), so checkpoints and saved students do not depend on it.

Example::

    device = worker_device(gpus=0.25)              # cuda:0 inside a trial given a GPU share
    dtype = autocast_dtype("auto", device)          # torch.bfloat16 on an H100, None on CPU
    with autocast(device, dtype):
        logits = model(**batch).logits
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch
from pydantic import Field

from engine.configbase import Section

__all__ = [
    "Precision",
    "ResourcesConfig",
    "autocast",
    "autocast_dtype",
    "choose_device",
    "is_out_of_memory",
    "precision_name",
    "ray_gpu_ids",
    "worker_device",
]

Precision = Literal["auto", "fp32", "bf16"]


class ResourcesConfig(Section):
    """Per-trial resources (fractions allowed: ``gpus: 0.25`` packs four trials on a GPU).

    ``precision``: ``auto`` = bf16 autocast where the trial's device supports it (a CUDA GPU
    with bf16), float32 elsewhere; ``bf16`` = bf16 autocast on any device; ``fp32`` = never
    (see :mod:`engine.device`). Applies to the teacher's fine-tuning and every trial.
    """

    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"


def ray_gpu_ids() -> list[str] | None:
    """The GPU ids Ray assigned to this worker (task or actor); ``None`` outside a Ray worker
    (no Ray, or the driver)."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    if ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    return [str(i) for i in ray.get_gpu_ids()]


def choose_device(
    gpus: float,
    assigned: Sequence[str] | None,
    *,
    cuda_available: bool,
    visible: str | None,
) -> torch.device:
    """The device for a worker that asked for ``gpus`` GPUs (a pure function of the facts).

    Args:
        gpus: the GPUs requested (0 = CPU, fractions share a GPU).
        assigned: ``ray_gpu_ids()``: Ray's ids for this worker, or None outside Ray.
        cuda_available: ``torch.cuda.is_available()``.
        visible: ``CUDA_VISIBLE_DEVICES`` (None when unset).

    Returns ``cpu`` when no GPU was asked for, none is usable, or Ray assigned none;
    ``cuda:<i>`` with ``i`` the first assigned id's position among the visible devices (its
    own number when Ray left ``CUDA_VISIBLE_DEVICES`` unset); ``cuda`` outside Ray.
    """
    if gpus <= 0 or not cuda_available:
        return torch.device("cpu")
    if assigned is None:
        return torch.device("cuda")
    if not assigned:
        return torch.device("cpu")
    first = str(assigned[0])
    order = [v.strip() for v in visible.split(",")] if visible else []
    return torch.device("cuda", order.index(first) if first in order else int(first))


def worker_device(gpus: float) -> torch.device:
    """:func:`choose_device` for this process (call it inside the Ray worker)."""
    return choose_device(
        gpus,
        ray_gpu_ids(),
        cuda_available=torch.cuda.is_available(),
        visible=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = float32, no autocast)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """The results' ``precision`` column: ``bf16`` or ``fp32``."""
    return "fp32" if dtype is None else str(dtype).removeprefix("torch.").replace("bfloat", "bf")


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    """``torch.autocast`` on ``device``'s type with ``dtype``, or a no-op for None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def is_out_of_memory(err: BaseException) -> bool:
    """A device out-of-memory error: ``torch.OutOfMemoryError`` (CUDA caching allocator) or
    a ``RuntimeError`` whose message says "out of memory" (cuBLAS/cuDNN workspaces, other
    backends)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
