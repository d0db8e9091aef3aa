"""What intermediate reports cost a trial: one prune trial built with and without a report
every N steps (run by hand; issue 18's trial-overhead rule).

A trial with ``search.report_every_steps`` set measures the model being trained every N
steps (:class:`engine.trial.TrialReporter`): validation quality on the study's validation
split, and the cost metrics (fvcore GFLOPs, parameters, weight bytes) counted again only when
the architecture changed. This bench builds the same student (``--arm``, one of
:data:`bench.peers.ARMS` run through :func:`engine.trial.build_student`, at ``--level``) with
each ``--every`` (0 = no reports) for each seed, in this one process, one after another, and
records per build: wall time, the number of reports, the time inside the reporter's
``measure`` (split into the reports that counted the cost metrics and those that reused
them), and the trial's final measurement (:func:`engine.assess.assess` of valid and test) as
the yardstick the rule names. Reports go to a list, not to Tune.

Usage::

    python -m bench.report_cost --every 0 10 5 --seeds 0 1 --json reports/benchmarks/report_cost.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.peers import ARMS, LEVELS, _prepare, arm_options
from engine.trial import TrialReporter, _structure_key

__all__ = ["TimedReporter", "main"]


@dataclass
class TimedReporter(TrialReporter):
    """A :class:`TrialReporter` that times each ``measure`` and says whether it counted the
    cost metrics (the architecture changed) or reused them."""

    timings: list[dict[str, Any]] = field(default_factory=list)

    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        counted = _structure_key(model) not in self._cost
        t0 = time.perf_counter()
        out = super().measure(model)
        self.timings.append({"s": time.perf_counter() - t0, "counted_cost": counted})
        return out


def one(study: Any, shared: Any, arm: str, level: str, seed: int, every: int,
        opts: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Build ``arm`` at ``level`` for ``seed`` with a report every ``every`` steps (0: none)."""
    from engine.assess import assess
    from engine.config import with_values
    from engine.trial import build_student

    cpu = torch.device("cpu")
    cfg = with_values(study, ARMS[arm].values(LEVELS[level], opts))
    sent: list[dict[str, Any]] = []
    reporter = (
        TimedReporter(cfg, shared.splits["valid"], cpu, every, sent.append) if every else None
    )
    t0 = time.perf_counter()
    model, record = build_student(cfg, shared, seed, cpu, report=reporter)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    row = assess(model, {k: shared.splits[k] for k in ("valid", "test")}, cfg, cpu, record=record)
    final_s = time.perf_counter() - t0
    timings = reporter.timings if reporter else []
    counted = [t["s"] for t in timings if t["counted_cost"]]
    reused = [t["s"] for t in timings if not t["counted_cost"]]
    return {
        "arm": arm, "level": level, "seed": seed, "every": every, "build_s": build_s,
        "final_measure_s": final_s, "reports": len(sent), "report_s": sum(counted + reused),
        "reports_counting_cost": len(counted), "report_counting_cost_s": sum(counted),
        "report_reusing_cost_mean_s": float(np.mean(reused)) if reused else None,
        "accuracy": row.get("accuracy"), "valid_accuracy": row.get("valid_accuracy"),
        "valid_examples": len(shared.splits["valid"]["labels"]),
    }  # fmt: skip


def summarize(rows: list[dict[str, Any]]) -> str:
    """Per ``every``: mean build time, reports, time in reports and its share of the build."""
    out = [
        "| report every | builds | build s (mean) | reports | time in reports s | "
        "share of build | one report s (cost reused) | report counting GFLOPs s | "
        "final measurement s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for every in sorted({r["every"] for r in rows}):
        sel = [r for r in rows if r["every"] == every]
        b = np.mean([r["build_s"] for r in sel])
        rep = np.mean([r["report_s"] for r in sel])
        one_r = [r["report_reusing_cost_mean_s"] for r in sel if r["report_reusing_cost_mean_s"]]
        cnt = [r["report_counting_cost_s"] for r in sel if r["reports_counting_cost"]]
        out.append(
            f"| {every or 'never'} | {len(sel)} | {b:.1f} | {np.mean([r['reports'] for r in sel]):.0f} "
            f"| {rep:.1f} | {rep / b:.1%} | {np.mean(one_r) if one_r else float('nan'):.2f} "
            f"| {np.mean(cnt) if cnt else float('nan'):.2f} "
            f"| {np.mean([r['final_measure_s'] for r in sel]):.1f} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="prune-recipe")
    p.add_argument("--set", nargs="*", default=[])
    p.add_argument("--arm", default="engine-oneshot-wt-lr3e-4", choices=list(ARMS))
    p.add_argument("--level", default="2.7x", choices=list(LEVELS))
    p.add_argument("--every", nargs="+", type=int, default=[0, 10, 5])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=85)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=Path("reports/benchmarks/report_cost.json"))
    a = p.parse_args(argv)
    if any(e < 0 for e in a.every):
        p.error("--every takes 0 (no reports) or a positive step count")
    torch.set_num_threads(a.threads)
    study, shared, _ = _prepare(a.study, a.set)
    opts = arm_options(shared, a.steps, score_batches=8, recovery_lr=1e-4, alpha_hidden=1.0)
    rows = []
    for seed in a.seeds:  # every setting once per seed, alternating, so drift hits all alike
        for every in a.every:
            rows.append(one(study, shared, a.arm, a.level, seed, every, opts))
            r = rows[-1]
            print(f"[report_cost] seed {seed} every {every}: build {r['build_s']:.1f} s, "
                  f"{r['reports']} reports {r['report_s']:.1f} s", flush=True)  # fmt: skip
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps({"threads": a.threads, "rows": rows}, indent=1))
    print(summarize(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
