"""The ``importance`` study: its file computes every method and validates every ranking
downstream; a reduced run through the real CLI writes importance.parquet, agreement.parquet
and the report sections, and each student keeps the layers its method ranks first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import engine.importance  # noqa: F401  (registers every method)
from engine.compress.truncate import BASELINE_STRATEGIES
from engine.config import load_study
from engine.importance import IMPORTANCE
from engine.search import trial_configs
from tests.conftest import kendall_tau_b_by_definition, kendall_w_by_definition, run_sweep

REPO = Path(__file__).resolve().parents[3]
STRATEGY = "pipeline.truncate.strategy"


def test_study_computes_every_method_and_tries_each_as_a_strategy() -> None:
    cfg = load_study("importance")
    assert "\n" not in cfg.description and cfg.description
    assert set(cfg.importance.methods) == set(IMPORTANCE.names())
    grid = [t[STRATEGY] for t in trial_configs(cfg)]
    assert set(grid) == set(IMPORTANCE.names()) | set(BASELINE_STRATEGIES)
    assert len(grid) == len(set(grid))  # one student per strategy, nothing else varies
    assert cfg.pipeline.order == ("truncate", "distill")
    # the consensus strategy is the consensus of the ten base methods
    ten = {
        "fisher",
        "gradient",
        "taylor",
        "ablation",
        "block_influence",
        "attention",
        "mutual_info",
        "conductance",
        "mc_dropout",
        "activation_patching",
    }
    assert set(cfg.importance.consensus_methods) == ten
    readme = (REPO / "README.md").read_text()
    assert "| `importance` |" in readme and "agreement.parquet" in readme


REDUCED = [
    "data.max_length=32",
    "data.train_size=128",
    "data.valid_size=32",
    "data.test_size=64",
    "teacher.max_steps=3",
    "importance.num_batches=2",
    "importance.batch_size=8",
    "importance.actors=1",
    "importance.conductance_steps=2",
    "importance.mc_samples=2",
    "importance.bootstrap_samples=100",
    "pipeline.distill.max_steps=2",
    "measure.latency_repeats=2",
    "measure.warmup=1",
    "search.space={pipeline.truncate.strategy: [consensus, hybrid, taylor, uniform]}",
]


@pytest.fixture(scope="module")
def importance_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("importance") / "run"
    proc = run_sweep("importance", *REDUCED, out=out, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_importance_and_agreement_files(importance_run: Path) -> None:
    imp = pd.read_parquet(importance_run / "importance.parquet")
    assert list(imp.columns)[:6] == ["method", "layer", "score", "rank", "ci_low", "ci_high"]
    assert set(imp["method"]) == set(IMPORTANCE.names())
    for method, g in imp.groupby("method"):
        assert sorted(g["layer"]) == list(range(6)), method
        assert sorted(g["rank"]) == list(range(6)), method
        assert np.isfinite(g["score"]).all(), method
        # 2 calibration batches: a bootstrap interval that contains the score
        assert (g["ci_low"] <= g["score"] + 1e-12).all() and (
            g["score"] <= g["ci_high"] + 1e-12
        ).all(), method

    agr = pd.read_parquet(importance_run / "agreement.parquet")
    assert list(agr.columns) == ["statistic", "method_a", "method_b", "k", "layer", "value"]
    base = set(IMPORTANCE.names()) - {"hybrid", "consensus"}
    pairs = agr[agr.statistic == "kendall_tau"]
    assert set(pairs.method_a) | set(pairs.method_b) == base
    assert len(pairs) == len(base) * (len(base) - 1) // 2
    # W and every τ-b recomputed from importance.parquet's scores by their definitions
    # (rank sums with the tie correction; pair signs), not by the agreement code
    table = imp[imp.method.isin(base)].pivot(index="method", columns="layer", values="score")
    w = agr[agr.statistic == "kendall_w"]["value"].item()
    np.testing.assert_allclose(
        w, kendall_w_by_definition(table.to_numpy().tolist()), rtol=1e-9, atol=1e-12
    )
    for p in pairs.itertuples():
        want = kendall_tau_b_by_definition(
            table.loc[p.method_a].tolist(), table.loc[p.method_b].tolist()
        )
        np.testing.assert_allclose(p.value, want, rtol=1e-9, equal_nan=True, err_msg=str(p))
    # the per-layer consensus ranking is the order of the methods' mean rank
    ranks = imp[imp.method.isin(base)].groupby("layer")["rank"].mean()
    mean_rank = agr[agr.statistic == "mean_rank"].set_index("layer")["value"]
    np.testing.assert_allclose(mean_rank.sort_index().to_numpy(), ranks.to_numpy())
    share2 = agr[(agr.statistic == "share_top_k") & (agr.k == 2)].set_index("layer")["value"]
    in_top2 = imp[imp.method.isin(base)].assign(top=lambda d: d["rank"] < 2)
    np.testing.assert_allclose(
        share2.sort_index().to_numpy(), in_top2.groupby("layer")["top"].mean().to_numpy()
    )


@pytest.mark.slow
def test_each_student_keeps_its_rankings_top_layers(importance_run: Path) -> None:
    imp = pd.read_parquet(importance_run / "importance.parquet")
    res = pd.read_parquet(importance_run / "results.parquet")
    # the teacher and the task's reference rows (status "reference", e.g. majority) are no students
    students = res[(res.trial_id != "teacher") & (res.status != "reference")]
    assert sorted(students[STRATEGY]) == ["consensus", "hybrid", "taylor", "uniform"]
    assert (students["status"] == "ok").all(), students[["error"]]
    for _, row in students.iterrows():
        s = row[STRATEGY]
        if s == "uniform":
            assert row["kept_layers"] == "2,5"
            continue
        top = sorted(imp[(imp.method == s) & (imp["rank"] < 2)]["layer"])
        assert row["kept_layers"] == ",".join(map(str, top)), s
        assert row["student_layers"] == 2


@pytest.mark.slow
def test_report_shows_agreement_consensus_and_best_student(importance_run: Path) -> None:
    md = (importance_run / "report.md").read_text()
    for heading in (
        "## Layer importance",
        "## Agreement between importance methods",
        "### Kendall τ-b between methods (agreement matrix)",
        "### Top-k overlap and consensus 75%",
        "### Consensus ranking",
        "## Which ranking makes the best student",
    ):
        assert heading in md, heading
    assert "Consensus 75% at k: the share of layers" in md
    for png in ("importance.png", "agreement.png"):
        assert (importance_run / png).stat().st_size > 5000


def test_unknown_derived_components_are_config_problems() -> None:
    from engine.importance.config import ImportanceConfig, problems

    assert problems(ImportanceConfig(), "s.yaml") == []
    cfg = ImportanceConfig(
        hybrid_weights={"fisher": 1.0, "gradiant": 1.0},
        consensus_methods=("fisher", "ablaton", "nonsense_xyz"),
    )
    out = problems(cfg, "s.yaml")
    assert len(out) == 3
    assert out[0].startswith("s.yaml: importance.hybrid_weights.gradiant: ")
    assert "'gradiant'" in out[0] and "did you mean 'gradient'" in out[0]
    assert out[1].startswith("s.yaml: importance.consensus_methods.1: ")
    assert "did you mean 'ablation'" in out[1]
    assert out[2].startswith("s.yaml: importance.consensus_methods.2: ")
    assert "did you mean" not in out[2]
    allowed = out[2].split("(allowed: ")[1].rstrip(")").split(", ")
    # every registered method except the derived ones (which cannot be components)
    assert set(allowed) == set(IMPORTANCE.names()) - {"hybrid", "consensus"}
