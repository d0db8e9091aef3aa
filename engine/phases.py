"""Where a trial's time goes: named phases, each charged only its own (exclusive) time.

A trial opens phases around its parts (``reset``, ``fetch``, ``build``, ``train``, ``eval``, ``measure``,
``save``, ``report``); a phase opened inside another pauses the outer one, so an intermediate
report measured in the middle of training counts as ``report``, not ``train``, and the phases
of one trial add up to the time covered by the outermost ones. The columns they give
(``phase_<name>_s``) are what ``bench/trial_overhead.py`` splits each trial slot into.

    clock = PhaseClock()
    with clock.phase("train"):
        ...
        with clock.phase("report"):  # train is paused meanwhile
            ...
    clock.columns()  # {"phase_train_s": ..., "phase_report_s": ...}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["PHASES", "PhaseClock", "phase_column"]

# The phases a trial reports, in the order a trial runs them; each is always a column (0 when
# the trial had none of it), so rows of every trial have the same columns.
PHASES = ("reset", "fetch", "build", "train", "report", "save", "eval", "measure")


def phase_column(name: str) -> str:
    return f"phase_{name}_s"


class PhaseClock:
    """Exclusive time per named phase. ``clock`` returns seconds (default
    :func:`time.perf_counter`)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.totals: dict[str, float] = {}
        self._open: list[tuple[str, float]] = []  # (phase, when it last resumed)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        now = self._clock()
        if self._open:  # pause the enclosing phase
            outer, since = self._open[-1]
            self.totals[outer] = self.totals.get(outer, 0.0) + now - since
        self._open.append((name, now))
        try:
            yield
        finally:
            end = self._clock()
            _, since = self._open.pop()
            self.totals[name] = self.totals.get(name, 0.0) + end - since
            if self._open:  # the enclosing phase resumes now
                self._open[-1] = (self._open[-1][0], end)

    def columns(self) -> dict[str, float]:
        """``phase_<name>_s`` for every phase in :data:`PHASES` (0.0 when not opened) and for
        any other phase opened."""
        names = [*PHASES, *(n for n in self.totals if n not in PHASES)]
        return {phase_column(n): float(self.totals.get(n, 0.0)) for n in names}
