"""MO-ASHA: promotion decisions on planted objective vectors (the sorting and crowding they
rest on are tested in tests/sweepcore/test_pareto.py), and a real Tune run whose
stopped/finished trials follow those rules."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from engine.config import load_study
from engine.schedulers import SCHEDULERS, MOASHAScheduler, build_scheduler, promote, rung_milestones
from tests.sweepcore.test_pareto import PLANTED, _brute_front, _brute_fronts, _textbook_crowding


def test_promote_keeps_top_n_over_rf() -> None:
    # n = 6, rf = 3 → keep 2: A and C (the extremes of the first front)
    assert [promote(PLANTED, i, 3) for i in range(6)] == [True, False, True, False, False, False]
    # rf = 2 → keep 3: the whole first front
    assert [promote(PLANTED, i, 2) for i in range(6)] == [True, True, True, False, False, False]
    assert promote(PLANTED[:1], 0, 3)  # the first arrival always goes on


def test_rung_milestones() -> None:
    assert rung_milestones(1, 3, 9) == [1, 3]
    assert rung_milestones(1, 2, 9) == [1, 2, 4, 8]
    assert rung_milestones(2, 3, 30) == [2, 6, 18]
    assert rung_milestones(5, 3, 5) == []


def test_two_point_front_keeps_both_extremes() -> None:
    # n = 2, keep 1: neither of two mutually non-dominated points ranks strictly better
    two = [[-0.8, 4.0], [-0.7, 2.0]]
    assert promote(two, 0, 3) and promote(two, 1, 3)
    assert not promote([[-0.8, 4.0], [-0.5, 4.0]], 1, 3)  # dominated


def test_scheduler_decisions_on_planted_vectors() -> None:
    sched = MOASHAScheduler(
        [("acc", "max"), ("gflops", "min")], max_t=9, grace_period=1, reduction_factor=2
    )
    assert sched.milestones == [1, 2, 4, 8]

    def res(t: int, acc: float, g: float) -> dict:
        return {"training_iteration": t, "acc": acc, "gflops": g}

    # rung 1, minimised vectors (-acc, gflops); keep = max(1, n // 2)
    assert sched.on_result("a", res(1, 0.5, 2.0)) == "CONTINUE"  # n=1
    assert sched.on_result("b", res(1, 0.4, 3.0)) == "STOP"  # n=2, a dominates b
    assert sched.on_result("c", res(1, 0.6, 4.0)) == "CONTINUE"  # n=3, front {a, c}, ∞ tie
    # n=4 keep 2: d dominates a, b and c; it is alone on front 0
    assert sched.on_result("d", res(1, 0.7, 1.0)) == "CONTINUE"
    # n=5 keep 2: e = (0.45, 2.5) is dominated by a and d: front 0 {d}, front 1 {a, c}, ...
    assert sched.on_result("e", res(1, 0.45, 2.5)) == "STOP"
    assert sched.stopped == {"b", "e"}
    # a reaches rung 2 (t=2) alone → goes on; results between rungs are not judged
    assert sched.on_result("a", res(2, 0.1, 2.0)) == "CONTINUE"
    assert sched.on_result("a", res(3, 0.0, 9.0)) == "CONTINUE"
    # c at rung 2 with a recorded there: n=2 keep 1; a dominates c now → STOP
    assert sched.on_result("c", res(2, 0.05, 4.0)) == "STOP"


def _strict_rule(seen: list[list[float]], i: int, rf: float) -> bool:
    """The promotion rule from its definition: point i goes on when fewer than
    max(1, ⌊n/rf⌋) points rank strictly better — on an earlier front, or on its front with
    a larger crowding distance within that front. Brute force, no project code."""
    fronts = _brute_fronts(seen)
    members = [j for j in range(len(seen)) if fronts[j] == fronts[i]]
    crowd = dict(zip(members, _textbook_crowding([seen[j] for j in members]), strict=True))
    better = sum(
        1
        for j in range(len(seen))
        if fronts[j] < fronts[i] or (fronts[j] == fronts[i] and crowd[j] > crowd[i])
    )
    return better < max(1, len(seen) // rf)


def test_scheduler_stop_rule_on_random_arrivals() -> None:
    rng = np.random.default_rng(3)
    sched = MOASHAScheduler(
        [("acc", "max"), ("gflops", "min")], max_t=100, grace_period=1, reduction_factor=3
    )
    seen: list[list[float]] = []
    decisions = []
    for i in range(15):
        acc, g = float(rng.uniform()), float(rng.integers(1, 7))
        seen.append([-acc, g])
        got = sched.on_result(f"t{i}", {"training_iteration": 1, "acc": acc, "gflops": g})
        assert got == ("CONTINUE" if _strict_rule(seen, i, 3) else "STOP")
        decisions.append(got)
    assert "STOP" in decisions and "CONTINUE" in decisions[1:]
    # a later result at the same rung is not judged again; a missing metric never stops
    assert sched.on_result("t0", {"training_iteration": 2, "acc": 0.0, "gflops": 9.0}) == "CONTINUE"
    assert sched.on_result("x", {"training_iteration": 3, "acc": float("nan"), "gflops": 1}) == (
        "CONTINUE"
    )


def test_build_scheduler_from_study() -> None:
    cfg = load_study("pareto")
    sched = build_scheduler(cfg, max_t=6)
    assert isinstance(sched, MOASHAScheduler) and sched.milestones == [2]
    asha = build_scheduler(load_study("pareto", ["search.scheduler.name=asha"]), max_t=6)
    assert type(asha).__name__ == "AsyncHyperBandScheduler"


# ----------------------------------------------------------------------------- Tune end to end

CURVES = {  # final (acc, gflops); acc rises linearly to its final value over 9 results
    "p0": (0.80, 4.0),
    "p1": (0.70, 2.0),
    "p2": (0.60, 1.0),
    "d0": (0.50, 4.0),  # dominated by p0, p1, p2
    "d1": (0.40, 3.0),
    "d2": (0.30, 5.0),
}


def _curve(config: dict) -> None:
    from ray import tune

    acc, g = CURVES[config["name"]]
    for t in range(1, 10):
        tune.report({"acc": acc * t / 9, "gflops": g, "step": t})


@pytest.mark.slow  # six trials one after another: ~20 s idle, minutes on a loaded machine
def test_mo_asha_in_tune_keeps_the_frontier(ray_local) -> None:
    from ray import tune

    # arrival order when run one at a time. Rungs at 1 and 3 results (rf 3, max_t 9):
    # d0 is dominated by p0 (stop); p1 ties p0 on front 0 (go on); d1 has p0, p1 better with
    # keep 1 (stop); p2 is an extreme of front {p0, p1, p2} (go on, also at rung 3); d2 stops.
    names = ["p0", "d0", "p1", "d1", "p2", "d2"]
    sched = MOASHAScheduler(
        [("acc", "max"), ("gflops", "min")], max_t=9, grace_period=1, reduction_factor=3
    )
    tuner = tune.Tuner(
        tune.with_resources(_curve, {"cpu": 1}),
        param_space={"name": tune.grid_search(names)},
        tune_config=tune.TuneConfig(scheduler=sched, max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(verbose=0, storage_path=str(_tmp_storage())),
    )
    grid = tuner.fit()
    iters = {r.config["name"]: r.metrics["training_iteration"] for r in grid}
    finished = {n for n, t in iters.items() if t == 9}
    assert finished == {"p0", "p1", "p2"}, iters
    assert all(iters[n] == 1 for n in ("d0", "d1", "d2"))
    assert grid.num_errors == 0
    final = pd.DataFrame([{"name": r.config["name"], **r.metrics} for r in grid])
    done = final[final.training_iteration == 9]
    f = np.column_stack([-done["acc"].to_numpy(float), done["gflops"].to_numpy(float)])
    assert {done["name"].iloc[i] for i in _brute_front(f)} == {"p0", "p1", "p2"}


def _tmp_storage():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="mo_asha_"))


def test_planted_curves_are_consistent() -> None:
    # the planted "p" points are exactly the final front (a check on the test's own data)
    f = np.array([[-a, g] for a, g in CURVES.values()])
    names = list(CURVES)
    assert {names[i] for i in _brute_front(f)} == {"p0", "p1", "p2"}
    assert all(len(set(c)) == 2 for c in itertools.combinations(CURVES, 2))


# ------------------------------------------------------ contract: every registered scheduler


@pytest.mark.parametrize("name", SCHEDULERS.names())
def test_every_scheduler_builds_from_a_study_and_pickles(name: str) -> None:
    """A study naming it validates; the built scheduler is a Tune scheduler, honours
    ``search.scheduler.max_t`` over the derived budget where it has one, and survives the
    pickling Tune does when it ships and snapshots an experiment."""
    import pickle

    from ray.tune.schedulers import TrialScheduler

    cfg = load_study("pareto", [f"search.scheduler.name={name}"])
    sched = build_scheduler(cfg, max_t=6)
    assert isinstance(sched, TrialScheduler)
    assert type(pickle.loads(pickle.dumps(sched))) is type(sched)
    capped = build_scheduler(load_study("pareto", [f"search.scheduler.name={name}",
                                                   "search.scheduler.max_t=4"]), max_t=6)  # fmt: skip
    for attr in ("max_t", "_max_t"):
        if hasattr(sched, attr):
            assert (getattr(sched, attr), getattr(capped, attr)) == (6, 4), attr
    if hasattr(sched, "milestones"):  # rungs sit below the budget
        assert max(sched.milestones, default=0) < 6 and max(capped.milestones, default=0) < 4


def test_an_unregistered_scheduler_is_a_config_error() -> None:
    from engine.config import ConfigError

    with pytest.raises(ConfigError):
        load_study("pareto", ["search.scheduler.name=no_such_scheduler"])
    with pytest.raises(KeyError, match="known"):
        SCHEDULERS.get("no_such_scheduler")


def test_an_unknown_scheduler_names_its_dotted_key_and_nearest_match() -> None:
    from engine.config import ConfigError
    from engine.search_config import SCHEDULER_KINDS

    assert set(SCHEDULER_KINDS.names()) == set(SCHEDULERS.names())
    with pytest.raises(ConfigError) as e:
        load_study("pareto", ["search.scheduler.name=mo_ahsa"])
    (p,) = e.value.problems
    assert p.startswith("sweeps/pareto.yaml: search.scheduler.name: unknown scheduler 'mo_ahsa'")
    assert "did you mean 'mo_asha'?" in p
