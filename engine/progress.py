"""A live progress table for a sweep: a Tune callback that prints running/finished trials.

Printed when a trial finishes and at most every ``every_s`` seconds on intermediate results:
one line per trial (status, results so far, its searched values, objectives) and the best
finished trial on the first objective.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ray.tune import Callback

from engine.config import StudyConfig

__all__ = ["ProgressTable"]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


class ProgressTable(Callback):
    """Prints a table of trials; ``objectives`` = [(metric, mode)], the first decides "best"."""

    def __init__(
        self, objectives: list[tuple[str, str]], params: list[str], every_s: float = 20.0
    ) -> None:
        self.objectives = objectives
        self.params = params
        self.every_s = every_s
        self._last: dict[str, dict[str, Any]] = {}
        self._state: dict[str, str] = {}
        self._printed = 0.0

    @classmethod
    def for_study(cls, cfg: StudyConfig) -> ProgressTable:
        return cls([(o.metric, o.mode) for o in cfg.search.objectives], list(cfg.search.space))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._state[trial.trial_id] = "running"

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self._last[trial.trial_id] = {**result, "_values": trial.config.get("values", {})}
        self._state[trial.trial_id] = "running"
        if time.monotonic() - self._printed >= self.every_s:
            self.print_table()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = self._last.get(trial.trial_id, {})
        self._state[trial.trial_id] = str(last.get("status", "stopped"))
        self.print_table()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._state[trial.trial_id] = "failed"
        self.print_table()

    def table(self) -> list[str]:
        """The table's lines (header, one per trial, then the current best)."""
        metrics = [m for m, _ in self.objectives]
        head = ["trial", "status", "iter", *self.params, *metrics]
        lines = [" | ".join(head)]
        best: tuple[float, str] | None = None
        metric, mode = self.objectives[0]
        for tid, state in self._state.items():
            r = self._last.get(tid, {})
            vals = [_fmt(r.get("_values", {}).get(p, "")) for p in self.params]
            objs = [_fmt(r.get(m, "")) for m in metrics]
            lines.append(
                " | ".join([tid, state, _fmt(r.get("training_iteration", 0)), *vals, *objs])
            )
            v = r.get(metric)
            if state == "ok" and isinstance(v, float) and math.isfinite(v):
                score = v if mode == "max" else -v
                if best is None or score > best[0]:
                    best = (score, tid)
        if best is not None:
            r = self._last[best[1]]
            lines.append(f"best {metric} ({mode}): {_fmt(r[metric])} by {best[1]}")
        return lines

    def print_table(self) -> None:
        self._printed = time.monotonic()
        counts: dict[str, int] = {}
        for s in self._state.values():
            counts[s] = counts.get(s, 0) + 1
        print(f"[progress] {counts}", flush=True)
        print("\n".join("  " + line for line in self.table()), flush=True)
