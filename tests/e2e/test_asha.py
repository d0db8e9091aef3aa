"""End to end: single-objective ASHA through the real CLI on local Ray.

The objective is planted so every decision is known in advance: minimise GFLOPs, which rises
strictly with the number of kept layers, over a grid run one trial at a time in the order
keep_layers = 1, 4, 2, 3. ASHA (grace 1, reduction factor 2, 4 results per full trial: rungs
at 1, 2 and 4 results) cuts a trial whose value at a rung is worse than the median recorded
there before it:

- k=1 arrives first at every rung: runs to the end (4 results, 6 steps);
- k=4 is worse than k=1 at rung 1: stopped after 1 result (step 2);
- k=2 beats the median of {k1, k4} at rung 1, then is worse than k=1 at rung 2: stopped after
  2 results (step 4);
- k=3 is worse than the median of {k1, k4, k2} (= k2) at rung 1: stopped after 1 result.

The run also checkpoints every report (``search.checkpoint_every``) with the real MiniLM
students, and a finished study leaves no trial checkpoints behind.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import cli_env, run_sweep
from tests.e2e.test_sweep_cli import PARETO_TINY

ASHA = [
    *[o for o in PARETO_TINY if not o.startswith("search.num_samples")],
    "search.algorithm=grid",
    "search.space={pipeline.truncate.keep_layers: [1, 4, 2, 3]}",
    "search.objectives=[{metric: gflops, mode: min}]",
    "search.scheduler.name=asha",
    "search.scheduler.grace_period=1",
    "search.scheduler.reduction_factor=2",
    "search.max_concurrent_trials=1",
    "search.checkpoint_every=2",
]
# keep_layers → (status, results reported, distill steps done)
EXPECTED = {1: ("ok", 4, 6), 4: ("stopped", 1, 2), 2: ("stopped", 2, 4), 3: ("stopped", 1, 2)}


@pytest.mark.slow  # four small students one after another: ~1-2 min on 2 idle cores
def test_asha_stops_trials_at_rungs_and_records_them(tmp_path: Path, smoke_cache: Path) -> None:
    out = tmp_path / "run"  # the smoke study's preparation, found in its cache
    proc = run_sweep("pareto", *ASHA, "--no-report", out=out, env=cli_env(smoke_cache), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "scheduler asha (4 results per full trial)" in proc.stdout
    df = pd.read_parquet(out / "results.parquet")
    # the trials: not the teacher, not the task's reference row (majority, no model)
    trials = df[(df.trial_id != "teacher") & (df.status != "reference")]
    trials = trials.set_index("pipeline.truncate.keep_layers")
    assert sorted(trials.index) == [1, 2, 3, 4]
    # the planted order of costs the decisions rest on
    g = trials.gflops
    assert g[1] < g[2] < g[3] < g[4]
    got = {int(k): (r.status, int(r.iterations), int(r.step)) for k, r in trials.iterrows()}
    assert got == EXPECTED
    stopped = trials[trials.status == "stopped"]
    assert stopped.accuracy.isna().all() and stopped.valid_accuracy.map(math.isfinite).all()
    assert math.isfinite(trials.accuracy[1]) and trials.on_front[1]  # the finished trial
    assert trials.error.isna().all()
    man = json.loads((out / "manifest.json").read_text())
    assert man["trials"] == {"total": 4, "ok": 1, "failed": 0, "stopped": 3}
    # trials checkpointed at every report while running; the finished study dropped them
    assert not list((out / "tune").glob("run_trial*/checkpoint_*"))
    assert (out / "models").is_dir()
