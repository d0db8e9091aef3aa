"""Time to the Pareto front: grid, random, multi-objective Optuna and MO-ASHA at equal compute.

A tabular benchmark on the ``pareto`` study's space, made discrete (issue 30):

1. ``grid``: the real sweep (``python -m engine.sweep pareto`` through the CLI) of every point
   of :data:`SPACE` — 6 depths × 3 strategies × 3 temperatures × 3 distillation weights, one
   seed, no scheduler, intermediate reports every 10 steps as the study has them (no trial
   checkpoints, no saved students: fault tolerance and files are not search). Training is
   deterministic (``tests/e2e/test_multinode.py``, first test), so this run is the *table*:
   every point's validation accuracy and GFLOPs at each report, and the trial-seconds it took
   to get there.
2. ``replay``: each search — ``random``, ``optuna_mo`` (multi-objective TPE) and ``optuna_mo``
   with ``mo_asha`` — under search seeds 0, 1, 2, run by the engine's own search plans and
   schedulers (:func:`engine.search.plan_search`, :func:`engine.schedulers.build_scheduler`) in
   a real Ray Tune, two trials at a time as the study runs them. Its trainable does not train:
   it looks the configuration up in the table and reports the recorded results, sleeping the
   recorded time between them scaled by ``--speed`` so that trials finish in the order they
   would. A trial stopped by MO-ASHA is charged the trial-seconds up to its last report.
   The grid itself is replayed the same way.

For every run, after each trial's end: the hypervolume of the front (validation accuracy max,
GFLOPs min; trials that reached the full budget) against the reference point (accuracy 0, the
teacher's GFLOPs), the cumulative trial-seconds (every trial's seconds up to that moment,
running ones included) and the wall time of the same sequence on 2 slots (list scheduling with
the measured 0.37 s between trials, ``reports/benchmarks/trial_overhead.md``). Each search gets
the grid's total trial-seconds. The verdict: which reaches 95 % of the grid's final
hypervolume with the fewest trial-seconds (median over search seeds).

What it does not measure: the engine's own overhead per trial (6.7 % of a slot, measured
separately), and points between the discrete values (the real study searches ranges).

Usage (from a detached worktree)::

    python -m bench.time_to_front grid --out /work/ttf/grid
    python -m bench.time_to_front replay /work/ttf/grid --seeds 0 1 2 \\
        --json reports/benchmarks/time_to_front.json --plot reports/benchmarks/time_to_front.png
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ray.tune.stopper import Stopper

from sweepcore.pareto import hypervolume_2d, objective_front

__all__ = ["SPACE", "BudgetStopper", "curve", "load_table", "main", "replay", "wall_clock"]

REPO = Path(__file__).resolve().parents[1]
SPACE = {
    "pipeline.truncate.keep_layers": [1, 2, 3, 4, 5, 6],
    "pipeline.truncate.strategy": ["fisher", "ablation", "uniform"],
    "pipeline.distill.temperature": [1.0, 2.83, 8.0],
    "pipeline.distill.alpha_distill": [0.1, 0.5, 0.9],
}
POINTS = int(np.prod([len(v) for v in SPACE.values()]))
OBJECTIVES = [("valid_accuracy", "max"), ("gflops", "min")]
GAP_S = 0.37  # measured between two trials on a reused worker (trial_overhead.md)
SLOTS = 2
METHODS: dict[str, list[str]] = {
    "grid": ["search.algorithm=grid", "search.scheduler.name=none"],
    "random": ["search.algorithm=random", "search.scheduler.name=none"],
    "optuna_mo": ["search.algorithm=optuna_mo", "search.scheduler.name=none"],
    "optuna_mo+mo_asha": ["search.algorithm=optuna_mo", "search.scheduler.name=mo_asha"],
}


def _space_override() -> str:
    return "search.space=" + json.dumps(SPACE)


def _key(values: dict[str, Any]) -> str:
    return json.dumps({k: values[k] for k in sorted(SPACE)}, sort_keys=True)


def load_table(grid_dir: Path) -> dict[str, dict[str, Any]]:
    """Each grid point's recorded results, by its values: ``results`` (each report's
    objectives and ``time_total_s``, the last one the trial's final row) and ``status``."""
    table: dict[str, dict[str, Any]] = {}
    for f in sorted((grid_dir / "tune").glob("run_trial_*/result.json")):
        lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if not lines:
            continue
        values = lines[0]["config"]["values"]
        results = [
            {
                "valid_accuracy": r.get("valid_accuracy"),
                "gflops": r.get("gflops"),
                "time_total_s": float(r["time_total_s"]),
            }
            for r in lines
        ]
        table[_key(values)] = {"results": results, "status": lines[-1].get("status")}
    return table


