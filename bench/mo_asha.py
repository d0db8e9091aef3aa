"""Compare a run pruned by MO-ASHA with an unpruned search (run by hand, not a test).

Both runs use ``search.algorithm=random`` with the same ``search.seed``: random points are
drawn one after another from one generator, so a pruned run with ``num_samples`` 3× larger
searches the unpruned run's configurations first and then more. Reads only the two run
directories (no Ray): for each run, the Pareto set on (validation accuracy max, GFLOPs min)
over trials that ran to the full budget, its 2-D hypervolume with respect to a stated
reference point, the total trial time and distill steps, and the **hypervolume as the run
went**: at each trial's end, the front of the trials finished by then against the trial time
spent by then (every trial's time up to that moment, running ones included) and the distill
steps done by finished trials. Trial time depends on the machine's load; steps do not.

It also checks that configurations both runs trained to the full budget got the same
figures (training is deterministic), so the unpruned run can be reused for a larger pruned one.

Usage::

    python -m engine.sweep pareto search.algorithm=random search.num_samples=24 \\
        search.scheduler.name=mo_asha --out A
    python -m engine.sweep pareto search.algorithm=random search.num_samples=8 \\
        search.scheduler.name=none --out B
    python bench/mo_asha.py A B --json reports/benchmarks/mo_asha.json [--load-log LOG]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from sweepcore.pareto import hypervolume_2d, objective_front

__all__ = ["hv_curve", "main", "summarize_run", "trial_times"]

OBJECTIVES = [("valid_accuracy", "max"), ("gflops", "min")]


def trial_times(run_dir: Path) -> pd.DataFrame:
    """``trial_id``, ``start``, ``end`` (Unix s) from each trial's last Tune result."""
    rows = []
    for f in (run_dir / "tune").glob("run_trial_*/result.json"):
        lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if not lines:
            continue
        last = lines[-1]
        end = float(last["timestamp"])
        rows.append(
            {"trial_id": last["trial_id"], "start": end - float(last["time_total_s"]), "end": end}
        )
    return pd.DataFrame(rows, columns=["trial_id", "start", "end"])


def hv_curve(trials: pd.DataFrame, ref: tuple[float, float]) -> list[dict[str, float]]:
    """Hypervolume after each trial's end (see the module docstring), in end order."""
    t = trials.sort_values("end").reset_index(drop=True)
    out = []
    for i, row in t.iterrows():
        done = t.iloc[: i + 1]
        ok = done[done["status"] == "ok"]
        front = objective_front(ok, OBJECTIVES)
        spent = float(np.clip(np.minimum(t["end"], row["end"]) - t["start"], 0, None).sum())
        out.append(
            {
                "trial_id": row["trial_id"],
                "status": row["status"],
                "trials_finished": i + 1,
                "trial_time_s": spent,
                "steps": float(done["step"].sum()),
                "hypervolume": hypervolume_2d(front[["valid_accuracy", "gflops"]].to_numpy(), ref),
            }
        )
    return out


def summarize_run(run_dir: Path, ref: tuple[float, float]) -> dict[str, object]:
    df = pd.read_parquet(run_dir / "results.parquet")
    trials = df[df["trial_id"] != "teacher"].merge(trial_times(run_dir), on="trial_id")
    done = trials[trials["status"] == "ok"]
    front = objective_front(done, OBJECTIVES)
    man = json.loads((run_dir / "manifest.json").read_text())
    return {
        "run_dir": str(run_dir),
        "git_commit": man.get("git_commit"),
        "started": man.get("started"),
        "scheduler": man["config"]["search"]["scheduler"],
        "num_samples": man["config"]["search"]["num_samples"],
        "trials": len(trials),
        "status": {k: int(v) for k, v in trials["status"].value_counts().items()},
        "total_trial_time_s": float(trials["trial_time_s"].sum()),
        "total_steps": float(trials["step"].sum()),
        "front": front[["valid_accuracy", "gflops", "trial_id", "config_id"]]
        .sort_values("gflops")
        .to_dict("records"),
        "hypervolume": hypervolume_2d(front[["valid_accuracy", "gflops"]].to_numpy(), ref),
        "curve": hv_curve(trials, ref),
        "_trials": trials,
    }


