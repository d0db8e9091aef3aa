"""Contract tests generated from the stage registry: every stage, and every order of the
stages (quantize last), runs on a tiny random BERT through ``build_student`` and is measured."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from engine.assess import assess
from engine.compress import STAGES
from engine.compress.save import load_compressed
from engine.config import ConfigError, StudyConfig, validate
from engine.trial import SharedInputs, build_student
from tests.conftest import tiny_shared_inputs

TRAINING = ["truncate", "distill", "prune"]
ALL_ORDERS = [
    [*perm, *tail]
    for r in (1, 2, 3)
    for perm in itertools.permutations(TRAINING, r)
    for tail in ([], ["quantize"])
    if r > 1 or not tail  # a single stage + quantize adds nothing over the longer orders
] + [["quantize"], ["early_exit"], ["truncate", "distill", "prune", "early_exit"]]
# Fast set: each stage alone and every full order ending in quantize; the rest run as slow.
FAST = [o for o in ALL_ORDERS if len(o) == 1 or len(o) == 4]
ORDERS = [
    pytest.param(o, id="-".join(o), marks=() if o in FAST else pytest.mark.slow) for o in ALL_ORDERS
]


@pytest.fixture(scope="module")
def shared() -> SharedInputs:
    return tiny_shared_inputs()


def _study(order: list[str]) -> StudyConfig:
    return validate(
        {
            "name": "contract",
            "description": "stage orders",
            "data": {"max_length": 12},
            "pipeline": {
                "order": order,
                "truncate": {"keep_layers": 2, "strategy": "uniform"},
                "distill": {"max_steps": 2, "batch_size": 8},
                "prune": {
                    "steps": 2,
                    "head_sparsity": 0.25,
                    "neuron_sparsity": 0.5,
                    "recovery_steps": 1,
                    "batch_size": 8,
                    "criterion": "taylor",
                    "score_batches": 1,
                },
                "early_exit": {"steps": 3},
            },
            "measure": {"batch_size": 4, "latency_repeats": 1, "warmup": 0},
        },
        "test",
    )


def test_every_registered_stage_is_covered() -> None:
    assert set(STAGES.names()) == {*TRAINING, "quantize", "early_exit"}, "add it to ORDERS"


def test_every_order_in_the_shipped_studies_is_covered() -> None:
    from engine.config import list_studies, load_study

    for name in list_studies():
        study = load_study(name)
        orders = [list(study.pipeline.order), *study.search.space.get("pipeline.order", [])]
        for order in orders:
            assert list(order) in ALL_ORDERS, (name, order)


@pytest.mark.parametrize("order", ORDERS)
def test_every_stage_order_builds_and_measures(
    order: list[str], shared: SharedInputs, tmp_path: Path
) -> None:
    study = _study(order)
    cpu = torch.device("cpu")
    model, record = build_student(study, shared, 0, cpu, tmp_path / "m")
    for stage in order:
        assert (stage if stage != "quantize" else "quant") in record
    evals = {k: shared.splits[k] for k in ("valid", "test")}
    row = assess(model, evals, study, cpu, record)
    for col in ("accuracy", "gflops", "gflops_theoretical", "params", "params_nonzero",
                "weights_bytes", "latency_ms_p50", "peak_mem_bytes", "quant"):  # fmt: skip
        assert col in row, col
    assert row["quant"] == ("dynamic_int8" if "quantize" in order else "none")
    assert row["gflops_theoretical"] == row["gflops"]  # structured pruning: no mask sparsity
    if "early_exit" in order:
        assert 1 <= row["exit_avg_layers"] <= row["student_layers"]
        assert len(json.loads(row["exit_curve"])) == len(record["early_exit"]["thresholds"])
    assert row["student_layers"] == (2 if "truncate" in order else 4)
    again = load_compressed(tmp_path / "m")
    b = shared.splits["test"]
    ids, mask = torch.as_tensor(b["input_ids"]), torch.as_tensor(b["attention_mask"])
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=ids, attention_mask=mask).logits,
            again(input_ids=ids, attention_mask=mask).logits,
        )


def test_masked_pruning_reports_theoretical_gflops(shared: SharedInputs, tmp_path: Path) -> None:
    raw = _study(["prune"]).model_dump(mode="python")
    raw["pipeline"]["prune"].update(method="unstructured", criterion="magnitude",
                                    weight_sparsity=0.6)  # fmt: skip
    study = validate(raw, "test")
    model, record = build_student(study, shared, 0, torch.device("cpu"))
    row = assess(model, {"test": shared.splits["test"]}, study, torch.device("cpu"), record)
    assert record["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert row["gflops_theoretical"] == pytest.approx(row["gflops"] * (1 - record["sparsity"]))
    assert row["params_nonzero"] < row["params"]


def test_quantize_must_be_last() -> None:
    with pytest.raises(ConfigError, match="'quantize' must be the last stage"):
        _study(["quantize", "distill"])
