"""Where a trial slot's time goes: a study run with fresh workers per trial and with reused ones.

Runs a study through the real CLI (``python -m engine.sweep``) once per mode —
``fresh`` (``search.reuse_actors=false``: a new Ray actor per trial, the engine before issue
30) and ``reused`` (the default) — into ``--work``, one teacher cache for all, then splits
every trial slot from its row (:func:`slot_table`):

- before the trial's own clock starts —
  - ``between_s``: a reused worker, from its previous trial's end (the final row written) to
    this trial's start: Tune takes the result, stops the trial, resets the actor;
  - ``actor_start_s``: a fresh worker, from the slot's freeing (a worker's last trial ending
    on that node, or the Tune experiment's start for the first wave) to the new process
    beginning to import the engine: Tune's scheduling, Ray's worker process;
  - ``imports_s``: that process importing torch, transformers and the engine
    (``worker_import_s``);
  - ``actor_setup_s``: from the imports' end to the trial's start (the trainable set up,
    Tune starting it);
- inside it, the trial's ``phase_*_s`` columns (:mod:`engine.phases`): ``reset`` (clean
  process state), ``fetch`` (the shared inputs: teacher, tokenised data, importance),
  ``build`` (teacher and student models), ``train`` (every stage), ``report``
  (intermediate reports: validation and cost of the model in training), ``save``, ``eval``
  (quality on valid/test), ``measure`` (GFLOPs, sizes, in-trial latency), and ``other``
  (the rest of the trial's own time: configuration, placement, ledger).

A slot is all of them; ``work`` is ``train + eval``, the rest is overhead. The gap between
one trial's end and the next one's start on a slot is everything before the trial's clock.

Usage (from a detached worktree, so the workers import the engine as committed)::

    python -m bench.trial_overhead --studies smoke ablation --modes fresh reused \\
        --json reports/benchmarks/trial_overhead.json
    python -m bench.trial_overhead --summarize RUN_DIR [RUN_DIR ...]
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

import pandas as pd

__all__ = ["BEFORE", "INSIDE", "main", "run_study", "slot_table", "summarize"]

REPO = Path(__file__).resolve().parents[1]
BEFORE = ("between_s", "actor_start_s", "imports_s", "actor_setup_s")
INSIDE = ("reset", "fetch", "build", "train", "report", "save", "eval", "measure")
WORK = ("train", "eval")
MODES = {"fresh": ["search.reuse_actors=false"], "reused": ["search.reuse_actors=true"]}
STUDY_OVERRIDES = {
    # the smoke study at 4 seeds: 8 trials on 2 slots, so every slot runs several trials
    "smoke": ["repeats=[0, 1, 2, 3]"],
    "ablation": [],
}


def _phase(name: str) -> str:
    return f"phase_{name}_s"


def slot_table(trials: pd.DataFrame, tune_started_at: float) -> pd.DataFrame:
    """One row per trial: the seconds of its slot spent in each part (module docstring).

    ``trials``: rows with ``trial_id``, ``node_id``, ``started_at``, ``finished_at``,
    ``wall_s``, ``worker_pid``, ``worker_trial``, ``worker_import_s``,
    ``worker_import_started_at`` and the ``phase_*_s`` columns. A fresh worker takes the
    earliest slot freed on its node before it began importing (a slot is freed when a
    worker's last trial ends); one that began before any slot on its node was freed took
    a slot free from the experiment's start, ``tune_started_at``.
    """
    t = trials.sort_values("started_at").reset_index(drop=True)
    last_of_pid = t.groupby("worker_pid")["started_at"].transform("max") == t["started_at"]
    out = []
    for node, on_node in t.groupby("node_id", sort=False):
        freed = sorted(float(e) for e in on_node.loc[last_of_pid[on_node.index], "finished_at"])
        heap: list[float] = []
        arrivals = on_node[on_node["worker_trial"] == 1].sort_values("worker_import_started_at")
        origin: dict[int, float] = {}
        for i, r in arrivals.iterrows():
            while freed and freed[0] <= r["worker_import_started_at"]:
                heapq.heappush(heap, freed.pop(0))
            origin[i] = heapq.heappop(heap) if heap else tune_started_at
        prev_end = on_node.groupby("worker_pid")["finished_at"].shift(1)
        for i, r in on_node.iterrows():
            row: dict[str, Any] = {"trial_id": r["trial_id"], "node_id": node}
            row.update(dict.fromkeys(BEFORE, 0.0))
            if r["worker_trial"] == 1:
                # the slot's time from its freeing to the trial's start, cut at the import's
                # start and end (imports done before the slot was freed are not this slot's)
                start, started = origin[i], float(r["started_at"])
                imp_start = float(r["worker_import_started_at"])
                imp0 = min(max(imp_start, start), started)
                imp1 = min(max(imp_start + float(r["worker_import_s"]), imp0), started)
                row["actor_start_s"] = imp0 - start
                row["imports_s"] = imp1 - imp0
                row["actor_setup_s"] = started - imp1
            else:
                row["between_s"] = float(r["started_at"]) - float(prev_end[i])
            inside = 0.0
            for p in INSIDE:
                v = r.get(_phase(p))
                row[p] = 0.0 if v is None or pd.isna(v) else float(v)  # NaN: phase not run
                inside += row[p]
            row["other"] = float(r["wall_s"]) - inside
            row["gap_s"] = sum(row[b] for b in BEFORE)
            row["slot_s"] = row["gap_s"] + float(r["wall_s"])
            row["work_s"] = sum(row[p] for p in WORK)
            out.append(row)
    return pd.DataFrame(out)


def summarize(run_dir: Path) -> dict[str, Any]:
    """The run's slot table summed over trials, with shares of the slots' total time."""
    df = pd.read_parquet(run_dir / "results.parquet")
    trials = df[df["started_at"].notna()]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    timings = manifest["timings"]
    table = slot_table(trials, float(timings["tune_started_at"]))
    total = float(table["slot_s"].sum())
    parts = [*BEFORE, *INSIDE, "other"]
    sums = {p: float(table[p].sum()) for p in parts}
    reused = table[table["between_s"] > 0]
    span = float(trials["finished_at"].max() - timings["tune_started_at"])
    return {
        "run_dir": str(run_dir),
        "trials": len(table),
        "workers": int(trials["worker_pid"].nunique()),
        "slot_s_total": total,
        "seconds": sums,
        "share": {p: v / total for p, v in sums.items()},
        "overhead_share": 1.0 - float(table["work_s"].sum()) / total,
        "gap_s_median": float(table.loc[table["gap_s"] > 0, "gap_s"].median()),
        "gap_s_max": float(table["gap_s"].max()),
        "between_s_median": float(reused["between_s"].median()) if len(reused) else None,
        "between_s_max": float(reused["between_s"].max()) if len(reused) else None,
        "trial_s_median": float(trials["wall_s"].median()),
        "tune_span_s": span,
        "sweep_s": timings.get("sweep_s"),
        "total_s": timings.get("total_s"),
    }


def run_study(study: str, mode: str, work: Path, extra: list[str]) -> Path:
    """One CLI run of ``study`` in ``mode`` into a new directory under ``work``."""
    out = work / f"{study}-{mode}-{time.strftime('%H%M%S')}"
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "COMPRESSION_SWEEPS_CACHE": str(work / "cache"),
    }
    overrides = [*STUDY_OVERRIDES.get(study, []), *MODES[mode], *extra]
    cmd = [sys.executable, "-m", "engine.sweep", study, *overrides, "--no-report"]
    with (work / f"{out.name}.log").open("w") as log:
        rc = subprocess.run(
            [*cmd, "--out", str(out)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        ).returncode
    if rc != 0:
        raise RuntimeError(f"{study} {mode}: exit {rc} (see {out.name}.log)")
    return out


def _print(rows: list[dict[str, Any]]) -> None:
    parts = [*BEFORE, *INSIDE, "other"]
    table = pd.DataFrame(
        {f"{r['study']} {r['mode']}": {p: r["share"][p] * 100 for p in parts} for r in rows}
    )
    print(table.round(1).to_string())
    for r in rows:
        print(
            f"{r['study']} {r['mode']}: {r['trials']} trials on {r['workers']} workers, "
            f"gap median {r['gap_s_median']:.2f} s max {r['gap_s_max']:.2f} s, overhead "
            f"{r['overhead_share']:.1%}, sweep {r['sweep_s']:.0f} s",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", nargs="+", default=["smoke", "ablation"])
    p.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["fresh", "reused"])
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "trial-overhead")
    p.add_argument("--json", type=Path)
    p.add_argument("--set", nargs="*", default=[], help="extra overrides for every run")
    p.add_argument("--summarize", nargs="+", type=Path, help="summarise these run directories")
    args = p.parse_args(argv)
    rows = []
    if args.summarize:
        for d in args.summarize:
            m = json.loads((d / "manifest.json").read_text())
            reuse = m["config"]["search"].get("reuse_actors", False)
            rows.append({"study": m["config"]["name"], "mode": ["fresh", "reused"][reuse]})
            rows[-1].update(summarize(d))
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        for study in args.studies:
            for mode in args.modes:
                t0 = time.monotonic()
                out = run_study(study, mode, args.work, args.set)
                rows.append(
                    {
                        "study": study,
                        "mode": mode,
                        "wall_s": time.monotonic() - t0,
                        "loadavg": os.getloadavg(),
                        **summarize(out),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    _print(rows)
    if args.json:
        args.json.write_text(json.dumps({"overrides": args.set, "runs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