def same_configs(a: pd.DataFrame, b: pd.DataFrame) -> list[dict[str, object]]:
    """Configurations both runs trained to the full budget, with both runs' figures."""
    cols = ["config_id", "valid_accuracy", "gflops", "accuracy"]
    x = a[a["status"] == "ok"][cols].merge(
        b[b["status"] == "ok"][cols], on="config_id", suffixes=("_pruned", "_full")
    )
    return x.to_dict("records")


def _load(log: Path | None) -> dict[str, float] | None:
    """1-minute load averages from lines ``HH:MM:SS l1 l5 l15 ...``."""
    if log is None:
        return None
    l1 = [float(x.split()[1]) for x in log.read_text().splitlines() if len(x.split()) > 2]
    return {"samples": len(l1), "min": min(l1), "mean": float(np.mean(l1)), "max": max(l1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pruned", type=Path, help="run directory with scheduler mo_asha")
    p.add_argument("full", type=Path, help="run directory with scheduler none")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--load-log", type=Path, help="load averages sampled during the pruned run")
    args = p.parse_args(argv)
    teacher = pd.read_parquet(args.full / "results.parquet").query("trial_id == 'teacher'")
    # reference point: accuracy 0 and the teacher's GFLOPs (no student is worse on both)
    ref = (0.0, float(teacher["gflops"].iloc[0]))
    a, b = summarize_run(args.pruned, ref), summarize_run(args.full, ref)
    shared = same_configs(a.pop("_trials"), b.pop("_trials"))  # type: ignore[arg-type]
    target = float(b["hypervolume"])  # type: ignore[arg-type]
    reached = next((c for c in a["curve"] if c["hypervolume"] >= target), None)  # type: ignore[union-attr]
    budget = float(b["total_trial_time_s"])  # type: ignore[arg-type]
    within = [c for c in a["curve"] if c["trial_time_s"] <= budget]  # type: ignore[union-attr]
    out = {
        "reference_point": {"valid_accuracy": ref[0], "gflops": ref[1]},
        "mo_asha": a,
        "unpruned": b,
        "time_ratio": float(a["total_trial_time_s"]) / budget,  # type: ignore[arg-type]
        "steps_ratio": float(a["total_steps"]) / float(b["total_steps"]),  # type: ignore[arg-type]
        "mo_asha_reaches_unpruned_hv": reached,
        "mo_asha_hv_within_unpruned_time": within[-1]["hypervolume"] if within else None,
        "configs_in_both_at_full_budget": shared,
        "identical_figures_on_shared_configs": all(
            r["valid_accuracy_pruned"] == r["valid_accuracy_full"]
            and r["gflops_pruned"] == r["gflops_full"]
            for r in shared
        ),
        "load_average_1min_during_pruned_run": _load(args.load_log),
    }
    print(f"reference point (valid_accuracy, gflops) = {ref}")
    for name, r in (("mo_asha", a), ("unpruned", b)):
        print(
            f"{name:9s} trials {r['trials']} {r['status']}  hypervolume {r['hypervolume']:.5f}  "
            f"total trial time {r['total_trial_time_s']:.1f} s  steps {r['total_steps']:.0f}  "
            f"front {len(r['front'])} points"  # type: ignore[arg-type]
        )
    print(
        f"time ratio mo_asha / unpruned = {out['time_ratio']:.3f}, steps {out['steps_ratio']:.3f}"
    )
    if reached:
        print(
            f"mo_asha reaches the unpruned hypervolume {target:.5f} after {reached['trial_time_s']:.0f} s "
            f"of trial time and {reached['steps']:.0f} steps ({reached['trials_finished']} trials ended)"
        )
    else:
        print(f"mo_asha does not reach the unpruned hypervolume {target:.5f}")
    print(
        f"configurations trained to the full budget by both: {len(shared)}, identical figures: "
        f"{out['identical_figures_on_shared_configs']}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
