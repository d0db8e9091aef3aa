"""Early-stopping schedulers: single-objective ASHA and a Pareto-aware MO-ASHA.

MO-ASHA (Schmucker et al. 2021, "Multi-objective asynchronous successive halving") is ASHA
with the scalar cut replaced by a multi-objective ranking. Rungs sit at
``grace_period · reduction_factor^k`` results (k = 0, 1, … while below ``max_t``). When a
trial first reaches a rung its objective vector is recorded there, and the trial goes on only
if fewer than ``max(1, ⌊n / reduction_factor⌋)`` of the ``n`` trials recorded at that rung so
far rank strictly better, ranking by non-dominated front and, within a front, by crowding
distance (NSGA-II; :func:`promote`). Like ASHA, the decision is made on arrival
and never revisited, so no trial waits for others.

Tune does not save a scheduler's state with the experiment (its snapshot holds the trials,
the searcher and the callbacks only; the scheduler is restored as it was built), so after
``--resume`` the rungs would start empty and promotions would disagree with the interrupted
run. :class:`SchedulerState` is a callback that carries the scheduler's state in the
callbacks' snapshot and puts it back on restore (MO-ASHA and Tune's ASHA alike).

``search.scheduler.name`` names an entry of :data:`SCHEDULERS`:
``build(cfg, max_t) -> TrialScheduler`` (``none``, ``asha``, ``mo_asha``).

Example::

    sched = MOASHAScheduler([("valid_accuracy", "max"), ("gflops", "min")],
                            max_t=9, grace_period=1, reduction_factor=3)
    tune.TuneConfig(scheduler=sched)  # no metric/mode in TuneConfig
"""

from __future__ import annotations

import math
import pickle
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from engine.config import StudyConfig
from engine.search_config import SCHEDULER_KINDS
from sweepcore.pareto import crowding_distance, nondominated_sort
from sweepcore.registry import Registry

__all__ = [
    "SCHEDULERS",
    "MOASHAScheduler",
    "SchedulerState",
    "build_scheduler",
    "promote",
    "rung_milestones",
]


