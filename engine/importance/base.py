"""The importance contract: ``score(model, batches, *, cfg) -> LayerScores``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from engine.registry import Registry

if TYPE_CHECKING:
    from engine.importance.config import ImportanceConfig

__all__ = [
    "DERIVED",
    "IMPORTANCE",
    "SHARED_PASSES",
    "Batch",
    "DerivedMethod",
    "LayerScores",
    "ScoreFn",
    "SharedPass",
    "bootstrap_ci",
    "from_per_batch",
    "merge_scores",
    "rank_normalise",
    "register_derived",
    "register_importance",
    "register_shared_pass",
    "shared_pass_of",
]

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
        batch_sizes: examples in each ``per_batch`` entry; ``scores`` is their example-weighted
            mean, so results merged from several actors equal a single actor's.
    """

    method: str
    scores: tuple[float, ...]
    num_examples: int
    ci_low: tuple[float, ...] | None = None
    ci_high: tuple[float, ...] | None = None
    per_batch: tuple[tuple[float, ...], ...] | None = field(default=None, repr=False)
    batch_sizes: tuple[int, ...] | None = field(default=None, repr=False)

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

    def rank_normalised(self) -> tuple[float, ...]:
        """Scores mapped to [0, 1] by rank: 1 = most important, 0 = least (see rank_normalise)."""
        return tuple(float(v) for v in rank_normalise(self.scores))


ScoreFn = Callable[..., LayerScores]  # score(model: nn.Module, batches: Sequence[Batch], *, cfg)

IMPORTANCE: Registry[ScoreFn] = Registry("importance method")


def register_importance(name: str) -> Callable[[ScoreFn], ScoreFn]:
    return IMPORTANCE.register(name)


# --- per-batch scores: the merge rule that makes actor splits exact -------------------------


def from_per_batch(
    method: str, per_batch: Sequence[Sequence[float]], batch_sizes: Sequence[int]
) -> LayerScores:
    """Build LayerScores whose ``scores`` is the example-weighted mean of ``per_batch`` rows."""
    if len(per_batch) != len(batch_sizes) or not per_batch:
        raise ValueError(
            f"{method}: need one batch size per per-batch vector and at least one batch "
            f"(got {len(per_batch)} vectors, {len(batch_sizes)} sizes)"
        )
    mat = np.asarray(per_batch, dtype=np.float64)
    w = np.asarray(batch_sizes, dtype=np.float64)
    mean = (mat * w[:, None]).sum(axis=0) / w.sum()
    return LayerScores(
        method=method,
        scores=tuple(float(v) for v in mean),
        num_examples=int(w.sum()),
        per_batch=tuple(tuple(float(v) for v in row) for row in mat),
        batch_sizes=tuple(int(b) for b in batch_sizes),
    )


def merge_scores(parts: Sequence[LayerScores]) -> LayerScores:
    """Concatenate the per-batch vectors of ``parts`` (in the given order) and re-average."""
    if not parts:
        raise ValueError("merge_scores needs at least one LayerScores")
    rows: list[tuple[float, ...]] = []
    sizes: list[int] = []
    for p in parts:
        if p.per_batch is None or p.batch_sizes is None:
            raise ValueError(f"{p.method}: cannot merge scores without per_batch/batch_sizes")
        if p.method != parts[0].method:
            raise ValueError(f"cannot merge {p.method!r} into {parts[0].method!r}")
        rows.extend(p.per_batch)
        sizes.extend(p.batch_sizes)
    return from_per_batch(parts[0].method, rows, sizes)


def bootstrap_ci(
    scores: LayerScores, *, samples: int = 1000, level: float = 0.95, seed: int = 0
) -> LayerScores:
    """Percentile bootstrap over calibration batches (resampled with replacement, each
    resample's score the example-weighted mean, as for the point estimate). Returns a copy with
    ``ci_low``/``ci_high`` set; unchanged when there are fewer than 2 batches.
    """
    if scores.per_batch is None or scores.batch_sizes is None or len(scores.per_batch) < 2:
        return scores
    mat = np.asarray(scores.per_batch, dtype=np.float64)
    w = np.asarray(scores.batch_sizes, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(w), size=(samples, len(w)))
    counts = np.zeros((samples, len(w)))
    np.add.at(counts, (np.arange(samples)[:, None], idx), 1.0)
    weights = counts * w[None, :]
    boot = weights @ mat / weights.sum(axis=1, keepdims=True)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha], axis=0)
    return LayerScores(
        method=scores.method,
        scores=scores.scores,
        num_examples=scores.num_examples,
        ci_low=tuple(float(v) for v in low),
        ci_high=tuple(float(v) for v in high),
        per_batch=scores.per_batch,
        batch_sizes=scores.batch_sizes,
    )


def rank_normalise(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Map a score vector to [0, 1] by rank: the best layer 1, the worst 0, ties averaged.

    With one layer the result is [1.0].
    """
    from scipy.stats import rankdata

    v = np.asarray(values, dtype=np.float64)
    if v.size == 1:
        return np.ones(1)
    return (rankdata(v, method="average") - 1.0) / (v.size - 1.0)


# --- shared passes and derived methods: how the engine avoids repeating work ----------------

# run(model, batches, cfg, wanted) -> {method: LayerScores} for the wanted subset of ``methods``
PassFn = Callable[[nn.Module, Sequence[Batch], "ImportanceConfig", frozenset[str]], dict[str, Any]]


@dataclass(frozen=True)
class SharedPass:
    """Several methods computed from one pass over each batch (e.g. one backward pass feeds
    fisher, gradient and taylor). ``methods`` grows as method modules join the pass."""

    name: str
    methods: set[str]
    run: PassFn

    def join(self, method: str) -> None:
        """Declare that ``method`` is computed by this pass."""
        owner = shared_pass_of(method)
        if owner is not None:
            raise ValueError(f"method {method!r} already belongs to shared pass {owner.name!r}")
        self.methods.add(method)


SHARED_PASSES: dict[str, SharedPass] = {}


def register_shared_pass(name: str) -> Callable[[PassFn], PassFn]:
    def deco(fn: PassFn) -> PassFn:
        if name in SHARED_PASSES:
            raise ValueError(f"shared pass {name!r} is already registered")
        SHARED_PASSES[name] = SharedPass(name, set(), fn)
        return fn

    return deco


def shared_pass_of(method: str) -> SharedPass | None:
    """The shared pass that computes ``method``, if any."""
    for p in SHARED_PASSES.values():
        if method in p.methods:
            return p
    return None


@dataclass(frozen=True)
class DerivedMethod:
    """A method computed from other methods' per-batch vectors (hybrid, consensus)."""

    name: str
    components: Callable[[ImportanceConfig], tuple[str, ...]]
    combine: Callable[[Mapping[str, LayerScores], ImportanceConfig], LayerScores]


DERIVED: dict[str, DerivedMethod] = {}


def register_derived(
    name: str,
    components: Callable[[ImportanceConfig], tuple[str, ...]],
    combine: Callable[[Mapping[str, LayerScores], ImportanceConfig], LayerScores],
) -> None:
    if name in DERIVED:
        raise ValueError(f"derived method {name!r} is already registered")
    DERIVED[name] = DerivedMethod(name, components, combine)