def _trainable(config: dict[str, Any], *, table: dict[str, Any], speed: float) -> None:
    from ray import tune

    entry = table[_key(config["values"])]
    before = 0.0
    for r in entry["results"]:
        time.sleep(max(0.0, r["time_total_s"] - before) / speed)
        before = r["time_total_s"]
        last = r is entry["results"][-1]
        tune.report(
            {
                "valid_accuracy": r["valid_accuracy"],
                "gflops": r["gflops"],
                "charged_s": r["time_total_s"],
                "status": entry["status"] if last else "running",
            }
        )


class BudgetStopper(Stopper):
    """Ends the replay once its trials have been charged ``budget`` trial-seconds."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.charged: dict[str, float] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self.charged[trial_id] = float(result.get("charged_s", 0.0))
        return False

    def stop_all(self) -> bool:
        return sum(self.charged.values()) >= self.budget


def replay(
    grid_dir: Path,
    method: str,
    seed: int,
    num_samples: int,
    speed: float,
    storage: Path,
    budget: float | None = None,
) -> pd.DataFrame:
    """One search replayed against the table: a row per trial, in start order, with
    ``charged_s`` (its trial-seconds), ``status`` (``ok`` or ``stopped``) and objectives."""
    import ray
    from ray import tune
    from ray.tune import RunConfig, TuneConfig, Tuner

    from engine.config import load_study
    from engine.schedulers import build_scheduler
    from engine.search import plan_search

    table = load_table(grid_dir)
    cfg = load_study(
        "pareto",
        [
            _space_override(),
            *METHODS[method],
            f"search.seed={seed}",
            f"search.num_samples={num_samples}",
            f"search.max_concurrent_trials={SLOTS}",
        ],
    )
    max_t = max(len(e["results"]) for e in table.values())
    plan = plan_search(cfg)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, table=table, speed=speed), {"cpu": 1}
    )
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=SLOTS, include_dashboard=False, log_to_driver=False)
    tuner = Tuner(
        trainable,
        param_space=plan.param_space,
        tune_config=TuneConfig(
            search_alg=plan.search_alg,
            scheduler=build_scheduler(cfg, max_t),
            num_samples=plan.num_samples,
            max_concurrent_trials=SLOTS,
            reuse_actors=True,
        ),
        run_config=RunConfig(
            name=f"{method}-{seed}",
            storage_path=str(storage),
            verbose=0,
            stop=BudgetStopper(budget) if budget is not None else None,
        ),
    )
    grid = tuner.fit()
    rows = []
    for r in grid:
        df = r.metrics_dataframe
        if df is None or df.empty or "charged_s" not in df:
            continue  # started as the budget ran out: it reported nothing, was charged nothing
        last = df.iloc[-1]
        rows.append(
            {
                "trial_id": r.metrics["trial_id"],
                "values": _key(r.config["values"]),
                "started": float(last["timestamp"]) - float(last["time_total_s"]),
                "charged_s": float(last["charged_s"]),
                "status": "ok" if last["status"] == "ok" else "stopped",
                "valid_accuracy": float(last["valid_accuracy"]),
                "gflops": float(last["gflops"]),
            }
        )
    return pd.DataFrame(rows).sort_values(["started", "trial_id"]).reset_index(drop=True)


def wall_clock(charged: list[float], slots: int = SLOTS, gap: float = GAP_S) -> list[float]:
    """End time of each trial, in start order, on ``slots`` slots (list scheduling: each trial
    takes the earliest free slot, ``gap`` after it freed)."""
    free = [0.0] * slots
    ends = []
    for c in charged:
        start = heapq.heappop(free)
        end = start + gap + c
        heapq.heappush(free, end)
        ends.append(end)
    return ends


def curve(
    trials: pd.DataFrame, ref: tuple[float, float], slots: int = SLOTS, gap: float = GAP_S
) -> pd.DataFrame:
    """Hypervolume after each trial's end (in end order on the simulated slots), with the
    cumulative trial-seconds and wall time at that moment."""
    t = trials.copy()
    ends = np.asarray(wall_clock(list(t["charged_s"]), slots, gap))
    t["end"] = ends
    t["start"] = ends - t["charged_s"].to_numpy()
    t = t.sort_values("end").reset_index(drop=True)
    out = []
    for i, row in t.iterrows():
        done = t.iloc[: i + 1]
        ok = done[done["status"] == "ok"]
        front = objective_front(ok, OBJECTIVES)
        spent = float(np.clip(np.minimum(t["end"], row["end"]) - t["start"], 0, None).sum())
        out.append(
            {
                "trials_ended": i + 1,
                "trial_s": spent,
                "wall_s": float(row["end"]),
                "hypervolume": hypervolume_2d(front[["valid_accuracy", "gflops"]].to_numpy(), ref)
                if len(front)
                else 0.0,
            }
        )
    return pd.DataFrame(out)


def _first(c: pd.DataFrame, target: float, col: str) -> float | None:
    hit = c[c["hypervolume"] >= target]
    return float(hit[col].iloc[0]) if len(hit) else None


def run_grid(out: Path) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, "-m", "engine.sweep", "pareto", _space_override(), *METHODS["grid"]]
    # no trial checkpoints (fault tolerance, not search) and no saved students: the table
    # needs the reports only
    cmd += ["search.checkpoint_every=null", "measure.save_models=false", "--no-report"]
    cmd += ["--out", str(out)]
    with (out.parent / f"{out.name}.log").open("w") as log:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"the grid run exited {rc} (see {out.name}.log)")


def _plot(curves: dict[str, list[pd.DataFrame]], grid_hv: float, path: Path) -> None:
    """Share of the grid's final hypervolume against trial-minutes and wall minutes (log x:
    the searches differ in the first minutes; the 95 % and 99 % lines marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = dict(zip(METHODS, ["black", "tab:blue", "tab:orange", "tab:green"], strict=True))
    for method, cs in curves.items():
        for i, c in enumerate(cs):
            for ax, col in zip(axes, ("trial_s", "wall_s"), strict=True):
                ax.step(
                    c[col] / 60,
                    c["hypervolume"] / grid_hv,
                    where="post",
                    color=colors[method],
                    alpha=0.8,
                    label=method if i == 0 else None,
                )
    for ax, label in zip(
        axes, ("cumulative trial-minutes (log)", "wall minutes on 2 slots (log)"), strict=True
    ):
        for q, ls in ((0.95, "--"), (0.99, ":")):
            ax.axhline(q, color="grey", ls=ls, lw=1, label=f"{q:.0%} of the grid's")
        ax.set_xscale("log")
        ax.set_ylim(0.9, 1.005)
        ax.set_xlabel(label)
        ax.set_ylabel("hypervolume / the full grid's")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("Time to the Pareto front on the pareto study's space (one line per search seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_json(json_path: Path, path: Path) -> None:
    """The plot again from a replay's JSON (no replay)."""
    d = json.loads(json_path.read_text())
    curves: dict[str, list[pd.DataFrame]] = {}
    for run in d["runs"]:
        curves.setdefault(run["method"], []).append(pd.DataFrame(run["curve"]))
    _plot(curves, float(d["grid_hypervolume"]), path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grid", help="the real grid run (the table)")
    g.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("replay", help="replay the searches against the grid's table")
    r.add_argument("grid_dir", type=Path)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--speed", type=float, default=40.0, help="recorded seconds per replay second")
    r.add_argument("--samples", type=int, default=3 * POINTS, help="cap per search")
    r.add_argument("--json", type=Path)
    r.add_argument("--plot", type=Path)
    pl = sub.add_parser("plot", help="the plot again from a replay's --json")
    pl.add_argument("json", type=Path)
    pl.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.cmd == "plot":
        plot_json(args.json, args.out)
        return 0
    if args.cmd == "grid":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        run_grid(args.out)
        return 0
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    table = load_table(args.grid_dir)
    if len(table) != POINTS:
        raise SystemExit(f"the grid run has {len(table)} of {POINTS} points")
    teacher = pd.read_parquet(args.grid_dir / "results.parquet").query("trial_id == 'teacher'")
    ref = (0.0, float(teacher["gflops"].iloc[0]))
    budget = sum(e["results"][-1]["time_total_s"] for e in table.values())
    storage = Path(tempfile.mkdtemp(prefix="ttf-"))
    curves: dict[str, list[pd.DataFrame]] = {}
    runs = []
    for method in METHODS:
        for seed in [0] if method == "grid" else args.seeds:
            samples = POINTS if method == "grid" else args.samples
            cap = None if method == "grid" else budget * 1.05
            trials = replay(args.grid_dir, method, seed, samples, args.speed, storage, cap)
            c = curve(trials, ref)
            c = c[c["trial_s"] <= budget * 1.0001]  # equal compute: the grid's trial-seconds
            curves.setdefault(method, []).append(c)
            runs.append({"method": method, "seed": seed, "trials": len(trials), "curve": c})
            print(
                f"{method} seed {seed}: {len(trials)} trials, final hv "
                f"{c['hypervolume'].iloc[-1]:.5f}",
                flush=True,
            )
    grid_hv = float(curves["grid"][0]["hypervolume"].iloc[-1])
    target = 0.95 * grid_hv
    summary = []
    for run in runs:
        c = run.pop("curve")
        run.update(
            final_hypervolume=float(c["hypervolume"].iloc[-1]),
            trial_s_to_95=_first(c, target, "trial_s"),
            wall_s_to_95=_first(c, target, "wall_s"),
            trials_to_95=_first(c, target, "trials_ended"),
            curve=c.to_dict("records"),
        )
        summary.append(run)
    table_rows = []
    for method in METHODS:
        rs = [s for s in summary if s["method"] == method]
        t95 = [s["trial_s_to_95"] for s in rs]
        table_rows.append(
            {
                "method": method,
                "seeds": len(rs),
                "reached_95": sum(t is not None for t in t95),
                "median_trial_s_to_95": float(np.median([t for t in t95 if t is not None]))
                if any(t is not None for t in t95)
                else None,
                "median_share_of_grid_compute": float(
                    np.median([t / budget if t is not None else np.inf for t in t95])
                ),
                "median_final_hv": float(np.median([s["final_hypervolume"] for s in rs])),
            }
        )
    print(pd.DataFrame(table_rows).to_string())
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "space": SPACE,
                    "reference_point": ref,
                    "grid_trial_s": budget,
                    "grid_hypervolume": grid_hv,
                    "target": target,
                    "speed": args.speed,
                    "summary": table_rows,
                    "runs": summary,
                },
                indent=1,
                default=float,
            )
        )
    if args.plot:
        _plot(curves, grid_hv, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
