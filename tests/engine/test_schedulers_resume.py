"""Scheduler state across a resumed study: Tune does not save a scheduler with its experiment
snapshot, so :class:`SchedulerState` does. A study interrupted (SIGINT, Tune's graceful stop)
and restored with ``Tuner.restore`` makes the same promotions as an uninterrupted one only
with it; without it the rungs start empty and a dominated trial runs to the end."""

from __future__ import annotations

import signal
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from engine.schedulers import MOASHAScheduler, SchedulerState

OBJ = [("acc", "max"), ("gflops", "min")]
CURVES = {  # final (acc, gflops); acc rises linearly to its final value over 9 results
    "p0": (0.80, 4.0),
    "p1": (0.70, 2.0),
    "d0": (0.50, 4.0),  # dominated by p0 and p1
    "p2": (0.60, 1.0),
}


def _mo_asha() -> MOASHAScheduler:
    return MOASHAScheduler(OBJ, max_t=9, grace_period=1, reduction_factor=3)


def _result(name: str, t: int) -> dict:
    acc, g = CURVES[name]
    return {"acc": acc * t / 9, "gflops": g, "training_iteration": t}


def test_mo_asha_state_round_trip_keeps_decisions() -> None:
    a = _mo_asha()
    for name in ("p0", "p1"):
        for t in range(1, 10):
            assert a.on_result(name, _result(name, t)) == "CONTINUE"
    b = _mo_asha()
    SchedulerState(b).set_state(SchedulerState(a).get_state())
    assert b.rungs.keys() == a.rungs.keys()
    for m in a.rungs:
        assert list(b.rungs[m]) == list(a.rungs[m])  # arrival order kept
        assert all(np.array_equal(b.rungs[m][t], a.rungs[m][t]) for t in a.rungs[m])
    # d0 now meets p0 and p1 at rung 1 (keep 1 of 3): stopped, as without the interruption
    assert b.on_result("d0", _result("d0", 1)) == "STOP" == a.on_result("d0", _result("d0", 1))
    assert _mo_asha().on_result("d0", _result("d0", 1)) == "CONTINUE"  # fresh rungs: goes on
    with pytest.raises(ValueError, match="differ"):
        MOASHAScheduler(OBJ, max_t=27, grace_period=1, reduction_factor=3).set_state(a.get_state())


def test_asha_state_round_trip() -> None:
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    def asha() -> AsyncHyperBandScheduler:
        return AsyncHyperBandScheduler(
            time_attr="training_iteration", metric="acc", mode="max", max_t=9, grace_period=1
        )

    a = asha()
    a.on_trial_add(None, SimpleNamespace(trial_id="x"))
    a.on_trial_result(None, SimpleNamespace(trial_id="x"), {"training_iteration": 1, "acc": 0.9})
    b = asha()
    SchedulerState(b).set_state(SchedulerState(a).get_state())
    recorded = [dict(r) for _, r in b._brackets[0]._rungs]
    assert {"x": 0.9} in recorded
    assert SchedulerState(FIFOScheduler()).get_state() is None
    with pytest.raises(ValueError, match="cannot go into"):
        SchedulerState(_mo_asha()).set_state(SchedulerState(a).get_state())


def _curve(config: dict) -> None:
    from ray import tune

    acc, g = CURVES[config["name"]]
    for t in range(1, 10):
        tune.report({"acc": acc * t / 9, "gflops": g, "step": t})


class _InterruptAfter:
    """Sends SIGINT to the driver (Tune's graceful stop) when trial ``name`` completes."""

    def __new__(cls, name: str):
        from ray.tune import Callback

        class Interrupt(Callback):
            def on_trial_complete(self, iteration, trials, trial, **info) -> None:
                if trial.config["name"] == name:
                    signal.raise_signal(signal.SIGINT)

        return Interrupt()


@pytest.mark.slow  # two short Tune runs per case: ~20 s idle, a minute or more loaded
@pytest.mark.parametrize("keep_state", [True, False])
def test_interrupted_study_resumes_with_its_rungs(ray_local, keep_state: bool) -> None:
    from ray import tune

    storage = Path(tempfile.mkdtemp(prefix="sched_resume_"))
    sched = _mo_asha()
    callbacks = [_InterruptAfter("p1")] + ([SchedulerState(sched)] if keep_state else [])
    tuner = tune.Tuner(
        tune.with_resources(_curve, {"cpu": 1}),
        param_space={"name": tune.grid_search(list(CURVES))},
        tune_config=tune.TuneConfig(scheduler=sched, max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(
            name="exp", storage_path=str(storage), callbacks=callbacks, verbose=0
        ),
    )
    first = tuner.fit()
    iters = {r.config["name"]: r.metrics.get("training_iteration") for r in first}
    assert iters == {"p0": 9, "p1": 9}  # interrupted after p1; d0 and p2 not yet created

    restored = tune.Tuner.restore(str(storage / "exp"), tune.with_resources(_curve, {"cpu": 1}))
    grid = restored.fit()
    iters = {r.config["name"]: r.metrics["training_iteration"] for r in grid}
    assert grid.num_errors == 0 and len(iters) == 4
    assert iters["p0"] == iters["p1"] == iters["p2"] == 9
    # d0 meets p0 and p1 at rung 1 only if the rungs survived the restore
    assert iters["d0"] == (1 if keep_state else 9), iters
