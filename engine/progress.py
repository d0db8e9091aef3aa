"""What a run shows on the terminal: one line per phase, with a progress bar for long ones.

:class:`Phase` is one phase (data, teacher, importance, sweep, report): on a terminal a
``tqdm`` bar with its ETA; when the stream is not a TTY (CI, a pipe, a file) plain lines
instead, at most one per ``step_pct`` % of the work or per ``every_s`` seconds, so a log
never fills with redraws. :class:`StepCounter` is a zero-CPU Ray actor that remote work
(the teacher's fine-tuning, which runs as a Ray task) bumps, and :func:`wait_with_progress`
follows it from the driver. :class:`ProgressTable` is the sweep's Tune callback: trials done
of the total and the best finished trial on the bar, the full per-trial table in the log.

Example::

    phase = Phase("teacher", total=120, unit="steps")
    for _ in range(120):
        phase.update()
    phase.close("trained: test accuracy 0.61")  # "[teacher] trained: test accuracy 0.61"
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any, TextIO

from ray.tune import Callback
from tqdm import tqdm

from engine.config import StudyConfig

__all__ = ["Phase", "ProgressTable", "StepCounter", "wait_with_progress"]

log = logging.getLogger(__name__)

_PLAIN = "{desc} {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}]{postfix}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _columns(stream: TextIO) -> int:
    """The terminal's width behind ``stream`` (0 when it reports none or is no terminal)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # no fileno (StringIO raises OSError)
        return 0


class Phase:
    """One phase's progress on ``stream`` (default stdout): a bar on a TTY, else plain lines.

    ``total`` None: no bar, only the closing line. Plain lines are printed when the work
    crosses the next ``step_pct`` % or ``every_s`` seconds after the last line, and once
    at 100 %; each reads ``[name] 40% 2/5 steps [00:03<00:04]`` (tqdm's ETA)."""

    def __init__(
        self,
        name: str,
        total: int | None = None,
        unit: str = "",
        *,
        stream: TextIO | None = None,
        step_pct: float = 10.0,
        every_s: float = 30.0,
    ) -> None:
        self.name, self.total, self.unit = name, total, unit
        self.stream = stream if stream is not None else sys.stdout
        self.step_pct, self.every_s = step_pct, every_s
        self.n = 0
        self.postfix = ""
        self._t0 = time.monotonic()
        self._last_line_t = self._t0
        self._last_line_pct = 0.0
        self._bar: tqdm | None = None
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total = None
        if total is not None:
            self.set_total(total)

    def set_total(self, total: int) -> None:
        """The amount of work (may be learnt late, e.g. from remote work)."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()
        elif self.tty:
            # a terminal that reports no size (0 columns, e.g. a pty nobody sized) would get an
            # empty bar from tqdm's own probe: fall back to 100 columns then
            cols = _columns(self.stream)
            self._bar = tqdm(
                total=total, desc=f"[{self.name}]", unit=f" {self.unit}" if self.unit else "it",
                file=self.stream, dynamic_ncols=cols > 0,
                ncols=None if cols > 0 else int(os.environ.get("COLUMNS", "0") or 0) or 100,
                leave=True, initial=self.n,
            )  # fmt: skip

    def set(self, n: int, postfix: str = "") -> None:
        """The work done so far is ``n`` (of ``total``); ``postfix`` is shown after the ETA."""
        n = min(n, self.total) if self.total is not None else n
        if n == self.n and postfix == self.postfix:
            return
        delta, self.n, self.postfix = n - self.n, n, postfix
        if self._bar is not None:
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(delta)
        elif self.total:
            pct = 100.0 * n / self.total
            now = time.monotonic()
            due = (
                pct >= self._last_line_pct + self.step_pct
                or now - self._last_line_t >= self.every_s
                or (n >= self.total and self._last_line_pct < 100.0)
            )
            if due:
                self._last_line_t, self._last_line_pct = now, pct
                self.stream.write(self.line() + "\n")
                self.stream.flush()

    def show(self, n: int, total: int) -> None:
        """``n`` of ``total`` done: a plain ``(done, total)`` callback for code that does not
        know this class (e.g. :func:`engine.importance.runner.compute_importance`)."""
        if total != self.total:
            self.set_total(total)
        self.set(n)

    def update(self, k: int = 1, postfix: str | None = None) -> None:
        self.set(self.n + k, self.postfix if postfix is None else postfix)

    def line(self) -> str:
        """The plain progress line for the work done so far."""
        return tqdm.format_meter(
            self.n, self.total, time.monotonic() - self._t0, prefix=f"[{self.name}]",
            unit=self.unit, bar_format=_PLAIN, postfix=self.postfix or None,
        )  # fmt: skip

    def close(self, summary: str | None = None) -> None:
        """End the bar and print ``[name] summary`` (if given)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if summary is not None:
            self.stream.write(f"[{self.name}] {summary}\n")
            self.stream.flush()

    def __enter__(self) -> Phase:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _counter_class() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class _StepCounter:
        """Work done and its total, which remote work raises and the driver reads."""

        def __init__(self) -> None:
            self.n, self.total = 0, None

        def set(self, n: int, total: int | None = None) -> None:
            self.n = max(self.n, int(n))
            if total is not None:
                self.total = int(total)

        def value(self) -> tuple[int, int | None]:
            return self.n, self.total

    return _StepCounter


