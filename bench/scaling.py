"""Scaling across Ray nodes: one CPU-bound study on 1, 2 and 4 simulated nodes (run by hand).

Each configuration is a fresh ``ray.cluster_utils.Cluster`` on this machine: a head with no
CPUs (it runs the driver only, like ``cluster.yaml``) and N worker nodes that share the same
**total** logical CPUs (``--total-cpus``, default 4: 1 node × 4, 2 × 2, 4 × 1), so every
configuration has the same number of trial slots (total / ``resources.cpus`` = 4) and the
same real cores; what changes is only how the slots are spread over nodes. No node has less
than 1 CPU: a Ray Data operator given no ``num_cpus`` (e.g. its own ``Project``) asks for 1
(ray/data/_internal/execution/operators/map_operator.py) and would never fit a smaller node.
The study runs through the real CLI (``python -m engine.sweep --address``) in a subprocess,
one teacher cache for all configurations (the first run fine-tunes it).

From each run directory's trial rows (``started_at``/``finished_at``/``node_id``, written by
the trial itself, :data:`engine.rundir.PLACEMENT_COLUMNS`):

- ``trials_per_hour``: trials / (last end − first start) × 3600;
- ``trial_s``: mean time inside a trial (start to end of the trainable);
- ``gap_s`` (scheduling overhead per trial): on each node, each trial that started after
  one on that node had ended takes the earliest freed slot; its gap is its start minus that
  slot's freeing. It covers Tune handling the final result, ending the trial's actor, starting
  the next one, and the new trial fetching the shared inputs (teacher, data) and importing.

Usage::

    python bench/scaling.py --nodes 1 2 4 --json reports/benchmarks/scaling.json
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["main", "run_config", "slot_gaps", "summarize"]

REPO = Path(__file__).resolve().parents[1]
STORE = 200 * 2**20
# 2 strategies × 4 seeds = 8 trials; each trial 1 CPU (4 slots in all), one torch thread
STUDY = [
    "smoke",
    "repeats=[0, 1, 2, 3]",
    "resources.cpus=1",
    "threads_per_trial=1",
    "importance.num_batches=1",
    "measure.save_models=false",  # no students saved, so no latency phase: sweep only
]


def slot_gaps(trials: pd.DataFrame) -> list[float]:
    """Scheduling gaps (s): per node, each start that follows an end on that node takes the
    earliest freed slot (a trial that starts before any end on its node filled an initially
    free slot and has no gap)."""
    gaps: list[float] = []
    for _, t in trials.groupby("node_id"):
        events = [(s, 1) for s in t["started_at"]] + [(e, 0) for e in t["finished_at"]]
        freed: list[float] = []
        for when, is_start in sorted(events):
            if not is_start:
                heapq.heappush(freed, when)
            elif freed:
                gaps.append(when - heapq.heappop(freed))
    return gaps


def summarize(run_dir: Path) -> dict[str, Any]:
    df = pd.read_parquet(run_dir / "results.parquet")
    t = df[df["started_at"].notna()]  # the trials (the teacher and reference rows have none)
    span = float(t["finished_at"].max() - t["started_at"].min())
    gaps = slot_gaps(t)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {
        "trials": len(t),
        "ok": int((t["status"] == "ok").sum()),
        "nodes_used": int(t["node_id"].nunique()),
        "span_s": span,
        "trials_per_hour": len(t) / span * 3600,
        "trial_s_mean": float((t["finished_at"] - t["started_at"]).mean()),
        "gap_s_mean": float(pd.Series(gaps).mean()) if gaps else float("nan"),
        "gap_s_median": float(pd.Series(gaps).median()) if gaps else float("nan"),
        "gap_s_max": max(gaps) if gaps else float("nan"),
        "gaps": len(gaps),
        "sweep_s": manifest["timings"].get("sweep_s"),
        "total_s": manifest["timings"].get("total_s"),
    }


def _kill_under(marker: str) -> None:
    """SIGKILL every process whose command line names ``marker`` (this cluster's temp dir)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                os.kill(int(d.name), signal.SIGKILL)


def run_config(n_nodes: int, total_cpus: float, out: Path, cache: Path) -> dict[str, Any]:
    from ray.cluster_utils import Cluster

    temp_dir = Path(tempfile.gettempdir()) / f"mnscale{uuid.uuid4().hex[:6]}"
    cluster = None
    t0 = time.monotonic()
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "temp_dir": str(temp_dir),
                "object_store_memory": STORE,
                "include_dashboard": False,
            },
        )
        for _ in range(n_nodes):
            cluster.add_node(num_cpus=total_cpus / n_nodes, object_store_memory=STORE)
        cluster.wait_for_nodes()
        env = {
            **os.environ,
            "RAY_AUTH_MODE": "disabled",
            "COMPRESSION_SWEEPS_CACHE": str(cache),
            "PYTHONPATH": str(REPO),
        }
        cmd = [sys.executable, "-m", "engine.sweep", *STUDY, "--no-report"]
        cmd += ["--address", cluster.address, "--out", str(out)]
        with (out.parent / f"{out.name}.log").open("w") as log:
            rc = subprocess.run(
                cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            ).returncode
        if rc != 0:
            raise RuntimeError(f"{n_nodes} nodes: the study exited {rc} (see {out.name}.log)")
    finally:
        if cluster is not None:
            cluster.shutdown()
        _kill_under(str(temp_dir))
    return {
        "nodes": n_nodes,
        "cpus_per_node": total_cpus / n_nodes,
        **summarize(out),
        "wall_s": time.monotonic() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--total-cpus", type=float, default=4.0)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mn-scaling")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.nodes:
        out = args.work / f"nodes{n}-{uuid.uuid4().hex[:4]}"
        row = run_config(n, args.total_cpus, out, args.work / "cache")
        print(json.dumps(row), flush=True)
        rows.append(row)
    load = os.getloadavg()
    result = {"study": STUDY, "total_cpus": args.total_cpus, "loadavg_end": load, "runs": rows}
    print(pd.DataFrame(rows).drop(columns=["ok"]).to_string(float_format=lambda v: f"{v:.3g}"))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
