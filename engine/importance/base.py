"""The importance contract: ``score(model, batches, *, cfg) -> LayerScores``."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from sweepcore.registry import Registry

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
    "from_per_example",
    "from_rows",
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
        per_batch: optional per-batch score vectors (for actor merging and derived methods).
        batch_sizes: examples in each ``per_batch`` entry; ``scores`` is their example-weighted
            mean, so results merged from several actors equal a single actor's.
        per_example: ``[N, L]`` per-example contributions, in batch order, for methods whose
            score is a mean over examples (``per_batch[j]`` is the mean of batch j's rows);
            None for methods defined on a whole batch (an estimator such as MI, a ratio of
            batch sums). The bootstrap resamples these rows when present.
        ci_unit: what the bootstrap resampled: ``"example"`` or ``"batch"`` (None: no CI).
        ci_units: how many units it resampled.
        ci_reliable: per layer, False when its interval cannot be trusted to reach the
            nominal coverage: ``ci_units`` below the configured minimum for the unit, or
            units too skewed for their count (Cochran's rule, see :func:`bootstrap_ci`).
    """

    method: str
    scores: tuple[float, ...]
    num_examples: int
    ci_low: tuple[float, ...] | None = None
    ci_high: tuple[float, ...] | None = None
    per_batch: tuple[tuple[float, ...], ...] | None = field(default=None, repr=False)
    batch_sizes: tuple[int, ...] | None = field(default=None, repr=False)
    per_example: tuple[tuple[float, ...], ...] | None = field(default=None, repr=False)
    ci_unit: str | None = None
    ci_units: int | None = None
    ci_reliable: tuple[bool, ...] | None = None

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


def _tuples(mat: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in mat)


def from_per_batch(
    method: str, per_batch: Sequence[Sequence[float]], batch_sizes: Sequence[int]
) -> LayerScores:
    """Build LayerScores whose ``scores`` is the example-weighted mean of ``per_batch`` rows
    (for methods defined on whole batches: no per-example contributions)."""
    if len(per_batch) != len(batch_sizes) or len(per_batch) == 0:
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
        per_batch=_tuples(mat),
        batch_sizes=tuple(int(b) for b in batch_sizes),
    )


def from_per_example(method: str, blocks: Sequence[np.ndarray]) -> LayerScores:
    """Build LayerScores from per-example contributions: one ``[B_j, L]`` array per batch.

    ``scores`` is the mean over all examples; ``per_batch`` holds each batch's mean (so actor
    merging and the derived methods work as for per-batch methods).
    """
    mats = [np.asarray(b, dtype=np.float64) for b in blocks]
    if not mats or any(m.ndim != 2 or m.shape[0] == 0 for m in mats):
        raise ValueError(f"{method}: per-example blocks must be non-empty [B, L] arrays")
    rows = np.concatenate(mats, axis=0)
    return LayerScores(
        method=method,
        scores=tuple(float(v) for v in rows.mean(axis=0)),
        num_examples=int(rows.shape[0]),
        per_batch=_tuples(np.stack([m.mean(axis=0) for m in mats])),
        batch_sizes=tuple(int(m.shape[0]) for m in mats),
        per_example=_tuples(rows),
    )


def from_rows(method: str, rows: Sequence[np.ndarray], batch_sizes: Sequence[int]) -> LayerScores:
    """Per-example LayerScores when every batch's row is a ``[B, L]`` array, per-batch ones
    when every row is an ``[L]`` vector (what a shared pass's reducers return)."""
    dims = {np.ndim(r) for r in rows}
    if dims == {2}:
        got = [int(np.shape(r)[0]) for r in rows]
        if got != [int(b) for b in batch_sizes]:
            raise ValueError(f"{method}: per-example rows {got} != batch sizes {list(batch_sizes)}")
        return from_per_example(method, rows)
    if dims == {1}:
        return from_per_batch(method, rows, batch_sizes)
    raise ValueError(f"{method}: rows must all be [B, L] or all [L] (got ndims {sorted(dims)})")


def merge_scores(parts: Sequence[LayerScores]) -> LayerScores:
    """Concatenate the per-batch (and per-example) rows of ``parts`` in order and re-average."""
    if not parts:
        raise ValueError("merge_scores needs at least one LayerScores")
    for p in parts:
        if p.per_batch is None or p.batch_sizes is None:
            raise ValueError(f"{p.method}: cannot merge scores without per_batch/batch_sizes")
        if p.method != parts[0].method:
            raise ValueError(f"cannot merge {p.method!r} into {parts[0].method!r}")
    if all(p.per_example is not None for p in parts):
        blocks, k = [], 0
        for p in parts:
            ex = np.asarray(p.per_example, dtype=np.float64)
            k = 0
            for b in p.batch_sizes or ():
                blocks.append(ex[k : k + b])
                k += b
        return from_per_example(parts[0].method, blocks)
    rows: list[tuple[float, ...]] = []
    sizes: list[int] = []
    for p in parts:
        rows.extend(p.per_batch or ())
        sizes.extend(p.batch_sizes or ())
    return from_per_batch(parts[0].method, rows, sizes)


