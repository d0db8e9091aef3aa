"""Compute several importance methods in one process, sharing passes where methods allow.

This is the in-process engine (no Ray): a notebook can call :func:`score_methods` directly;
:mod:`engine.importance.runner` calls it inside each Ray actor on that actor's shard.

Work sharing: methods that belong to the same shared pass (e.g. fisher, fisher_mask,
gradient and taylor → one backward per batch; block_influence, attention and mutual_info →
one forward) run as one pass. Derived methods (hybrid, consensus) are combined from their
components' per-batch vectors, which are computed once even if also requested directly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import nullcontext

import torch
from torch import nn

from engine.importance.base import (
    DERIVED,
    IMPORTANCE,
    SHARED_PASSES,
    Batch,
    LayerScores,
    shared_pass_of,
)
from engine.importance.config import ImportanceConfig

__all__ = ["expand_methods", "score_methods", "split_batches"]

log = logging.getLogger(__name__)


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
        n = int(b["labels"].shape[0])
        if n < 2:
            out.append(b)
            continue
        h = (n + 1) // 2
        out.append({k: v[:h] for k, v in b.items()})
        out.append({k: v[h:] for k, v in b.items()})
    return out


def _run_group(
    model: nn.Module, batches: Sequence[Batch], cfg: ImportanceConfig, names: frozenset[str]
) -> dict[str, LayerScores]:
    """One shared pass (or one method on its own), halving batches on CUDA OOM."""
    while True:
        try:
            torch.manual_seed(cfg.seed)
            p = shared_pass_of(next(iter(names)))
            if p is not None:
                return p.run(model, batches, cfg, names)
            (name,) = names
            return {name: IMPORTANCE.get(name)(model, batches, cfg=cfg)}
        except torch.OutOfMemoryError:
            if all(int(b["labels"].shape[0]) < 2 for b in batches):
                raise
            torch.cuda.empty_cache()
            batches = split_batches(batches)
            log.warning(
                "CUDA out of memory in %s; retrying with batches halved (%d batches, largest %d)",
                sorted(names),
                len(batches),
                max(int(b["labels"].shape[0]) for b in batches),
            )


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

    device = next(model.parameters()).device
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and cfg.autocast_bf16
        else nullcontext()
    )
    was_training = model.training
    model.eval()
    results: dict[str, LayerScores] = {}
    try:
        with autocast:
            for names in groups:
                results.update(_run_group(model, batches, cfg, names))
    finally:
        model.train(was_training)
    if derive:
        for m in wanted:
            if m in DERIVED:
                results[m] = DERIVED[m].combine(results, cfg)
    return {m: results[m] for m in wanted if m in results}
