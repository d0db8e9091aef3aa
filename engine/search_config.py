"""The ``search`` section of a study, and what validation needs to know about each search
algorithm and scheduler — importable without Ray.

:data:`SEARCH_ALGORITHMS` and :data:`SCHEDULER_KINDS` declare each name once, with the facts
the cross-field checks ask (:class:`AlgorithmSpec`, :class:`SchedulerSpec`); the plans and
schedulers themselves are registered under the same names in :mod:`engine.search` and
:mod:`engine.schedulers` (which import Ray Tune), and those modules refuse to import when a
name is declared here without an implementation there, or the other way round. Unknown names
are reported by the one validation pass (:func:`engine.config.validate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from engine.configbase import Section
from engine.tasks import DEFAULT_TASK, get_task
from sweepcore.registry import Registry

__all__ = [
    "OBJECTIVE_METRICS",
    "SCHEDULER_KINDS",
    "SEARCH_ALGORITHMS",
    "AlgorithmSpec",
    "FloatRange",
    "IntRange",
    "Objective",
    "SchedulerConfig",
    "SchedulerSpec",
    "SearchConfig",
    "SpaceSpec",
    "range_points",
]


@dataclass(frozen=True)
class AlgorithmSpec:
    """``needs_lists``: every space entry must be a list (no ranges); ``chooses_points``: the
    algorithm proposes its own points (categorical values must be scalars, no ``extra``);
    ``multi_objective``: it searches all objectives (needs at least two)."""

    needs_lists: bool = False
    chooses_points: bool = False
    multi_objective: bool = False


@dataclass(frozen=True)
class SchedulerSpec:
    """``stops_early``: it judges intermediate results (needs ``report_every_steps``);
    ``multi_objective``: it ranks on all objectives (needs at least two)."""

    stops_early: bool = True
    multi_objective: bool = False


SEARCH_ALGORITHMS: Registry[Any] = Registry("search algorithm")
SCHEDULER_KINDS: Registry[Any] = Registry("scheduler")
_ALGORITHM_ORDER: list[str] = []  # declaration order, for messages that list names


def _declare_algorithm(name: str, spec: AlgorithmSpec) -> None:
    SEARCH_ALGORITHMS.register(name)(spec)
    _ALGORITHM_ORDER.append(name)


_declare_algorithm("grid", AlgorithmSpec(needs_lists=True))
_declare_algorithm("one_at_a_time", AlgorithmSpec(needs_lists=True))
_declare_algorithm("random", AlgorithmSpec())
_declare_algorithm("optuna", AlgorithmSpec(chooses_points=True))
_declare_algorithm("optuna_mo", AlgorithmSpec(chooses_points=True, multi_objective=True))
SCHEDULER_KINDS.register("none")(SchedulerSpec(stops_early=False))
SCHEDULER_KINDS.register("asha")(SchedulerSpec())
SCHEDULER_KINDS.register("mo_asha")(SchedulerSpec(multi_objective=True))


def _or_list(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


class FloatRange(Section):
    """A continuous search range ``{low: 1.0, high: 8.0, log: true}`` (random / optuna only)."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _order(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low must be < high (got low={self.low}, high={self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got low={self.low})")
        return self


class IntRange(Section):
    """An integer search range ``{int_low: 1, int_high: 6}``, both ends included."""

    int_low: int
    int_high: int
    log: bool = False

    @model_validator(mode="after")
    def _order(self) -> IntRange:
        if not self.int_low < self.int_high:
            raise ValueError(
                f"int_low must be < int_high (got int_low={self.int_low}, int_high={self.int_high})"
            )
        if self.log and self.int_low <= 0:
            raise ValueError(f"log: true needs int_low > 0 (got int_low={self.int_low})")
        return self


def _spec_kind(v: Any) -> str | None:
    if isinstance(v, list | tuple):
        return "list"
    if isinstance(v, FloatRange | IntRange):
        return "int" if isinstance(v, IntRange) else "range"
    if isinstance(v, dict):
        return "int" if "int_low" in v or "int_high" in v else "range"
    return None


# A search-space entry: categorical values, or a float / integer range.
SpaceSpec = Annotated[
    Annotated[list[Any], Tag("list")]
    | Annotated[FloatRange, Tag("range")]
    | Annotated[IntRange, Tag("int")],
    Discriminator(
        _spec_kind,
        custom_error_type="search_spec",
        custom_error_message="expected a list of values, {low, high, log} or "
        "{int_low, int_high, log}",
    ),
]


def range_points(spec: list[Any] | FloatRange | IntRange) -> list[Any]:
    """The values that stand for a search entry when validating: a list's items, a range's ends."""
    if isinstance(spec, FloatRange):
        return [spec.low, spec.high]
    if isinstance(spec, IntRange):
        return [spec.int_low, spec.int_high]
    return list(spec)


# Metrics a trial of the default task reports at every intermediate report and at the end;
# a study's objectives may name its task's (Task.objective_metrics, checked in validation).
OBJECTIVE_METRICS = tuple(get_task(DEFAULT_TASK).objective_metrics())
_DEFAULT_OBJECTIVES = get_task(DEFAULT_TASK).default_objectives


class Objective(Section):
    """One search objective: a reported metric (``valid_<task metric>`` or a cost metric,
    :meth:`engine.tasks.Task.objective_metrics`) and its direction."""

    metric: str = _DEFAULT_OBJECTIVES[0][0]
    mode: Literal["max", "min"] = _DEFAULT_OBJECTIVES[0][1]