def _weighted_mean(values: np.ndarray, weights: np.ndarray, axis: int = -1) -> np.ndarray:
    return (values * weights).sum(axis=axis) / weights.sum(axis=axis)


def bootstrap_ci(
    scores: LayerScores,
    *,
    samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    min_examples: int = 100,
    min_batches: int = 50,
) -> LayerScores:
    """BCa bootstrap interval of each layer's score (``scipy.stats.bootstrap``).

    What is resampled: the examples (``per_example`` rows, the score being their mean) when
    the method yields per-example contributions; otherwise the calibration batches (the
    score being the example-weighted mean of per-batch vectors, resampled as (vector, size)
    pairs). Returns the scores unchanged below 2 units.

    Each layer's interval is marked unreliable (``ci_reliable[layer] = False``) below
    ``min_examples`` examples or ``min_batches`` batches, and where its units are too skewed
    for their number: Cochran's rule for a mean (Sampling Techniques, 3rd ed., §2.15) asks
    for n > 25·G₁², G₁ the units' skewness (here the sample's, bias-corrected; a constant
    layer has an exact point interval and counts as unskewed).

    Seeded simulations (tests/engine/importance/test_base.py, nominal 95 %): χ²₃ per-example
    contributions covered 93.4 % at 50 examples, 94.2 % at 100, 94.6 % at 200, and at 100
    examples 87 % of the layers pass the skew rule; means of batches covered 87 % at 6
    batches, 93.5 % at 40, 94.1 % at 50. Log-normal (σ = 1) contributions cover only about
    92 % at 100–200 examples: there the skew rule marks 70–87 % of the layers unreliable.
    It cannot mark the rest: a sample that happens to miss the tail looks unskewed, and those
    intervals cover less (about 82–87 %), so heavy-tailed scores need more examples than the
    flag alone can show.
    """
    from scipy.stats import bootstrap

    if scores.per_example is not None:
        unit, data = "example", (np.asarray(scores.per_example, dtype=np.float64),)
        n, floor = data[0].shape[0], min_examples

        def stat(x: np.ndarray, axis: int = 0) -> np.ndarray:
            return x.mean(axis=axis)

        kwargs: dict[str, Any] = {"axis": 0}
    elif scores.per_batch is not None and scores.batch_sizes is not None:
        unit, floor = "batch", min_batches
        mat = np.asarray(scores.per_batch, dtype=np.float64).T  # [L, n]
        w = np.broadcast_to(np.asarray(scores.batch_sizes, dtype=np.float64), mat.shape)
        data, n = (mat, w), mat.shape[1]
        stat = _weighted_mean
        kwargs = {"axis": -1, "paired": True}
    else:
        return scores
    if n < 2:
        return scores
    mean = np.asarray(scores.scores, dtype=np.float64)
    spread = np.ptp(data[0], axis=kwargs["axis"])
    # BCa's jackknife needs spread; a layer whose contributions are all equal has a point CI
    with warnings.catch_warnings():  # degenerate (constant) layers: handled just below
        warnings.simplefilter("ignore")
        res = bootstrap(
            data,
            stat,
            n_resamples=samples,
            confidence_level=level,
            method="BCa",
            rng=np.random.default_rng(seed),
            vectorized=True,
            **kwargs,
        )
    low = np.where(spread > 0, res.confidence_interval.low, mean)
    high = np.where(spread > 0, res.confidence_interval.high, mean)
    return replace(
        scores,
        ci_low=tuple(float(v) for v in low),
        ci_high=tuple(float(v) for v in high),
        ci_unit=unit,
        ci_units=int(n),
        ci_reliable=tuple(
            bool(n >= floor and n > 25.0 * g * g)
            for g in _skewness(data[0], kwargs["axis"], spread)
        ),
    )


def _skewness(x: np.ndarray, axis: int, spread: np.ndarray) -> np.ndarray:
    """Each layer's bias-corrected sample skewness G₁ over its units (0 for a constant one)."""
    from scipy.stats import skew

    with warnings.catch_warnings():  # constant layers: nan, set to 0 just below
        warnings.simplefilter("ignore")
        g = skew(x, axis=axis, bias=False) if x.shape[axis] > 2 else np.zeros(spread.shape)
    return np.where(spread > 0, np.nan_to_num(np.asarray(g, dtype=np.float64)), 0.0)


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
