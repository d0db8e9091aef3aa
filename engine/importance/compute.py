"""Compute several importance methods in one process, sharing passes where methods allow.

This is the in-process engine (no Ray): a notebook can call :func:`score_methods` directly;
:mod:`engine.importance.runner` calls it inside each Ray actor on that actor's shard.

Precision: on CUDA, groups made only of :data:`BF16_SAFE` methods run under bf16 autocast
(``cfg.autocast_bf16``); the rest in float32. Out of memory: the group is rerun with every
batch halved, logged, until it fits.

Work sharing: methods that belong to the same shared pass (e.g. fisher, fisher_mask,
gradient and taylor → one backward per batch; block_influence, attention and mutual_info →
one forward) run as one pass. Derived methods (hybrid, consensus) are combined from their
components' per-batch vectors, which are computed once even if also requested directly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from engine.device import is_out_of_memory
from engine.importance.base import (
    DERIVED,
    IMPORTANCE,
    SHARED_PASSES,
    Batch,
    LayerScores,
    shared_pass_of,
)
from engine.importance.config import ImportanceConfig

__all__ = [
    "BF16_SAFE",
    "expand_methods",
    "is_out_of_memory",
    "score_methods",
    "split_batches",
    "uses_bf16",
]

log = logging.getLogger(__name__)

# Methods that may run under bf16 autocast on CUDA: the shared backward pass, whose scores
# are sums of squares / absolute values of gradients of float32 parameters (the loss itself
# is taken in float32), robust to bf16's 3 significant digits. Every other method scores a
# *difference* of two forward passes or of nearby states (ablation, patching, MC dropout,
# block influence's 1 − cos, conductance's path integral, MI of projected states), where
# bf16 rounding noise can exceed a weak layer's true effect: they run in float32.
BF16_SAFE = frozenset({"fisher", "fisher_mask", "gradient", "taylor"})


def expand_methods(methods: Iterable[str], cfg: ImportanceConfig) -> tuple[str, ...]:
    """Requested methods plus the components of derived ones, validated, in a stable order.

    Raises:
        UnknownNameError: a name is not registered (the message lists the known names).
    """
    out: list[str] = []
    for m in methods:
        IMPORTANCE.get(m)
        if m in DERIVED:
            for c in DERIVED[m].components(cfg):
                IMPORTANCE.get(c)
                if c in DERIVED:
                    raise ValueError(f"derived method {m!r} cannot use derived method {c!r}")
                out.append(c)
        out.append(m)
    return tuple(dict.fromkeys(out))


def split_batches(batches: Sequence[Batch]) -> list[Batch]:
    """Each batch cut in two halves (a batch of one stays whole)."""
    out: list[Batch] = []
    for b in batches:
        n = int(b["input_ids"].shape[0])
        if n < 2:
            out.append(b)
            continue
        h = (n + 1) // 2
        out.append({k: v[:h] for k, v in b.items()})
        out.append({k: v[h:] for k, v in b.items()})
    return out


def _run_group(
    model: nn.Module, batches: Sequence[Batch], cfg: ImportanceConfig, names: frozenset[str]
) -> tuple[dict[str, LayerScores], Sequence[Batch]]:
    """One shared pass (or one method on its own); on out-of-memory every batch is halved and
    the whole group rerun (logged), until batches of one example still do not fit. Returns
    the scores and the batches they were computed on."""
    while True:
        try:
            torch.manual_seed(cfg.seed)
            with _autocast(model, cfg, names):
                p = shared_pass_of(next(iter(names)))
                if p is not None:
                    return p.run(model, batches, cfg, names), batches
                (name,) = names
                return {name: IMPORTANCE.get(name)(model, batches, cfg=cfg)}, batches
        except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(err) or all(int(b["input_ids"].shape[0]) < 2 for b in batches):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            before = max(int(b["input_ids"].shape[0]) for b in batches)
            batches = split_batches(batches)
            log.warning(
                "out of memory in %s at batch size %d; retrying with batches halved "
                "(%d batches, largest %d): %s",
                sorted(names),
                before,
                len(batches),
                max(int(b["input_ids"].shape[0]) for b in batches),
                str(err).splitlines()[0] if str(err) else type(err).__name__,
            )


def uses_bf16(names: Iterable[str], device_type: str, cfg: ImportanceConfig) -> bool:
    """Whether a group of methods runs under bf16 autocast: only on CUDA, only when
    ``cfg.autocast_bf16``, and only if every method is in :data:`BF16_SAFE`."""
    return device_type == "cuda" and cfg.autocast_bf16 and all(n in BF16_SAFE for n in names)


def _autocast(
    model: nn.Module, cfg: ImportanceConfig, names: frozenset[str]
) -> AbstractContextManager[object]:
    device = next(model.parameters()).device
    if uses_bf16(names, device.type, cfg):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def score_methods(
    model: nn.Module,
    batches: Sequence[Batch],
    methods: Iterable[str],
    cfg: ImportanceConfig,
    *,
    derive: bool = True,
) -> dict[str, LayerScores]:
    """Score ``methods`` on ``batches`` (already on the model's device), in eval mode.

    With ``derive=False`` derived methods are skipped (their components are still computed),
    so a caller can merge per-batch results first and combine later.
    """
    wanted = expand_methods(methods, cfg)
    base = [m for m in wanted if m not in DERIVED]
    groups: list[frozenset[str]] = []
    for p in SHARED_PASSES.values():
        members = frozenset(m for m in base if m in p.methods)
        if members:
            groups.append(members)
    groups += [frozenset({m}) for m in base if shared_pass_of(m) is None]

    was_training = model.training
    model.eval()
    results: dict[str, LayerScores] = {}
    try:
        # Every method must see the same calibration batches (derived methods combine them
        # batch by batch): when a group had to halve them, the groups already done are rerun
        # on the halved batches.
        current: Sequence[Batch] = batches
        pending, done = list(groups), []
        while pending:
            names = pending.pop(0)
            out, used = _run_group(model, current, cfg, names)
            results.update(out)
            if len(used) != len(current):
                current = used
                pending, done = [*done, *pending], []
            done.append(names)
    finally:
        model.train(was_training)
    if derive:
        for m in wanted:
            if m in DERIVED:
                results[m] = DERIVED[m].combine(results, cfg)
    return {m: results[m] for m in wanted if m in results}
