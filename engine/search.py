"""Search algorithms: a registry from ``search.algorithm`` to a Tune search plan.

Every algorithm returns a :class:`SearchPlan` (``param_space``, ``search_alg``,
``num_samples``) for :class:`ray.tune.Tuner`. A Tune config is always
``{"values": {dotted path: value}, "seed": int}`` (or ``__trial_index__`` in place of
``seed``), so :func:`engine.trial.run_trial` substitutes the values the same way whatever
chose them. Each configuration runs once per seed in ``study.repeats``:

- ``grid``: the Cartesian product of the lists × seeds (``tune.grid_search``).
- ``one_at_a_time``: each key's values alone, the rest at the study's settings × seeds.
- ``random``: ``num_samples`` points drawn up front from a NumPy generator seeded with
  ``search.seed`` (reproducible and resumable), each a grid point × seeds.
- These three then run ``search.extra``'s configurations too (each × seeds).
- ``optuna``: TPE on the first objective; ``optuna_mo``: multi-objective TPE on all of them.
  Each suggested point runs under every seed (:class:`SeedRepeater`) and Optuna is told the
  mean over seeds. No metric/mode goes into ``TuneConfig`` (that would silently make a
  multi-objective study single-objective, ray #35909).

Example::

    plan = ALGORITHMS.get(cfg.search.algorithm)(cfg)
    Tuner(trainable, param_space=plan.param_space,
          tune_config=TuneConfig(search_alg=plan.search_alg, num_samples=plan.num_samples))
"""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from ray.tune.search import Searcher

from engine.config import ConfigError, StudyConfig
from engine.search_config import SEARCH_ALGORITHMS, FloatRange, IntRange
from sweepcore.registry import Registry

__all__ = [
    "ALGORITHMS",
    "SearchPlan",
    "SeedRepeater",
    "plan_search",
    "sample_points",
    "trial_configs",
]

SEED_KEY = "__trial_index__"


@dataclass(frozen=True)
class SearchPlan:
    param_space: dict[str, Any]
    search_alg: Searcher | None
    num_samples: int
    configs: int  # distinct configurations (trials = configs × seeds)


PlanFn = Callable[[StudyConfig], SearchPlan]
ALGORITHMS: Registry[PlanFn] = Registry("search algorithm")


def trial_configs(cfg: StudyConfig, source: str = "study") -> list[dict[str, Any]]:
    """Every grid point as {dotted path: value}; each is validated by substituting it."""
    import itertools

    keys = list(cfg.search.space)
    ranges = [k for k in keys if not isinstance(cfg.search.space[k], list)]
    if ranges:
        raise ConfigError([f"{source}: search.space.{k}: a range has no grid" for k in ranges])
    combos = [
        dict(zip(keys, vals, strict=True))
        for vals in itertools.product(*(cfg.search.space[k] for k in keys))
    ]
    return combos or [{}]


def _sample(spec: Any, rng: np.random.Generator) -> Any:
    if isinstance(spec, FloatRange):
        if spec.log:
            return float(math.exp(rng.uniform(math.log(spec.low), math.log(spec.high))))
        return float(rng.uniform(spec.low, spec.high))
    if isinstance(spec, IntRange):
        if spec.log:
            lo, hi = math.log(spec.int_low), math.log(spec.int_high + 1)
            return int(min(spec.int_high, math.floor(math.exp(rng.uniform(lo, hi)))))
        return int(rng.integers(spec.int_low, spec.int_high + 1))
    return copy.deepcopy(spec[int(rng.integers(len(spec)))])


def sample_points(cfg: StudyConfig) -> list[dict[str, Any]]:
    """``search.num_samples`` random points of ``search.space`` under ``search.seed``."""
    rng = np.random.default_rng(cfg.search.seed)
    keys = sorted(cfg.search.space)
    return [
        {k: _sample(cfg.search.space[k], rng) for k in keys} for _ in range(cfg.search.num_samples)
    ]


def _tune_domain(spec: Any) -> Any:
    if isinstance(spec, FloatRange):
        return (tune.loguniform if spec.log else tune.uniform)(spec.low, spec.high)
    if isinstance(spec, IntRange):
        # Tune's randint excludes the upper bound; the study's int_high is included
        return (tune.lograndint if spec.log else tune.randint)(spec.int_low, spec.int_high + 1)
    return tune.choice(list(spec))


def _grid_plan(cfg: StudyConfig, points: list[dict[str, Any]]) -> SearchPlan:
    points = [*points, *(dict(p) for p in cfg.search.extra)]
    space = {"values": tune.grid_search(points), "seed": tune.grid_search(list(cfg.repeats))}
    return SearchPlan(space, None, 1, len(points))