def rung_milestones(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """Result counts at which trials are judged: grace·rf^k below ``max_t``, ascending."""
    out: list[int] = []
    k = 0
    while True:
        m = math.ceil(grace_period * reduction_factor**k - 1e-9)
        if m >= max_t:
            return out
        if not out or m > out[-1]:
            out.append(m)
        k += 1


def promote(vectors: Sequence[Sequence[float]], index: int, reduction_factor: float) -> bool:
    """Whether point ``index`` of ``vectors`` (minimised) goes on to the next rung.

    It goes on when fewer than ``keep = max(1, ⌊n/rf⌋)`` points rank strictly better: on an
    earlier non-dominated front, or on its front with a larger crowding distance. Exact ties
    do not count against it — as in ASHA, where a result equal to the cutoff continues — so
    both extremes of a two-point front (crowding ∞) go on.
    """
    f = np.asarray(vectors, dtype=float)
    keep = max(1, math.floor(len(f) / reduction_factor + 1e-9))
    ranks = nondominated_sort(f)
    crowd = np.zeros(len(f))
    for r in np.unique(ranks):
        members = np.flatnonzero(ranks == r)
        crowd[members] = crowding_distance(f[members])
    better = (ranks < ranks[index]) | ((ranks == ranks[index]) & (crowd > crowd[index]))
    return int(better.sum()) < keep


class MOASHAScheduler(FIFOScheduler):
    """Asynchronous successive halving that promotes by Pareto rank (see module docstring).

    Args:
        objectives: ``[(metric, "max" | "min"), ...]``, at least two.
        max_t: results (``time_attr``) of a full-length trial.
        grace_period: results before the first rung.
        reduction_factor: keep about 1/rf of the trials at each rung.
        time_attr: the budget counter in each result.
    """

    def __init__(
        self,
        objectives: Sequence[tuple[str, str]],
        *,
        max_t: int,
        grace_period: int = 1,
        reduction_factor: float = 3.0,
        time_attr: str = "training_iteration",
    ) -> None:
        super().__init__()
        if len(objectives) < 2:
            raise ValueError("MO-ASHA needs at least two objectives")
        for metric, mode in objectives:
            if mode not in ("max", "min"):
                raise ValueError(f"objective {metric!r}: mode must be 'max' or 'min'")
        if reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
        self._objectives = [(m, mode) for m, mode in objectives]
        self._signs = np.array([-1.0 if mode == "max" else 1.0 for _, mode in objectives])
        self._rf = float(reduction_factor)
        self._time_attr = time_attr
        self.milestones = rung_milestones(grace_period, reduction_factor, max_t)
        # rung milestone → {trial_id: minimised objective vector}, in arrival order
        self.rungs: dict[int, dict[str, np.ndarray]] = {m: {} for m in self.milestones}
        self.stopped: set[str] = set()

    @property
    def metric(self) -> None:  # several metrics: Tune's single-metric checks do not apply
        return None

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return metric is None and mode is None

    def vector(self, result: dict[str, Any]) -> np.ndarray | None:
        """The result's objectives as a vector to minimise, or None if one is missing/NaN."""
        try:
            v = np.array([float(result[m]) for m, _ in self._objectives]) * self._signs
        except (KeyError, TypeError, ValueError):
            return None
        return v if np.isfinite(v).all() else None

    def on_result(self, trial_id: str, result: dict[str, Any]) -> str:
        """The decision for one result (Tune-free, for tests): CONTINUE or STOP."""
        t = result.get(self._time_attr)
        vec = self.vector(result)
        if t is None or vec is None:
            return TrialScheduler.CONTINUE
        for milestone in reversed(self.milestones):  # the highest rung reached, once
            if t < milestone:
                continue
            recorded = self.rungs[milestone]
            if trial_id in recorded:
                break
            recorded[trial_id] = vec
            ids = list(recorded)
            if not promote([recorded[i] for i in ids], ids.index(trial_id), self._rf):
                self.stopped.add(trial_id)
                return TrialScheduler.STOP
            break
        return TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        return self.on_result(trial.trial_id, result)

    def debug_string(self) -> str:
        sizes = ", ".join(f"{m}: {len(r)}" for m, r in self.rungs.items())
        return f"MO-ASHA rungs (results: trials) {{{sizes}}}; stopped {len(self.stopped)}"

    def get_state(self) -> dict[str, Any]:
        """The rungs (trial → objective vector, in arrival order) and the stopped trials."""
        return {
            "milestones": list(self.milestones),
            "rungs": {m: {t: v.tolist() for t, v in r.items()} for m, r in self.rungs.items()},
            "stopped": sorted(self.stopped),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if list(state["milestones"]) != self.milestones:
            raise ValueError(
                f"saved MO-ASHA rungs {state['milestones']} differ from {self.milestones}"
            )
        self.rungs = {
            int(m): {t: np.asarray(v, dtype=float) for t, v in r.items()}
            for m, r in state["rungs"].items()
        }
        self.stopped = set(state["stopped"])

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_bytes(pickle.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(pickle.loads(Path(checkpoint_path).read_bytes()))


class SchedulerState(Callback):
    """Keeps a scheduler's state in Tune's experiment snapshot (see the module docstring).

    Put it in ``RunConfig.callbacks`` next to ``TuneConfig.scheduler=scheduler``: the Tuner
    pickles both together, so after ``Tuner.restore`` this callback still holds the restored
    scheduler and :meth:`set_state` fills its rungs from the last snapshot. A FIFO scheduler
    has no state (None: nothing is saved).
    """

    def __init__(self, scheduler: TrialScheduler) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any] | None:
        if type(self.scheduler) is FIFOScheduler:
            return None
        with tempfile.TemporaryDirectory() as d:
            path = Path(d, "scheduler.pkl")
            self.scheduler.save(str(path))
            return {"type": type(self.scheduler).__name__, "state": path.read_bytes()}

    def set_state(self, state: dict[str, Any]) -> None:
        if state["type"] != type(self.scheduler).__name__:
            raise ValueError(
                f"saved {state['type']} state cannot go into {type(self.scheduler).__name__}"
            )
        with tempfile.TemporaryDirectory() as d:
            path = Path(d, "scheduler.pkl")
            path.write_bytes(state["state"])
            self.scheduler.restore(str(path))


SchedulerFn = Callable[[StudyConfig, int], TrialScheduler]
# ``search.scheduler.name`` → ``build(cfg, max_t) -> TrialScheduler`` (max_t: results of a
# full-length trial, already resolved against ``search.scheduler.max_t``)
SCHEDULERS: Registry[SchedulerFn] = Registry("scheduler")


@SCHEDULERS.register("none")
def _fifo(cfg: StudyConfig, max_t: int) -> TrialScheduler:
    return FIFOScheduler()


@SCHEDULERS.register("asha")
def _asha(cfg: StudyConfig, max_t: int) -> TrialScheduler:
    s = cfg.search.scheduler
    first = cfg.search.objectives[0]
    return AsyncHyperBandScheduler(
        time_attr="training_iteration",
        metric=first.metric,
        mode=first.mode,
        max_t=max_t,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
        stop_last_trials=False,  # a survivor always runs to its final, full report
    )


@SCHEDULERS.register("mo_asha")
def _mo_asha(cfg: StudyConfig, max_t: int) -> TrialScheduler:
    s = cfg.search.scheduler
    return MOASHAScheduler(
        [(o.metric, o.mode) for o in cfg.search.objectives],
        max_t=max_t,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )


# Every scheduler declared for validation (engine.search_config) is built here, and no other.
if set(SCHEDULERS) != set(SCHEDULER_KINDS):
    raise ImportError(
        f"schedulers declared ({', '.join(SCHEDULER_KINDS)}) and implemented "
        f"({', '.join(SCHEDULERS)}) differ"
    )


def build_scheduler(cfg: StudyConfig, max_t: int) -> TrialScheduler:
    """The study's scheduler (:data:`SCHEDULERS` under ``search.scheduler.name``);
    ``max_t`` = results reported by a full-length trial unless ``search.scheduler.max_t``."""
    s = cfg.search.scheduler
    return SCHEDULERS.get(s.name)(cfg, s.max_t or max_t)
