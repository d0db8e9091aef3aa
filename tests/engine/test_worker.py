"""A reused trial worker leaks nothing from one trial into the next (issue 30).

The sweep (:func:`engine.tune_run.run_tune`, the CLI's own path) runs five trials one after
another on one Ray actor: a student, a pruned one, a quantized one, one that trains and then
fails, and the first student again. The first trial is a fresh worker's; the last runs after
everything the others did to the process (RNG draws, thread count, pruned and quantized
modules, an exception mid-pipeline) and must give the same row — every metric, GFLOPs, sizes —
and a saved student identical to the byte. The check can fail: the rows prove the five trials
ran in one process (one pid, trial counter 1…5) and fetched the shared inputs once, and that
the trials between did prune, quantize and fail.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from engine.config import load_study
from engine.tasks import get_task
from tests.conftest import tiny_shared_inputs

TARGET = {"pipeline.truncate.strategy": "uniform"}  # the study's own settings, again
BETWEEN = [
    {"pipeline.order": ["truncate", "distill", "prune"]},
    {"pipeline.order": ["truncate", "distill", "quantize"]},
    # distils, then fails: the tiny teacher has 4 layers
    {"pipeline.order": ["distill", "truncate"], "pipeline.truncate.keep_layers": 9},
]
# everything a trial's result is, as opposed to how long it took
SAME = [
    *get_task("rating_classification").metrics,
    *(f"valid_{m}" for m in get_task("rating_classification").metrics),
    "gflops",
    "gflops_theoretical",
    "params",
    "params_nonzero",
    "weights_bytes",
    "student_layers",
    "kept_layers",
    "peak_mem_bytes",
    "quant",
    "status",
    "error",
    "seed",
]


def _files(model_dir: str) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(model_dir).iterdir())
        if p.is_file()
    }


@pytest.mark.slow  # five tiny trials on one worker: ~30 s idle
def test_a_reused_worker_gives_the_row_of_a_fresh_one(ray_local, tmp_path: Path) -> None:
    from engine.tune_run import run_tune

    extra = [*BETWEEN, TARGET]
    study = load_study(
        "smoke",
        [
            "data.max_length=12",
            "pipeline.truncate.strategy=uniform",
            "pipeline.distill.max_steps=4",
            "pipeline.distill.batch_size=8",
            "pipeline.prune.recovery_steps=2",
            "pipeline.prune.score_batches=1",
            "pipeline.prune.batch_size=8",
            "resources.cpus=2",  # one slot: every trial on the same worker, in order
            "threads_per_trial=1",
            "measure.latency_repeats=1",
            "search.space={}",
            f"search.extra={extra}",
        ],
    )
    assert study.search.reuse_actors  # the default
    grid = run_tune(study, tiny_shared_inputs(), tmp_path / "run", resume=False)
    rows = sorted((r.metrics for r in grid), key=lambda m: m["started_at"])
    assert len(rows) == 5

    # one process ran all five, in order, and fetched the shared inputs once
    assert len({r["worker_pid"] for r in rows}) == 1
    assert [r["worker_trial"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["worker_fetched"] for r in rows] == [True, False, False, False, False]
    assert rows[0]["worker_import_s"] > 0 and all(r["worker_import_s"] == 0 for r in rows[1:])

    first, pruned, quantized, failed, last = rows
    # the trials between did what they are there for
    assert pruned["status"] == "ok" and pruned["params"] < first["params"]
    assert quantized["status"] == "ok" and quantized["quant"] == "dynamic_int8"
    assert first["quant"] == "none"
    assert failed["status"] == "failed" and "exceeds the model's 4 layers" in failed["error"]
    assert failed["phase_train_s"] > 0  # it distilled before it failed

    assert first["status"] == "ok"
    for col in SAME:
        a, b = first[col], last[col]
        assert a == b or (a != a and b != b), (col, a, b)  # equal, or both NaN
    assert _files(last["model_dir"]) == _files(first["model_dir"])
    assert last["model_dir"] != first["model_dir"]


def test_a_worker_keeps_one_studys_inputs_and_fetches_anothers(ray_local) -> None:
    import numpy as np

    from engine.worker import begin_trial, share, shared_inputs, worker_columns

    a, b = {"x": np.arange(5)}, {"x": np.arange(7)}
    ha, hb = share(a), share(b)
    begin_trial(0, 1)
    got = shared_inputs(ha)
    assert worker_columns()["worker_fetched"] and np.array_equal(got["x"], a["x"])
    begin_trial(0, 1)
    assert shared_inputs(ha) is got and not worker_columns()["worker_fetched"]
    begin_trial(0, 1)
    other = shared_inputs(hb)  # another study's handle: fetched, replacing the first
    assert worker_columns()["worker_fetched"] and np.array_equal(other["x"], b["x"])
    assert shared_inputs(a) is a  # inputs passed directly are used as they are
