"""The importance contract: ``score(model, batches, *, cfg) -> LayerScores``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from engine.registry import Registry

__all__ = ["IMPORTANCE", "Batch", "LayerScores", "ScoreFn", "register_importance"]

# One calibration batch: {"input_ids": LongTensor[B, S], "attention_mask": LongTensor[B, S],
# "labels": LongTensor[B]}, already on the model's device.
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LayerScores:
    """One float per transformer layer; higher = more important to keep.

    Attributes:
        method: the registered method name.
        scores: per-layer scores, index = 0-based layer.
        ci_low / ci_high: optional bootstrap confidence bounds per layer.
        num_examples: how many calibration examples the scores are based on.
        per_batch: optional per-batch score vectors (for bootstrap CIs and actor merging).
    """

    method: str
    scores: tuple[float, ...]
    num_examples: int
    ci_low: tuple[float, ...] | None = None
    ci_high: tuple[float, ...] | None = None
    per_batch: tuple[tuple[float, ...], ...] | None = field(default=None, repr=False)

    def ranks(self) -> tuple[int, ...]:
        """0 = most important; ties broken by layer index (stable)."""
        order = sorted(range(len(self.scores)), key=lambda i: (-self.scores[i], i))
        rank = [0] * len(order)
        for r, i in enumerate(order):
            rank[i] = r
        return tuple(rank)

    def top_k(self, k: int) -> list[int]:
        """The k most important layers, in forward order."""
        r = self.ranks()
        return sorted(i for i in range(len(r)) if r[i] < k)


ScoreFn = Callable[..., LayerScores]  # score(model: nn.Module, batches: Sequence[Batch], *, cfg)

IMPORTANCE: Registry[ScoreFn] = Registry("importance method")


def register_importance(name: str) -> Callable[[ScoreFn], ScoreFn]:
    return IMPORTANCE.register(name)


