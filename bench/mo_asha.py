"""Compare a run pruned by MO-ASHA with the same search unpruned (run by hand, not a test).

Both runs must search the same configurations (``search.algorithm=random`` with the same
``search.seed`` and ``num_samples``), one with ``search.scheduler.name=mo_asha`` and one with
``none``. Reads only the two run directories (no Ray): the Pareto set of each on (validation
accuracy max, GFLOPs min) over trials that ran to the full budget, its 2-D hypervolume with
respect to a stated reference point, and the total trial time.

Usage::

    python -m engine.sweep pareto search.algorithm=random search.scheduler.name=mo_asha --out A
    python -m engine.sweep pareto search.algorithm=random search.scheduler.name=none --out B
    python bench/mo_asha.py A B --json reports/benchmarks/mo_asha.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from analysis.frontier import hypervolume_2d, objective_front

__all__ = ["main", "summarize_run"]

OBJECTIVES = [("valid_accuracy", "max"), ("gflops", "min")]


def summarize_run(run_dir: Path, ref: tuple[float, float]) -> dict[str, object]:
    df = pd.read_parquet(run_dir / "results.parquet")
    trials = df[df["trial_id"] != "teacher"]
    done = trials[trials["status"] == "ok"]
    front = objective_front(done, OBJECTIVES)
    return {
        "run_dir": str(run_dir),
        "trials": len(trials),
        "status": {k: int(v) for k, v in trials["status"].value_counts().items()},
        "total_trial_time_s": float(trials["trial_time_s"].sum()),
        "total_wall_s": float(trials["wall_s"].sum()),
        "front": front[["valid_accuracy", "gflops", "trial_id"]]
        .sort_values("gflops")
        .to_dict("records"),
        "hypervolume": hypervolume_2d(front[["valid_accuracy", "gflops"]].to_numpy(), ref),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pruned", type=Path, help="run directory with scheduler mo_asha")
    p.add_argument("full", type=Path, help="run directory with scheduler none")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    teacher = pd.read_parquet(args.full / "results.parquet").query("trial_id == 'teacher'")
    # reference point: accuracy 0 and the teacher's GFLOPs (no student is worse on both)
    ref = (0.0, float(teacher["gflops"].iloc[0]))
    out = {
        "reference_point": {"valid_accuracy": ref[0], "gflops": ref[1]},
        "mo_asha": summarize_run(args.pruned, ref),
        "unpruned": summarize_run(args.full, ref),
    }
    a, b = out["mo_asha"], out["unpruned"]
    out["time_ratio"] = a["total_trial_time_s"] / b["total_trial_time_s"]
    print(f"reference point (valid_accuracy, gflops) = {ref}")
    for name, r in (("mo_asha", a), ("unpruned", b)):
        print(
            f"{name:9s} trials {r['trials']} {r['status']}  hypervolume {r['hypervolume']:.5f}  "
            f"total trial time {r['total_trial_time_s']:.1f} s  front {len(r['front'])} points"
        )
    print(f"time ratio mo_asha / unpruned = {out['time_ratio']:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