@ALGORITHMS.register("grid")
def grid(cfg: StudyConfig) -> SearchPlan:
    return _grid_plan(cfg, trial_configs(cfg))


@ALGORITHMS.register("one_at_a_time")
def one_at_a_time(cfg: StudyConfig) -> SearchPlan:
    """The study's own settings, then each key's values alone (the others as in the study)."""
    points: list[dict[str, Any]] = [{}]
    points += [{k: v} for k, values in cfg.search.space.items() for v in values]
    return _grid_plan(cfg, points)


@ALGORITHMS.register("random")
def random(cfg: StudyConfig) -> SearchPlan:
    return _grid_plan(cfg, sample_points(cfg))


def _optuna(cfg: StudyConfig, multi: bool) -> SearchPlan:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    objectives = cfg.search.objectives if multi else cfg.search.objectives[:1]
    metric = [o.metric for o in objectives]
    mode = [o.mode for o in objectives]
    sampler = optuna.samplers.TPESampler(seed=cfg.search.seed)
    inner = OptunaSearch(
        metric=metric if multi else metric[0],
        mode=mode if multi else mode[0],
        sampler=sampler,
    )
    space = {"values": {k: _tune_domain(v) for k, v in cfg.search.space.items()}}
    repeats = len(cfg.repeats)
    return SearchPlan(
        space,
        SeedRepeater(inner, repeats),
        cfg.search.num_samples * repeats,
        cfg.search.num_samples,
    )


@ALGORITHMS.register("optuna")
def optuna_tpe(cfg: StudyConfig) -> SearchPlan:
    return _optuna(cfg, multi=False)


@ALGORITHMS.register("optuna_mo")
def optuna_mo(cfg: StudyConfig) -> SearchPlan:
    return _optuna(cfg, multi=True)


# Every algorithm declared for validation (engine.search_config) has a plan here, and no other.
if set(ALGORITHMS) != set(SEARCH_ALGORITHMS):
    raise ImportError(
        f"search algorithms declared ({', '.join(SEARCH_ALGORITHMS)}) and implemented "
        f"({', '.join(ALGORITHMS)}) differ"
    )


def plan_search(cfg: StudyConfig) -> SearchPlan:
    return ALGORITHMS.get(cfg.search.algorithm)(cfg)


class SeedRepeater(Searcher):
    """Run each suggestion of ``searcher`` ``repeat`` times (``__trial_index__`` 0…repeat-1).

    Unlike :class:`ray.tune.search.Repeater` it handles a list of metrics (multi-objective):
    when every repeat has finished, the inner searcher is told the NaN-mean of each metric
    over the repeats, under the first repeat's trial id.
    """

    def __init__(self, searcher: Searcher, repeat: int) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.repeat = repeat
        self._groups: dict[str, dict[str, Any]] = {}  # primary id → {config, results}
        self._group_of: dict[str, str] = {}
        self._current: str | None = None

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        group = self._groups.get(self._current) if self._current else None
        if group is None or len(group["members"]) >= self.repeat:
            config = self.searcher.suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                return config
            self._current = trial_id
            group = {"config": copy.deepcopy(config), "members": [], "results": {}}
            self._groups[trial_id] = group
        group["members"].append(trial_id)
        self._group_of[trial_id] = self._current  # type: ignore[assignment]
        config = copy.deepcopy(group["config"])
        config[SEED_KEY] = len(group["members"]) - 1
        return config

    def _metrics(self) -> list[str]:
        m = self.searcher.metric
        return list(m) if isinstance(m, list | tuple) else [m]

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        primary = self._group_of.get(trial_id)
        if primary is None:
            return
        group = self._groups[primary]
        group["results"][trial_id] = {
            m: float((result or {}).get(m, np.nan)) for m in self._metrics()
        }
        if len(group["results"]) < self.repeat:
            return
        means: dict[str, float] = {}
        for m in self._metrics():
            vals = np.array([r[m] for r in group["results"].values()], dtype=float)
            means[m] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
        ok = all(math.isfinite(v) for v in means.values())
        self.searcher.on_trial_complete(primary, result=means if ok else None, error=not ok)

    def get_state(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "searcher"}

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        import tempfile

        with tempfile.NamedTemporaryFile() as tmp:
            self.searcher.save(tmp.name)
            inner = Path(tmp.name).read_bytes()
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"self": self.get_state(), "inner": inner}, f)

    def restore(self, checkpoint_path: str) -> None:
        import tempfile

        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.set_state(state["self"])
        with tempfile.NamedTemporaryFile() as tmp:
            tmp.write(state["inner"])
            tmp.flush()
            self.searcher.restore(tmp.name)