class SchedulerConfig(Section):
    """Early stopping. ``asha``: single objective (the first of ``search.objectives``);
    ``mo_asha``: Pareto-aware successive halving over all objectives. Rungs sit at
    ``grace_period · reduction_factor^k`` reports; ``max_t`` (reports of a full trial) is
    derived from the study when unset. ``name``: one of :data:`SCHEDULER_KINDS`."""

    name: str = "none"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1)
    max_t: int | None = Field(None, ge=1)


class SearchConfig(Section):
    """How trial configurations are chosen; every configuration runs once per seed in ``repeats``.

    ``algorithm``: one of :data:`SEARCH_ALGORITHMS`. ``space`` maps a dotted config path to a
    list of settings (categorical; the only form ``grid`` accepts) or a range
    (:class:`FloatRange`, :class:`IntRange`). ``grid`` runs the
    Cartesian product; ``one_at_a_time`` varies each key alone, the others at the study's
    settings (a sensitivity analysis); ``random`` draws ``num_samples`` points under
    ``seed``; ``optuna`` (TPE) maximises/minimises the first objective; ``optuna_mo``
    searches all objectives and the run keeps the Pareto set. ``report_every_steps`` makes training report validation
    metrics every N steps (needed by a scheduler). ``checkpoint_every`` attaches a trial
    checkpoint to the first of those reports at least N steps after the previous checkpoint,
    so a trial retried after its worker died (``max_failures``) continues from it.
    ``extra``: further configurations, each ``{dotted path: value}`` with the rest at the
    study's settings, run (× seeds) after the search's own points by ``grid``,
    ``one_at_a_time`` and ``random`` — e.g. an ablation's component arms (pruning on/off,
    quantization on/off) beside its grid, without multiplying the grid by them.
    ``reuse_actors``: a worker that finished a trial runs the next one (no new process,
    imports or fetch of the shared inputs; :mod:`engine.worker`); false starts a fresh Ray
    actor per trial (the results are the same either way).
    """

    algorithm: str = "grid"
    space: dict[str, SpaceSpec] = Field(default_factory=dict)
    extra: tuple[dict[str, Any], ...] = ()
    num_samples: int = Field(8, ge=1)
    seed: int = Field(0, ge=0)
    objectives: tuple[Objective, ...] = tuple(
        Objective(metric=m, mode=d) for m, d in _DEFAULT_OBJECTIVES
    )
    scheduler: SchedulerConfig = SchedulerConfig()
    report_every_steps: int | None = Field(None, ge=1)
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(1, ge=0)
    checkpoint_every: int | None = Field(None, ge=1)
    reuse_actors: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        # An unknown algorithm / scheduler name is reported by the validation pass
        # (engine.config); here it only skips the checks that need its declared facts.
        algo = (
            SEARCH_ALGORITHMS.get(self.algorithm)
            if self.algorithm in SEARCH_ALGORITHMS
            else AlgorithmSpec()
        )
        sched = (
            SCHEDULER_KINDS.get(self.scheduler.name)
            if self.scheduler.name in SCHEDULER_KINDS
            else SchedulerSpec(stops_early=False)
        )
        free = [n for n in _ALGORITHM_ORDER if not SEARCH_ALGORITHMS.get(n).needs_lists]
        fixed = [n for n in _ALGORITHM_ORDER if not SEARCH_ALGORITHMS.get(n).chooses_points]
        ranges = [k for k, v in self.space.items() if not isinstance(v, list)]
        if algo.needs_lists and ranges:
            raise ValueError(
                f"{self.algorithm} needs a list of values for every key; ranges at {', '.join(ranges)} "
                f"need algorithm {_or_list(free)}"
            )
        if algo.chooses_points:
            scalar = (bool, int, float, str, type(None))
            for k, v in self.space.items():
                if isinstance(v, list) and not all(isinstance(x, scalar) for x in v):
                    raise ValueError(
                        f"space.{k}: {self.algorithm.split('_')[0]} categorical values must be "
                        "scalars (bool, int, float, str, null)"
                    )
        if self.extra and algo.chooses_points:
            raise ValueError(
                "extra configurations run beside a fixed set of points: use algorithm "
                f"{_or_list(fixed)} ({self.algorithm.split('_')[0]} chooses its own)"
            )
        if any(not point for point in self.extra):
            raise ValueError("extra: each configuration needs at least one {path: value}")
        if not self.objectives:
            raise ValueError("objectives: name at least one metric")
        if (algo.multi_objective or sched.multi_objective) and len(self.objectives) < 2:
            multi = [n for n in _ALGORITHM_ORDER if SEARCH_ALGORITHMS.get(n).multi_objective]
            multi += [n for n in SCHEDULER_KINDS if SCHEDULER_KINDS.get(n).multi_objective]
            raise ValueError(f"{' and '.join(multi)} need at least two objectives")
        if sched.stops_early and self.report_every_steps is None:
            raise ValueError(
                f"scheduler {self.scheduler.name} needs intermediate results: "
                "set report_every_steps"
            )
        if self.checkpoint_every is not None and self.report_every_steps is None:
            raise ValueError(
                "checkpoint_every needs report_every_steps (checkpoints ride on the reports)"
            )
        return self