class StepCounter:
    """A handle on a zero-CPU Ray actor holding (work done, total); picklable, so a Ray task
    can take it as an argument and call :meth:`set` (fire and forget) as it works. It is
    also a :class:`engine.train.ProgressReport` (``every`` 1, nothing measured), so
    ``train_classifier(..., report=counter)`` reports every optimizer step and its total."""

    every = 1

    def __init__(self) -> None:
        self.actor = _counter_class().remote()

    def set(self, n: int, total: int | None = None) -> None:
        self.actor.set.remote(n, total)

    def value(self) -> tuple[int, int | None]:
        import ray

        n, total = ray.get(self.actor.value.remote())
        return int(n), total

    def kill(self) -> None:
        import ray

        ray.kill(self.actor)

    def measure(self, model: Any) -> dict[str, float]:
        return {}

    def __call__(self, metrics: dict[str, Any], training: Any = None) -> None:
        self.set(int(metrics["step"]), getattr(training, "total", None))


def wait_with_progress(ref: Any, counter: StepCounter, phase: Phase, poll_s: float = 1.0) -> Any:
    """``ray.get(ref)``, moving ``phase`` to the counter's value every ``poll_s`` seconds."""
    import ray

    while True:
        ready, _ = ray.wait([ref], timeout=poll_s)
        n, total = counter.value()
        if total is not None and total != phase.total:
            phase.set_total(total)
        phase.set(n)
        if ready:
            return ray.get(ref)


class ProgressTable(Callback):
    """The sweep's progress: ``objectives`` = [(metric, mode)], the first decides "best".

    On the terminal, a :class:`Phase` of finished trials out of ``total`` with the best
    finished trial so far; in the log (``engine.progress`` at INFO, the run directory's
    ``driver.log``), the table of every trial when one finishes and at most every
    ``every_s`` seconds on intermediate results."""

    def __init__(
        self,
        objectives: list[tuple[str, str]],
        params: list[str],
        every_s: float = 20.0,
        total: int | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.objectives = objectives
        self.params = params
        self.every_s = every_s
        self.total = total
        self.stream = stream
        self._last: dict[str, dict[str, Any]] = {}
        self._state: dict[str, str] = {}
        self._printed = 0.0
        self._phase: Phase | None = None

    @classmethod
    def for_study(cls, cfg: StudyConfig, total: int | None = None) -> ProgressTable:
        return cls(
            [(o.metric, o.mode) for o in cfg.search.objectives], list(cfg.search.space),
            total=total,
        )  # fmt: skip

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its run config: no live bar
        state = dict(self.__dict__)
        state["_phase"] = None
        state["stream"] = None
        return state

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        """The sweep starts: its progress (and ETA) counts from here."""
        total = self.total or total_num_samples or 0
        self._phase = Phase("progress", total=total, unit="trials", stream=self.stream,
                            step_pct=5.0)  # fmt: skip

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._state[trial.trial_id] = "running"

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self._last[trial.trial_id] = {**result, "_values": trial.config.get("values", {})}
        self._state[trial.trial_id] = "running"
        if time.monotonic() - self._printed >= self.every_s:
            self.log_table()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = self._last.get(trial.trial_id, {})
        self._state[trial.trial_id] = str(last.get("status", "stopped"))
        self._finished(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._state[trial.trial_id] = "failed"
        self._finished(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._phase is not None:
            self._phase.close()
            self._phase = None

    def _finished(self, trials: list) -> None:
        self.log_table()
        done = sum(s != "running" for s in self._state.values())
        total = max(self.total or 0, len(trials), len(self._state))
        if self._phase is None:  # setup() was not called (e.g. a unit test)
            self.setup()
        assert self._phase is not None
        if total != self._phase.total:
            self._phase.set_total(total)
        self._phase.set(done, self.summary())

    def best(self) -> tuple[str, float] | None:
        """(trial id, value) of the best finished (ok) trial on the first objective."""
        best: tuple[float, str] | None = None
        metric, mode = self.objectives[0]
        for tid, state in self._state.items():
            v = self._last.get(tid, {}).get(metric)
            if state == "ok" and isinstance(v, float) and math.isfinite(v):
                score = v if mode == "max" else -v
                if best is None or score > best[0]:
                    best = (score, tid)
        return None if best is None else (best[1], self._last[best[1]][metric])

    def summary(self) -> str:
        """Trial counts by status and the best finished trial, for the progress line."""
        counts: dict[str, int] = {}
        for s in self._state.values():
            counts[s] = counts.get(s, 0) + 1
        text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if (best := self.best()) is not None:
            metric, mode = self.objectives[0]
            text += f"; best {metric} ({mode}): {_fmt(best[1])} by {best[0]}"
        return text

    def table(self) -> list[str]:
        """The table's lines (header, one per trial, then the current best)."""
        metrics = [m for m, _ in self.objectives]
        head = ["trial", "status", "iter", *self.params, *metrics]
        lines = [" | ".join(head)]
        for tid, state in self._state.items():
            r = self._last.get(tid, {})
            vals = [_fmt(r.get("_values", {}).get(p, "")) for p in self.params]
            objs = [_fmt(r.get(m, "")) for m in metrics]
            lines.append(
                " | ".join([tid, state, _fmt(r.get("training_iteration", 0)), *vals, *objs])
            )
        if (best := self.best()) is not None:
            metric, mode = self.objectives[0]
            lines.append(f"best {metric} ({mode}): {_fmt(best[1])} by {best[0]}")
        return lines

    def log_table(self) -> None:
        """The table into the log (``driver.log``), not the terminal."""
        self._printed = time.monotonic()
        log.info("trials:\n%s", "\n".join("  " + line for line in self.table()))
