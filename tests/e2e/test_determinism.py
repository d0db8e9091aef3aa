"""Determinism (issue 17): the same study with the same seeds, run twice through the real CLI
into two run directories (each with its own cold cache, so the data preparation, the teacher's
fine-tuning and the importance scoring run twice too), gives the same results per
configuration × seed — every quality
metric, GFLOPs, size — and bit-identical saved students, teacher (weights and train logits)
and importance scores. At this size every student predicts the majority class, so equal
metrics alone would prove little: the weights and logits are the sensitive check. Times
(wall, latency, throughput) and memory peaks are measurements of the machine and may differ.

The check can fail: the two seeds of one configuration must give different students (the
seed reaches the training), so equal weights across runs are not equal by accident.

The first run is the session's smoke run (``conftest.SMOKE_RUN``: the smoke study at seeds 0
and 1, from a cold cache of its own); the second is the same command here, ``--no-report``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from engine.tasks import get_task
from tests.conftest import SMOKE_RUN, cli_env, run_sweep

TASK = "rating_classification"  # the smoke study's
# everything a trial's result is, as opposed to how long it took or how much memory it used
SAME = [
    *get_task(TASK).metrics,
    *(f"valid_{m}" for m in get_task(TASK).metrics),
    "gflops",
    "gflops_theoretical",
    "params",
    "params_nonzero",
    "weights_bytes",
    "student_layers",
    "kept_layers",
    "status",
]
KEY = ["config_id", "seed"]


def _run(tmp_path: Path, cache: Path) -> Path:
    out = tmp_path / "b"
    proc = run_sweep(*SMOKE_RUN, "--no-report", out=out, env=cli_env(cache), timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _weights(model_dir: str) -> dict:
    return load_file(str(Path(model_dir) / "model.safetensors"))


@pytest.mark.slow
def test_same_seed_twice_gives_identical_results(
    tmp_path: Path, smoke_run: tuple[Path, subprocess.CompletedProcess], smoke_cache: Path
) -> None:
    a_dir, cache_a = smoke_run[0], smoke_cache
    cache_b = tmp_path / "cache-b"
    b_dir = _run(tmp_path, cache_b)
    for run in (a_dir, b_dir):  # each prepared everything itself
        found = json.loads((run / "manifest.json").read_text())
        assert not found["teacher"]["cached"], run
        assert not found["cache"]["data"]["cached"] and not found["cache"]["importance"]["cached"]
    a = pd.read_parquet(a_dir / "results.parquet")
    b = pd.read_parquet(b_dir / "results.parquet")
    a, b = (df[df.trial_id != "teacher"].set_index(KEY).sort_index() for df in (a, b))
    assert len(a) == 2 * 2 + 1  # 2 configurations × 2 seeds, and the majority-class row
    assert a.index.equals(b.index)
    cols = [c for c in SAME if c in a]
    assert {"accuracy", "macro_f1", "gflops"} <= set(cols)
    pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=True)

    # the students themselves, bit for bit
    trials = a[a.status == "ok"]
    assert len(trials) == 4
    for key, row in trials.iterrows():
        wa, wb = _weights(row.model_dir), _weights(b.loc[key, "model_dir"])
        assert wa.keys() == wb.keys()
        for name in wa:
            assert wa[name].equal(wb[name]), (key, name)
    # ... and the seed matters: a configuration's two seeds train different students
    for _, pair in trials.groupby(level="config_id"):
        w0, w1 = (_weights(d) for d in pair.model_dir)
        assert any(not w0[n].equal(w1[n]) for n in w0), "seed does not reach the training"

    # the teacher (fine-tuned in each run's own cache): weights and train logits, bit for bit
    key = json.loads((a_dir / "manifest.json").read_text())["teacher"]["cache_key"]
    ta_dir, tb_dir = cache_a / "teachers" / key, cache_b / "teachers" / key  # same recipe
    sa, sb = (load_file(str(d / "state_dict.safetensors")) for d in (ta_dir, tb_dir))
    assert sa.keys() == sb.keys() and all(sa[n].equal(sb[n]) for n in sa)
    la, lb = (np.load(d / "train_logits.npy") for d in (ta_dir, tb_dir))
    assert la.std() > 0 and np.array_equal(la, lb)

    # the teacher row and the importance scores, shared by every trial
    ta, tb = (pd.read_parquet(d / "results.parquet").set_index("trial_id") for d in (a_dir, b_dir))
    teacher = [c for c in SAME if c in ta]
    pd.testing.assert_series_equal(ta.loc["teacher", teacher], tb.loc["teacher", teacher])
    ia = pd.read_parquet(a_dir / "importance.parquet")
    ib = pd.read_parquet(b_dir / "importance.parquet")
    score_cols = [c for c in ia.columns if "time" not in c and not c.endswith("_s")]
    pd.testing.assert_frame_equal(ia[score_cols], ib[score_cols], check_exact=True)
