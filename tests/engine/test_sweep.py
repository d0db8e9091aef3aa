"""Sweep plumbing: per-trial resources reach Tune (fractional GPU), the budget a scheduler
sees, and the live progress table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.config import load_study
from engine.progress import ProgressTable
from engine.rundir import trial_columns as _columns
from engine.tune_run import full_budget

REPO = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent(
    """
    import json, sys, tempfile
    import ray
    from ray import tune
    from engine.config import load_study
    from engine.tune_run import trainable_for

    cfg = load_study("smoke", ["resources.gpus=0.25", "resources.cpus=0.5"])

    def probe(config):
        import ray, os
        tune.report({
            "assigned": json.dumps(ray.get_runtime_context().get_assigned_resources()),
            "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        })

    # a CPU-only machine with one logical GPU
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False,
             object_store_memory=300 * 2**20, log_to_driver=False)
    try:
        grid = tune.Tuner(
            trainable_for(cfg, probe),
            param_space={"i": tune.grid_search([0, 1, 2, 3])},
            run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), verbose=0),
        ).fit()
        print("RESULT " + json.dumps([
            {"assigned": json.loads(r.metrics["assigned"]), "cuda": r.metrics["cuda_visible"]}
            for r in grid
        ]))
    finally:
        ray.shutdown()
    """
)


@pytest.mark.slow
def test_fractional_gpu_request_reaches_each_trial(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    trials = json.loads(line.removeprefix("RESULT "))
    assert len(trials) == 4
    for t in trials:
        assert t["assigned"] == {"CPU": 0.5, "GPU": 0.25}
        assert t["cuda"] == "0"  # the one logical GPU, shared by the four trials


def test_full_budget_counts_intermediate_and_final_results() -> None:
    cfg = load_study("pareto")  # 2 epochs of 800/32 = 50 steps, a report every 10
    assert full_budget(cfg, 800) == 50 // 10 + 1
    assert full_budget(cfg, 801) == 52 // 10 + 1  # ceil(801/32) = 26 steps per epoch
    capped = load_study("pareto", ["pipeline.distill.max_steps=7", "search.report_every_steps=3"])
    assert full_budget(capped, 800) == 7 // 3 + 1
    assert full_budget(load_study("smoke"), 160) == 1  # no intermediate reports
    # every training stage reports on its own step axis: 25 distill steps (800/32) → 2,
    # prune's 20 schedule + 20 recovery steps → 4, plus the final result
    sens = load_study("sensitivity", ["search.report_every_steps=10"])
    assert sens.pipeline.order == ("truncate", "distill", "prune")
    assert full_budget(sens, 800) == 25 // 10 + 40 // 10 + 1


def _trial(tid: str, **values: object) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, config={"values": values})


def test_progress_table_tracks_status_and_best() -> None:
    table = ProgressTable([("valid_accuracy", "max"), ("gflops", "min")], ["k"], every_s=1e9)
    a, b, c = _trial("a", k=1), _trial("b", k=2), _trial("c", k=3)
    for t in (a, b, c):
        table.on_trial_start(0, [], t)
    table.on_trial_result(0, [], a, {"valid_accuracy": 0.5, "gflops": 1.0, "training_iteration": 2})
    table.on_trial_result(0, [], b, {"valid_accuracy": 0.7, "gflops": 2.0, "training_iteration": 1})
    table.on_trial_result(
        0, [], a, {"valid_accuracy": 0.6, "gflops": 1.0, "training_iteration": 3, "status": "ok"}
    )
    table.on_trial_complete(0, [], a)
    table.on_trial_complete(0, [], b)  # no final row: cut by the scheduler
    lines = table.table()
    assert lines[0] == "trial | status | iter | k | valid_accuracy | gflops"
    assert "a | ok | 3 | 1 | 0.6 | 1" in lines
    assert "b | stopped | 1 | 2 | 0.7 | 2" in lines
    assert "c | running | 0 |  |  | " in lines
    # the best is over finished (ok) trials only: b's 0.7 was cut short
    assert lines[-1] == "best valid_accuracy (max): 0.6 by a"


def test_distill_reports_every_n_steps_through_the_trial_reporter() -> None:
    """The real distill stage + TrialReporter: a report every 2 steps, with the validation
    accuracy and GFLOPs of the model being trained (checked against direct measurement)."""
    import numpy as np
    import torch

    from engine.compress import STAGES, StageContext
    from engine.measure import count_gflops, evaluate
    from engine.trial import TrialReporter
    from tests.conftest import tiny_bert, toy_batches

    study = load_study("smoke", ["search.report_every_steps=2", "pipeline.distill.max_steps=50"])
    batches = toy_batches(n_batches=4, batch_size=8, seq=12)
    train = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    valid = {k: v[:16].numpy() for k, v in train.items()}
    teacher = tiny_bert(num_layers=2)
    sent: list[dict] = []
    reporter = TrialReporter(study, valid, torch.device("cpu"), 2, sent.append, {"seed": 0})
    ctx = StageContext(
        teacher=teacher,
        train=train,
        teacher_logits=torch.zeros(len(train["labels"]), 5),
        importance={},
        seed=0,
        report=reporter,
    )
    student = tiny_bert(num_layers=2, seed=1)
    cfg = study.pipeline.distill.model_copy(update={"batch_size": 8})
    out = STAGES.get("distill")(student, cfg, ctx)
    assert [r["step"] for r in sent] == [2, 4]  # 32 examples / batch 8 = 4 steps, every 2
    assert all(r["seed"] == 0 and r["wall_s"] >= 0 for r in sent)
    assert all(np.isfinite(r["train_loss"]) for r in sent)
    flops = count_gflops(out, study.data.max_length)
    assert all(r["gflops"] == flops for r in sent)
    # the report at step 4 measured the final model: same figures as measuring it now
    _, final = evaluate(out, valid, batch_size=64, device="cpu")
    assert sent[-1]["valid_accuracy"] == final["accuracy"]
    assert sent[-1]["valid_macro_f1"] == final["macro_f1"]
    assert ctx.record["distill"]["steps"] == 4
    assert not out.training  # left in eval mode after training, though reports flip modes


def test_extra_arm_columns_name_what_it_changed() -> None:
    arm = {
        "pipeline.truncate.keep_ratio": 0.67,
        "pipeline.order": ["truncate", "distill", "prune", "quantize"],
    }
    cfg = load_study("ablation", [f"search.extra=[{arm}]"])
    grid_point = cfg.search.space
    assert "pipeline.order" not in grid_point
    on = _columns(dict(arm), cfg)
    off = _columns({"pipeline.truncate.keep_ratio": 0.67}, cfg)
    assert on["pipeline.order"] == "truncate,distill,prune,quantize"
    assert off["pipeline.order"] == "truncate,distill"
    assert on["pipeline.truncate.keep_ratio"] == off["pipeline.truncate.keep_ratio"] == 0.67
    assert on["pipeline.truncate.strategy"] == "fisher"  # the study's setting


def test_preflight_passes_a_writable_directory_and_leaves_only_the_directory(
    tmp_path: Path,
) -> None:
    from engine.preflight import preflight

    out = tmp_path / "reports" / "smoke" / "run-1"
    assert preflight(out, 1) is None
    assert out.is_dir() and list(out.iterdir()) == []  # the probe file is gone
    (out / "results.parquet").write_bytes(b"kept")  # --resume: an existing run directory
    assert preflight(out, 1) is None
    assert [p.name for p in out.iterdir()] == ["results.parquet"]
    (tmp_path / "f").write_text("")
    assert preflight(tmp_path / "f", 1) == (
        f"cannot write the run directory {tmp_path / 'f'}: File exists"
    )


def test_list_prints_one_line_per_study_within_the_width() -> None:
    from engine.sweep import study_lines

    studies = {
        "a": "Short. Second sentence is not shown.",
        "cross-domain-rec-reverse": "The reverse of cross-domain-rec.",
        "long": "Which " + "very " * 40 + "long question? Then more.",
    }
    lines = study_lines(studies, width=60)
    assert len(lines) == 3 and all(len(x) <= 60 for x in lines)
    col = len("cross-domain-rec-reverse") + 2  # the longest name, then two spaces
    assert lines[0] == "a".ljust(col) + "Short."
    assert lines[1] == "cross-domain-rec-reverse".ljust(col) + "The reverse of cross-domain-rec."
    assert lines[2].startswith("long".ljust(col) + "Which very very") and lines[2].endswith("…")
    assert len(lines[2]) == 60


def test_dry_run_counts_the_trials_and_writes_nothing(tmp_path: Path, capsys) -> None:
    """``--dry-run`` says what would run without starting Ray or creating the run directory;
    the count is the study file's grid (product of the value lists, plus the extra arms)
    times its seeds, read here from the YAML itself."""
    import yaml

    from engine.sweep import main

    raw = yaml.safe_load((Path(__file__).parents[2] / "sweeps" / "ablation.yaml").read_text())
    configs = 1
    for values in raw["search"]["space"].values():
        configs *= len(values)
    configs += len(raw["search"].get("extra", []))
    seeds = len(raw["repeats"])
    out = tmp_path / "never" / "run"
    assert main(["ablation", "--dry-run", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert f"{configs} configurations × {seeds} seeds = {configs * seeds} trials" in line
    assert line.startswith("[dry-run] ablation: grid,") and str(out) in line
    assert not (tmp_path / "never").exists()
    assert main(["ablation", "repeats=[0]", "--dry-run", "--out", str(out)]) == 0
    assert f"× 1 seed = {configs} trials" in capsys.readouterr().out


def test_dry_run_refuses_what_a_run_would_refuse(capsys) -> None:
    from engine.sweep import main

    assert main(["ablation", "pipeline.distill.temperature=hot", "--dry-run"]) == 2
    assert "pipeline.distill.temperature" in capsys.readouterr().err
    # a range cannot be a grid axis
    assert (
        main(
            ["smoke", "search.space={pipeline.distill.temperature: {low: 1, high: 4}}", "--dry-run"]
        )
        == 2
    )
    assert "grid needs a list of values for every key" in capsys.readouterr().err


def test_resume_refuses_a_directory_without_a_sweep(tmp_path: Path, capsys) -> None:
    """Issue 33: ``--resume`` on a missing directory silently started a fresh run. Refused
    with one line before Ray, for a missing folder and for one without Tune state; a
    directory holding ``tune/`` gets past the check (the dry run then says it would
    continue)."""
    from engine.sweep import main

    missing = tmp_path / "nope"
    assert main(["smoke", "--resume", "--out", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: --resume: {missing} does not exist, so there is no run to continue "
        "(leave out --resume to start one there)"
    ]
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["smoke", "--resume", "--out", str(empty)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --resume: {empty} holds no sweep to continue (no tune/")
    assert list(empty.iterdir()) == []
    (empty / "tune").mkdir()
    assert main(["smoke", "--resume", "--out", str(empty), "--dry-run"]) == 0
    assert "would continue" in capsys.readouterr().out


def test_resume_refuses_a_run_of_another_study_or_other_settings(tmp_path: Path, capsys) -> None:
    """Issue 33: ``smoke-rec --resume --out <a smoke run>`` mixed two studies' rows in one
    results file. The run records its study as it starts (``study.json``); a resume with
    other settings is one line naming them, before Ray; where and how wide the run goes
    (resources, concurrency) may change."""
    import json

    from engine.config import load_study
    from engine.rundir import record_study
    from engine.sweep import main

    run = tmp_path / "run"
    (run / "tune").mkdir(parents=True)
    record_study(run, load_study("smoke", []))
    recorded = json.loads((run / "study.json").read_text())
    assert recorded == load_study("smoke", []).model_dump(mode="json")

    assert main(["smoke-rec", "--resume", "--out", str(run), "--dry-run"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        f"error: --resume: {run} is a run of study 'smoke' with other settings ("
    )
    assert line.endswith("more): resume it with the study and overrides it started with")
    args = ["smoke", "pipeline.distill.temperature=3", "--resume", "--out", str(run), "--dry-run"]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "(pipeline.distill.temperature 2.0 → 3.0)" in line
    wider = ["resources.cpus=2", "search.max_concurrent_trials=1", "threads_per_trial=2"]
    assert main(["smoke", *wider, "--resume", "--out", str(run), "--dry-run"]) == 0
    assert "would continue" in capsys.readouterr().out
    (run / "study.json").unlink()  # a run from before the file existed: not checked
    assert main(["smoke-rec", "--resume", "--out", str(run), "--dry-run"]) == 0
