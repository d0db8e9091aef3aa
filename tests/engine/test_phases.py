"""The phase clock charges each phase its own time only: on a planted clock (a list of
readings), nested phases pause the enclosing one and the totals add up to the outer span."""

from __future__ import annotations

import pytest

from engine.phases import PHASES, PhaseClock


def _planted(readings: list[float]):
    it = iter(readings)
    return lambda: next(it)


def test_a_nested_phase_pauses_the_enclosing_one() -> None:
    # train opens at 0; report 2 → 5 inside it; train again until 10; then eval 10 → 11,
    # and a second report 20 → 24 (inside nothing). Readings in the order the clock is asked.
    clock = PhaseClock(_planted([0.0, 2.0, 5.0, 10.0, 10.0, 11.0, 20.0, 24.0]))
    with clock.phase("train"), clock.phase("report"):
        pass
    with clock.phase("eval"):
        pass
    with clock.phase("report"):
        pass
    assert clock.totals == pytest.approx({"train": 7.0, "report": 7.0, "eval": 1.0})
    assert sum(clock.totals.values()) == pytest.approx(10.0 + 1.0 + 4.0)  # the outer spans


def test_a_phase_that_raises_is_still_charged_and_its_parent_resumes() -> None:
    clock = PhaseClock(_planted([0.0, 1.0, 4.0, 6.0]))
    with clock.phase("train"), pytest.raises(ValueError), clock.phase("save"):
        raise ValueError("disk full")
    assert clock.totals == pytest.approx({"train": 1.0 + 2.0, "save": 3.0})


def test_columns_name_every_phase_and_zero_the_ones_not_opened() -> None:
    clock = PhaseClock(_planted([0.0, 1.5, 3.0, 3.25]))
    with clock.phase("train"):
        pass
    with clock.phase("warmup"):  # not one of the trial's phases: still a column
        pass
    cols = clock.columns()
    assert list(cols)[: len(PHASES)] == [f"phase_{p}_s" for p in PHASES]
    assert cols["phase_train_s"] == pytest.approx(1.5)
    assert cols["phase_warmup_s"] == pytest.approx(0.25)
    assert {k: v for k, v in cols.items() if k not in ("phase_train_s", "phase_warmup_s")} == {
        f"phase_{p}_s": 0.0 for p in PHASES if p != "train"
    }
