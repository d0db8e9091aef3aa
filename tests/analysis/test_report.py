"""analysis.report: the report written from a synthetic run directory (with a failed trial),
its CLI, and the importance study's sections. The front and the statistics it uses are
tested in test_frontier.py and test_stats.py."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.report import write_report
from tests.conftest import kill_writer_half_way, run_cli

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- report


def _write_run(run_dir: Path, *, all_failed: bool = False) -> Path:
    run_dir.mkdir(parents=True)
    strategies = ["fisher", "fisher", "uniform", "uniform", "random", "random"]
    kd = [True, False, True, False, True, False]
    rows = [
        {
            "trial_id": "teacher",
            "seed": 0,
            "status": "ok",
            "error": None,
            "wall_s": 30.0,
            "device": "cpu",
            "pipeline.truncate.strategy": "fisher",
            "pipeline.truncate.keep_ratio": 0.5,
            "pipeline.distill.kd": True,
            "pipeline.distill.temperature": 2.0,
            "accuracy": 0.62,
            "macro_f1": 0.41,
            "gflops": 1.397,
            "params": 22_715_525,
            "weights_bytes": 90_862_100,
            "latency_ms_p50": 40.0,
            "latency_ms_p95": 45.0,
            "student_layers": 6,
        }
    ]
    acc = [0.58, 0.55, 0.57, 0.52, 0.50, 0.49]
    for i, (s, k, a) in enumerate(zip(strategies, kd, acc, strict=True)):
        failed = all_failed or i == 5
        rows.append(
            {
                "trial_id": f"trial_{i:02d}",
                "seed": 0,
                "status": "failed" if failed else "ok",
                "error": "Traceback ...\nRuntimeError: planted | failure" if failed else None,
                "wall_s": 10.0 + i,
                "device": "cpu",
                "pipeline.truncate.strategy": s,
                "pipeline.truncate.keep_ratio": 0.34,
                "pipeline.distill.kd": k,
                "pipeline.distill.temperature": 2.0,
                "accuracy": np.nan if failed else a,
                "macro_f1": np.nan if failed else a - 0.2,
                "gflops": np.nan if failed else 0.47 + 0.01 * i,
                "params": np.nan if failed else 13_837_829,
                "weights_bytes": np.nan if failed else 55_351_316,
                "latency_ms_p50": np.nan if failed else 14.0 + i,
                "latency_ms_p95": np.nan if failed else 15.0 + i,
                "student_layers": np.nan if failed else 2,
            }
        )
    pd.DataFrame(rows).to_parquet(run_dir / "results.parquet", index=False)
    imp = []
    for method, order in (("fisher", [5, 4, 3, 2, 1, 0]), ("ablation", [0, 1, 2, 3, 4, 5])):
        for layer in range(6):
            score = float(order[layer])
            imp.append(
                {
                    "method": method,
                    "layer": layer,
                    "score": score,
                    "rank": 5 - order[layer],
                    "ci_low": score - 0.1,
                    "ci_high": score + 0.1,
                }
            )
    pd.DataFrame(imp).to_parquet(run_dir / "importance.parquet", index=False)
    manifest = {
        "git_commit": "abc123",
        "packages": {"torch": "2.13.0"},
        "config": {
            "name": "synthetic",
            "description": "A planted study for the report test.",
            "data": {"max_length": 64},
            "measure": {"batch_size": 32},
            "report": {"quality_metric": "accuracy", "cost_metric": "gflops"},
        },
        "seeds": [0],
        "data": {},
        "started": "2025-01-01T00:00:00+00:00",
        "finished": "2025-01-01T00:10:00+00:00",
        "baselines": {"majority": {"accuracy": 0.5432, "macro_f1": 0.1408}},
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return run_dir


def test_report_from_synthetic_run(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "run")
    md_path = write_report(run_dir)
    assert md_path == run_dir / "report.md"
    md = md_path.read_text()
    html = (run_dir / "report.html").read_text()
    for heading in (
        "# Compression study: synthetic",
        "## Teacher and baseline",
        "## Results (one row per trial)",
        "## Across seeds",
        "## Pareto set",
        "## Layer importance",
        "### ablation",
        "### fisher",
        "## Failed trials",
    ):
        assert heading in md, heading
    assert "A planted study for the report test." in md
    # teacher and majority baseline, with the manifest's numbers
    assert "| teacher | 0.6200 | 0.4100 |" in md
    assert "majority class" in md and "0.5432" in md and "0.1408" in md
    # results table: one line per trial + teacher, varying config columns shortened
    results = md.split("## Results (one row per trial)")[1].split("## Across seeds")[0]
    assert results.count("| trial_0") == 6 and results.count("| teacher |") == 1
    assert "truncate.strategy" in results and "distill.kd" in results
    assert "keep_ratio" not in results  # constant across trials: not a varying column
    # the Pareto set of configurations (one seed each here): fisher + KD (0.58 @ 0.47) is the
    # cheapest and the most accurate student, so it dominates every other one (e.g. trial_01,
    # 0.55 @ 0.48); the teacher is the reference point, not a configuration
    pareto = md.split("## Pareto set")[1].split("## Layer importance")[0]
    rows = [ln.split("|")[1:-1] for ln in pareto.splitlines() if ln.startswith("| ")]
    assert [c.strip() for c in rows[1]][:5] == ["fisher", "True", "1", "0.5800", "[0.5800, 0.5800]"]
    assert len(rows) == 2 and not any("teacher" in "|".join(r) for r in rows)
    assert "1 non-dominated of 5 configurations" in pareto
    # the figure leads the Answer, with its caption; the Pareto section points to it
    answer = md.split("## Answer")[1].split("\n## ")[0]
    assert "Each point = one configuration, mean over 1 seed" in answer
    assert "The figure of these configurations leads the Answer above." in pareto
    # hypervolume by hand: one rectangle (0.58 − majority 0.5432) × (teacher 1.397 − 0.47)
    hv = float(pareto.split("Student hypervolume: ")[1].split(" ")[0])
    assert hv == pytest.approx((0.58 - 0.5432) * (1.397 - 0.47), rel=1e-3)
    assert "![accuracy vs gflops](pareto.png)" in answer
    assert answer.index("pareto.png") < answer.index("| student")  # the plot, then the table
    # failed trial with its (escaped) error
    failed = md.split("## Failed trials")[1]
    assert "trial_05" in failed and "RuntimeError: planted \\| failure" in failed
    assert "GFLOPs = 2 × multiply-adds counted by fvcore on the built model" in md
    assert "sequence length S = 64" in md
    # html mirrors it in one file: each image inlined as a data URI of the PNG's own bytes
    for png in ("pareto.png", "importance.png"):
        inline = base64.b64encode((run_dir / png).read_bytes()).decode()
        assert f'<img src="data:image/png;base64,{inline}"' in html
    assert f'src="{png}"' not in html
    assert '<table class="sortable">' in html and "trial_05" in html
    for png in ("pareto.png", "importance.png"):
        data = (run_dir / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_report_survives_an_all_failed_run(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "run", all_failed=True)
    (run_dir / "importance.parquet").unlink()
    md = write_report(run_dir).read_text()
    assert "No successful trials." in md
    assert md.count("RuntimeError: planted") >= 6
    assert "## Layer importance" not in md
    assert (run_dir / "pareto.png").stat().st_size > 1000


def test_report_cli_prints_the_path(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "run")
    proc = run_cli("analysis.report", str(run_dir), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(run_dir / "report.md")
    missing = run_cli("analysis.report", str(tmp_path / "nope"), timeout=120)
    assert missing.returncode == 2 and "results.parquet" in missing.stderr


# ----------------------------------------------------------------------------- killed writers


def _one_error(proc) -> str:
    """The single ``error:`` line of a CLI that exited 2 without a traceback."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_results_rewrite_killed_half_way_reports_the_previous_results(tmp_path: Path) -> None:
    """The writer of a new results.parquet (other trial ids) is SIGKILLed half-way: the
    report is built from the previous, complete table."""
    run_dir = _write_run(tmp_path / "run")
    new = pd.read_parquet(run_dir / "results.parquet")
    new["trial_id"] = new["trial_id"].str.replace("trial_", "rerun_")
    buf = io.BytesIO()
    new.to_parquet(buf, index=False)
    kill_writer_half_way(run_dir / "results.parquet", buf.getvalue())
    proc = run_cli("analysis.report", str(run_dir), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (run_dir / "report.md").read_text()
    assert "trial_05" in text and "rerun_" not in text


def test_first_results_write_killed_half_way_is_no_run(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "run")
    data = (run_dir / "results.parquet").read_bytes()
    (run_dir / "results.parquet").unlink()
    kill_writer_half_way(run_dir / "results.parquet", data)
    error = _one_error(run_cli("analysis.report", str(run_dir), timeout=120))
    assert "results.parquet not found" in error


@pytest.mark.parametrize("name", ["results.parquet", "importance.parquet", "manifest.json"])
def test_a_half_file_is_refused_by_name(tmp_path: Path, name: str) -> None:
    """What a plain (non-atomic) writer killed half-way leaves — the first half of the file —
    is one error naming the file, never a report parsed from part of it."""
    run_dir = _write_run(tmp_path / "run")
    whole = (run_dir / name).read_bytes()
    (run_dir / name).write_bytes(whole[: len(whole) // 2])
    error = _one_error(run_cli("analysis.report", str(run_dir), timeout=120))
    assert f"{run_dir / name} cannot be read" in error
    assert not (run_dir / "report.md").exists()


# ----------------------------------------------------------------------------- importance study


def _write_importance_run(run_dir: Path) -> Path:
    """A planted importance study: 3 methods over 4 layers (ranks as in test_consensus:
    a 0 1 2 3, b 1 0 2 3, c 0 2 1 3), 4 strategies, agreement.parquet from the engine."""
    from engine.importance.base import LayerScores
    from engine.importance.consensus import write_agreement
    from engine.importance.runner import importance_table

    run_dir.mkdir(parents=True)
    scores = {
        "fisher": [4.0, 3.0, 2.0, 1.0],
        "ablation": [3.0, 4.0, 2.0, 1.0],
        "block_influence": [4.0, 2.0, 3.0, 1.0],
        "consensus": [1.0, 0.6, 0.4, 0.0],
    }
    ls = {m: LayerScores(m, tuple(v), num_examples=8) for m, v in scores.items()}
    importance_table(ls).to_parquet(run_dir / "importance.parquet", index=False)
    assert write_agreement(ls, run_dir / "agreement.parquet") is not None
    rows = [{"trial_id": "teacher", "seed": 0, "status": "ok", "accuracy": 0.60, "gflops": 1.4}]
    for i, (s, kept, acc) in enumerate(
        [
            ("fisher", "0,1", 0.55),
            ("ablation", "0,1", 0.56),
            ("consensus", "0,1", 0.57),
            ("uniform", "1,3", 0.50),
        ]
    ):
        rows.append(
            {
                "trial_id": f"trial_{i:02d}",
                "seed": 0,
                "status": "ok",
                "pipeline.truncate.strategy": s,
                "pipeline.truncate.keep_layers": 2,
                "kept_layers": kept,
                "accuracy": acc,
                "macro_f1": acc - 0.2,
                "gflops": 0.5,
            }
        )
    pd.DataFrame(rows).to_parquet(run_dir / "results.parquet", index=False)
    manifest = {
        "config": {
            "name": "importance",
            "description": "planted",
            "importance": {"consensus_threshold": 0.75},
            "report": {"quality_metric": "accuracy", "cost_metric": "gflops"},
        },
        "seeds": [0],
        "data": {"stats": {"split_sizes": {"test": 600}}},
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return run_dir


def test_report_agreement_consensus_and_downstream_sections(tmp_path: Path) -> None:
    run_dir = _write_importance_run(tmp_path / "run")
    md = write_report(run_dir).read_text()
    agreement = md.split("## Agreement between importance methods")[1].split("\n## ")[0]
    # W over fisher/ablation/block_influence = the 3 × 4 hand example: 7/9 (consensus excluded)
    assert "3 methods over 4 layers" in agreement and "Kendall's W = 0.778" in agreement
    # matrix row of fisher: τ(fisher, ablation) = 2/3, τ(fisher, block_influence) = 2/3
    assert "| fisher | 1.00 | 0.67 | 0.67 |" in agreement
    assert "![Kendall tau between methods](agreement.png)" in agreement
    # "consensus 75 %" needs ⌈0.75·3⌉ = 3 of 3 methods; at k = 2 layers 0 (all in) and 3 (all
    # out) qualify: 2 of 4 layers, 0.5
    assert "at least 3 of the 3 methods rank it among their k most important" in agreement
    topk = agreement.split("### Top-k overlap and consensus 75%")[1].split("###")[0]
    k2 = next(ln for ln in topk.splitlines() if ln.startswith("| 2 |"))
    assert "0.5" in k2 and "2 of 4" in k2
    # consensus ranking: mean ranks 1/3, 1, 5/3, 3 → layers 0, 1, 2, 3; shares in top-2
    ranking = agreement.split("### Consensus ranking")[1]
    lines = [ln for ln in ranking.splitlines() if ln.startswith("| ") and "rank" not in ln]
    assert [ln.split("|")[2].strip() for ln in lines] == ["0", "1", "2", "3"]
    assert lines[0].split("|")[3].strip() == "0.3333"
    # downstream: best student first, kept layers and τ with the consensus ranking
    down = md.split("## Which ranking makes the best student")[1].split("\n## ")[0]
    order = [ln.split("|")[1].strip() for ln in down.splitlines() if ln.startswith("| ")][1:]
    assert order == ["consensus", "ablation", "fisher", "uniform"]
    # τ-b with the consensus order (layers 0 > 1 > 2 > 3), by counting pairs: fisher (4,3,2,1)
    # and consensus (1,.6,.4,0) agree on all 6 pairs → 1; ablation (3,4,2,1) reverses the
    # pair (0, 1) → (5 − 1) / 6; uniform has no scores → —
    tau = {
        ln.split("|")[1].strip(): ln.split("|")[-2].strip()
        for ln in down.splitlines()
        if ln.startswith("| ") and "τ with consensus" not in ln
    }
    assert tau == {"consensus": "1", "ablation": f"{2 / 3:.4f}", "fisher": "1", "uniform": "—"}
    fisher_row = next(ln for ln in down.splitlines() if ln.startswith("| fisher |"))
    assert "0,1" in fisher_row
    assert "600 examples" in down and "binomial standard error" in down
    png = (run_dir / "agreement.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_no_agreement_file_no_agreement_section(tmp_path: Path) -> None:
    run_dir = _write_importance_run(tmp_path / "run")
    (run_dir / "agreement.parquet").unlink()
    md = write_report(run_dir).read_text()
    assert "## Agreement between importance methods" not in md
    assert not (run_dir / "agreement.png").exists()
    assert "## Which ranking makes the best student" in md  # τ column empty, table still there


def test_report_importance_section_says_what_each_interval_resampled(tmp_path: Path) -> None:
    """Per method: the resampling unit and count, the unreliable flag below the minimum or
    for the layers too skewed for their count (Cochran's rule), and the consensus members
    read from the run's config."""
    from engine.importance.base import bootstrap_ci, from_per_batch, from_per_example
    from engine.importance.runner import importance_table

    run_dir = _write_importance_run(tmp_path / "run")
    rng = np.random.default_rng(0)
    spiky = rng.normal(size=(120, 4))
    spiky[0, 2] = 1000.0  # layer 2: one huge contribution among 120 (G₁ ≈ 11, 25·G₁² ≫ 120)
    ls = {
        "fisher": bootstrap_ci(from_per_example("fisher", [rng.normal(size=(60, 4))] * 2)),
        "taylor": bootstrap_ci(from_per_example("taylor", [spiky])),
        "mutual_info": bootstrap_ci(
            from_per_batch("mutual_info", rng.normal(size=(6, 4)), [8] * 6)
        ),
        "consensus": bootstrap_ci(from_per_batch("consensus", rng.normal(size=(6, 4)), [8] * 6)),
    }
    importance_table(ls).to_parquet(run_dir / "importance.parquet", index=False)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["config"]["importance"] = {
        "consensus_threshold": 0.75,
        "ci_level": 0.9,
        "consensus_methods": ["fisher", "ablation", "block_influence"],
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    md = write_report(run_dir).read_text()
    section = md.split("## Layer importance")[1].split("\n## ")[0]
    fisher = section.split("### fisher")[1].split("###")[0]
    assert "Interval: 90% BCa bootstrap over 120 examples." in fisher
    assert "unreliable" not in fisher
    mi = section.split("### mutual_info")[1].split("###")[0]
    assert "over 6 calibration batches; unreliable: too few calibration batches" in mi
    taylor = section.split("### taylor")[1].split("###")[0]
    assert "over 120 examples; unreliable for layer 2: their examples are too skewed" in taylor
    assert "**" not in section  # no Markdown emphasis, which the HTML showed literally
    cons = section.split("### consensus")[1].split("###")[0]
    assert "Mean rank-normalised score of: fisher, ablation, block_influence." in cons
    agreement = md.split("## Agreement between importance methods")[1]
    assert "here fisher, ablation, block_influence" in agreement
    assert "(fisher, ablation, block_influence; hybrid and consensus excluded)" in agreement


def test_an_ensemble_teacher_is_a_row_of_the_teacher_table(tmp_path: Path) -> None:
    """With ``teacher.ensemble`` the manifest's mean-output quality is shown beside the
    teacher, with its own numbers, and the students' tables stay as they were."""
    run_dir = _write_run(tmp_path / "run")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["teacher"] = {
        "ensemble": {"size": 3, "metrics": {"accuracy": 0.6789, "macro_f1": 0.4321}, "members": []}
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    md = write_report(run_dir).read_text()
    table = md.split("## Teacher and baseline")[1].split("## ")[0]
    assert "| ensemble teacher (mean output of 3 members) | 0.6789 | 0.4321 |" in table
    results = md.split("## Results (one row per trial)")[1].split("## Across seeds")[0]
    assert "ensemble" not in results


def test_the_teacher_section_says_how_an_early_stopped_teacher_trained(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "run")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    evaluations = [[19, 0.041], [38, 0.052], [57, 0.049], [76, 0.050]]
    manifest["teacher"] = {
        "metrics": {
            "training": {
                "selection_metric": "valid_ndcg_at_10", "selection_examples": 943,
                "patience": 2, "eval_every_steps": 19, "budget_steps": 380,
                "budget_epochs": 20.0, "steps_run": 76, "epochs_run": 4.0,
                "stopped_early": True, "best_step": 38, "best_epoch": 2.0,
                "best_value": 0.052, "evaluations": evaluations,
            }
        }
    }  # fmt: skip
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    section = write_report(run_dir).read_text().split("## Teacher and baseline")[1]
    section = section.split("\n## ")[0]
    assert (
        "Teacher training: stopped early after 4 of a budget of 20 epochs (76 of 380 steps); "
        "the weights of step 38 (epoch 2) are kept, the best valid_ndcg_at_10 (0.0520) of 4 "
        "evaluations on 943 validation rows (early stopping, patience 2 evaluations, one every "
        "19 steps)."
    ) in section
