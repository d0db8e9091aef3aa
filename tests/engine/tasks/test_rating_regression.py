"""The ``rating_regression`` task (engine/tasks/rating_regression.py): metrics against a
per-example loop and scikit-learn, the data view, the reference rows against hand figures and
an independent ridge solve, the model head, the ensemble teacher, and the stages of the
``rating`` study (truncate, distill, structured prune with pruning-aware KD, quantize) on a
tiny regression teacher. The registry's contract tests (test_contract.py) cover the losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mean_absolute_error, mean_squared_error

from engine.assess import assess
from engine.compress import STAGES, StageContext
from engine.compress.distill import DistillConfig, teacher_targets
from engine.config import StudyConfig
from engine.data import PreparedData
from engine.tasks import get_task
from engine.tasks.bias_mf import BIAS_REG
from engine.tasks.rating_regression import index_ids, regression_metrics, regression_view
from engine.trial import SharedInputs, build_student
from tests.conftest import tiny_bert, tiny_gpt2, toy_arrays
from tests.engine.tasks.test_bias_mf import ridge_biases

TASK = get_task("rating_regression")


def test_task_declares_float_targets_and_min_metrics() -> None:
    assert TASK.view.target == "labels" and TASK.view.target_dtype is np.float32
    assert dict(TASK.metrics) == {"rmse": "min", "mae": "min"}
    assert TASK.default_objectives == (("valid_rmse", "min"), ("gflops", "min"))
    assert TASK.default_quality_metric == "rmse"
    assert TASK.head_outputs(5) == 1


def test_metrics_match_a_per_example_loop_and_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(1, 6, 50).astype(np.float32)
    pred = rng.normal(3.5, 1.2, (50, 1)).astype(np.float32)
    got = regression_metrics(pred, y)
    sq = [(float(pred[i, 0]) - float(y[i])) ** 2 for i in range(50)]
    ab = [abs(float(pred[i, 0]) - float(y[i])) for i in range(50)]
    assert got["rmse"] == pytest.approx(math.sqrt(sum(sq) / 50), rel=1e-12)
    assert got["mae"] == pytest.approx(sum(ab) / 50, rel=1e-12)
    assert got["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, pred[:, 0])), rel=1e-6)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, pred[:, 0]), rel=1e-6)
    assert TASK.score(pred, {"labels": y}) == got
    with pytest.raises(ValueError, match="predictions of shape"):
        regression_metrics(pred[:3], y)


def test_index_ids_numbers_the_sorted_train_ids_from_one() -> None:
    train = np.array(["u9", "u2", "", "u9", "u5"])
    other = np.array(["u5", "new", "", "u2", "u9"])
    # brute force: the sorted distinct non-empty train ids, position + 1; anything else 0
    known = sorted({u for u in train.tolist() if u})
    expect = [known.index(u) + 1 if u in known else 0 for u in other.tolist()]
    assert index_ids(train, other).tolist() == expect == [2, 0, 0, 1, 3]
    assert index_ids(np.array([""]), other).tolist() == [0] * 5  # a corpus without users


def _prepared(splits: dict[str, dict[str, np.ndarray]]) -> PreparedData:
    return PreparedData(**splits, num_labels=5, label_names=[], files=[], bad_rows=[], stats={})


def _text_split(users: list[str], items: list[str], labels: list[int]) -> dict[str, np.ndarray]:
    n = len(users)
    return {
        "input_ids": np.arange(n * 4).reshape(n, 4),
        "attention_mask": np.ones((n, 4), np.int64),
        "labels": np.asarray(labels, np.int64),
        "row_key": np.asarray([f"k{u}{i}" for u, i in zip(users, items, strict=True)]),
        "user_id": np.asarray(users),
        "item_id": np.asarray(items),
    }


def test_regression_view_makes_stars_and_indexes_ids_on_train() -> None:
    data = _prepared(
        {
            "train": _text_split(["a", "b", "a"], ["x", "y", "y"], [4, 0, 2]),
            "valid": _text_split(["b"], ["z"], [3]),
            "test": _text_split(["c", "a"], ["x", "y"], [1, 4]),
        }
    )
    view = regression_view(data)
    assert view.train["labels"].dtype == np.float32
    assert view.train["labels"].tolist() == [5.0, 1.0, 3.0]  # class id + 1 = stars
    assert view.test["labels"].tolist() == [2.0, 5.0]
    assert view.train["user_idx"].tolist() == [1, 2, 1]
    assert view.train["item_idx"].tolist() == [1, 2, 2]
    assert (view.valid["user_idx"].tolist(), view.valid["item_idx"].tolist()) == ([2], [0])
    assert (view.test["user_idx"].tolist(), view.test["item_idx"].tolist()) == ([0, 1], [1, 2])
    np.testing.assert_array_equal(view.test["input_ids"], data.test["input_ids"])
    assert data.train["labels"].tolist() == [4, 0, 2]  # the pipeline's splits are not changed
    assert view.stats["rating_regression"]["train_mean_rating"] == pytest.approx(3.0)
    assert view.stats["rating_regression"]["test_unseen_users"] == 1


def _rating_split(users, items, ratings) -> dict[str, np.ndarray]:
    return {
        "labels": np.asarray(ratings, np.float32),
        "user_idx": np.asarray(users, np.int64),
        "item_idx": np.asarray(items, np.int64),
    }


def test_reference_rows_by_hand_and_by_an_independent_ridge_solve() -> None:
    rng = np.random.default_rng(3)
    n = 200
    users, items = rng.integers(1, 30, n), rng.integers(1, 10, n)
    user_bias, item_bias = rng.normal(0, 0.8, 30), rng.normal(0, 0.6, 10)
    ratings = np.clip(np.round(3.6 + user_bias[users] + item_bias[items]), 1, 5)
    train = _rating_split(users, items, ratings)
    valid = _rating_split([1, 2, 0], [3, 0, 4], [5, 2, 4])
    test = _rating_split([4, 0, 7, 29], [1, 2, 0, 9], [3, 4, 1, 5])
    rows = TASK.baselines({"train": train, "valid": valid, "test": test}, 5)
    assert set(rows) == {"global_mean", "bias_mf"}
    mu = float(ratings.mean())
    # global mean: the training mean for everyone
    err = [mu - 3, mu - 4, mu - 1, mu - 5]
    assert rows["global_mean"]["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in err) / 4))
    assert rows["global_mean"]["mae"] == pytest.approx(sum(abs(e) for e in err) / 4)
    assert rows["global_mean"]["valid_mae"] == pytest.approx(
        (abs(mu - 5) + abs(mu - 2) + abs(mu - 4)) / 3
    )
    # bias model: μ + b_u + b_i from numpy's least squares on the one-hot ridge design
    b_u, b_i = ridge_biases(users, items, ratings, BIAS_REG)
    pred = [mu + b_u[u] + b_i[i] for u, i in zip(test["user_idx"], test["item_idx"], strict=True)]
    expect = regression_metrics(pred, test["labels"])
    assert rows["bias_mf"]["rmse"] == pytest.approx(expect["rmse"], rel=1e-9)
    assert rows["bias_mf"]["mae"] == pytest.approx(expect["mae"], rel=1e-9)
    vpred = [mu + b_u[1] + b_i[3], mu + b_u[2], mu + b_i[4]]  # unseen (0): no bias
    assert rows["bias_mf"]["valid_rmse"] == pytest.approx(
        regression_metrics(vpred, valid["labels"])["rmse"], rel=1e-9
    )
    # ratings planted from user and item biases: the bias model beats the global mean on train
    fit_train = TASK.baselines({"train": train, "valid": train, "test": train}, 5)
    assert fit_train["bias_mf"]["rmse"] < 0.8 * fit_train["global_mean"]["rmse"]


def test_without_user_and_item_ids_only_the_global_mean_is_given() -> None:
    split = {"labels": np.array([1.0, 5.0, 3.0], np.float32)}
    rows = TASK.baselines({"train": split, "valid": split, "test": split}, 5)
    assert set(rows) == {"global_mean"}
    assert rows["global_mean"]["mae"] == pytest.approx(4 / 3)


def test_example_table_recomputes_the_metrics() -> None:
    split = {
        "labels": np.array([5.0, 1.0, 4.0], np.float32),
        "row_key": np.array(["a", "b", "c"]),
        "user_id": np.array(["u1", "u2", "u1"]),
        "item_id": np.array(["i1", "i1", "i2"]),
    }
    out = np.array([[4.5], [2.0], [4.0]], np.float32)
    table = TASK.example_table(out, split).to_pandas()
    assert table.columns.tolist() == ["row_key", "user_id", "item_id", "rating", "prediction"]
    assert table.user_id.tolist() == ["u1", "u2", "u1"]
    err = table.prediction - table.rating
    assert math.sqrt((err**2).mean()) == pytest.approx(TASK.score(out, split)["rmse"])


def test_embedded_model_has_one_regression_output_and_reloads_from_its_config() -> None:
    model = TASK.build_model("embedded:all-MiniLM-L6-v2", 1, seed=0).eval()
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    ids = torch.tensor([[101, 2307, 3185, 102], [101, 6659, 102, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).logits
    assert out.shape == (2, 1)
    again = TASK.model_from_config(model.config.to_dict())
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(input_ids=ids, attention_mask=mask).logits, out)


def test_init_head_starts_the_output_at_the_training_mean() -> None:
    """With the head's weights zeroed the model's output is its bias alone: after init_head
    every review is predicted at the mean of the training ratings (by hand: 13 / 4)."""
    model = tiny_bert(num_layers=1, num_labels=1, seed=0)
    TASK.init_head(model, {TASK.view.target: np.array([5.0, 4.0, 1.0, 3.0], np.float32)})
    with torch.no_grad():
        model.classifier.weight.zero_()
    out = _predict(model, _float_split(0))
    torch.testing.assert_close(out, torch.full_like(out, 13 / 4))
    gpt2 = tiny_gpt2(num_layers=1, num_labels=1)  # no bias in GPT-2's score head: unchanged
    before = {k: v.clone() for k, v in gpt2.state_dict().items()}
    TASK.init_head(gpt2, {TASK.view.target: np.array([5.0])})
    assert all(torch.equal(before[k], v) for k, v in gpt2.state_dict().items())


# ----------------------------------------------------------------------------- ensemble and stages


def _float_split(seed: int, n_batches: int = 2) -> dict[str, np.ndarray]:
    arrays = toy_arrays(seed, n_batches)
    arrays["labels"] = (arrays["labels"] + 1).astype(np.float32)  # stars 1..5
    return arrays


def _predict(model: torch.nn.Module, split: dict) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(
            input_ids=torch.as_tensor(split["input_ids"]),
            attention_mask=torch.as_tensor(split["attention_mask"]),
        ).logits


def test_ensemble_teacher_distils_towards_the_weighted_mean_prediction(tmp_path) -> None:
    """teachers [study teacher ×3, saved A ×1]: the target is (3·ŷ_0 + ŷ_A) / 4 computed from
    A's own forward, and training on it equals training from one teacher predicting that."""
    train = {k: torch.as_tensor(v) for k, v in _float_split(0, 4).items()}
    a = tiny_bert(num_layers=2, num_labels=1, seed=11)
    a.save_pretrained(tmp_path / "a")
    y0 = 3 + torch.randn(32, 1, generator=torch.Generator().manual_seed(7))
    hand = (3 * y0 + _predict(a, train)) / 4
    cfg = DistillConfig(
        epochs=1, batch_size=8, lr=1e-3, alpha_distill=1.0, alpha_task=0.0,
        teachers=[{"path": "teacher", "weight": 3}, {"path": str(tmp_path / "a"), "weight": 1}],
    )  # fmt: skip
    models = []
    for logits, distill in ((y0, cfg), (hand, cfg.model_copy(update={"teachers": None}))):
        student = tiny_bert(num_layers=1, num_labels=1, seed=2)
        ctx = StageContext(
            teacher=student, train=train, teacher_logits=logits, importance={}, seed=0, task=TASK
        )
        if distill.teachers is not None:
            torch.testing.assert_close(teacher_targets(distill, ctx), hand, rtol=1e-5, atol=1e-5)
        models.append(STAGES.get("distill")(student, distill, ctx))
        assert ctx.record["distill"]["teachers"] == (2 if distill.teachers else 1)
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    moved = _predict(models[0], train)
    start = _predict(tiny_bert(num_layers=1, num_labels=1, seed=2), train)
    # distillation alone pulled the student's predictions towards the ensemble's
    assert float((moved - hand).pow(2).mean()) < float((start - hand).pow(2).mean())


@pytest.fixture(scope="module")
def regression_shared() -> SharedInputs:
    teacher = tiny_bert(num_layers=4, num_labels=1, seed=0)
    teacher.config.problem_type = "regression"
    splits = {"train": _float_split(0, 4), "valid": _float_split(1), "test": _float_split(2)}
    logits = _predict(teacher, splits["train"]).numpy()
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    return SharedInputs(teacher.config.to_dict(), state, logits, splits, 1, {})


def _study(**pipeline) -> StudyConfig:
    return StudyConfig.model_validate(
        {
            "name": "rating-tiny",
            "description": "the rating study's stages on a tiny regression teacher",
            "task": "rating_regression",
            "data": {"max_length": 12},
            "pipeline": pipeline,
            "measure": {"latency_repeats": 1, "warmup": 0, "batch_size": 4, "eval_batch_size": 64},
        }
    )


def _rmse_in_one_forward(model: torch.nn.Module, split: dict) -> float:
    pred = _predict(model, split)[:, 0].tolist()
    y = split["labels"].tolist()
    return math.sqrt(sum((p - t) ** 2 for p, t in zip(pred, y, strict=True)) / len(y))


def test_rating_study_stages_build_and_score_a_regression_student(regression_shared) -> None:
    """truncate → distill → structured prune with pruning-aware KD → dynamic int8, in a trial's
    build_student, then assess: the student is smaller, and its RMSE is the one recomputed
    from its own predictions."""
    from engine.importance import LayerScores

    shared = regression_shared
    shared.importance = {"fisher": LayerScores("fisher", [4.0, 1.0, 3.0, 2.0], 64)}
    study = _study(
        order=["truncate", "distill", "prune", "quantize"],
        truncate={"keep_layers": 2, "strategy": "fisher"},
        distill={"epochs": 1, "batch_size": 8, "lr": 1e-3},
        prune={"method": "structured", "criterion": "fisher", "head_sparsity": 0.5,
               "neuron_sparsity": 0.5, "steps": 4, "prune_every": 2, "score_batches": 1,
               "batch_size": 8, "kd": True, "alpha_distill": 0.5, "alpha_task": 0.5,
               "recovery_steps": 2},
        quantize={"backend": "dynamic_int8"},
    )  # fmt: skip
    model, record = build_student(study, shared, seed=0, device=torch.device("cpu"))
    assert record["truncate"]["kept_layers"] == [0, 2]  # the two highest Fisher scores
    assert record["prune"]["ffn_width"] == 32 and record["prune"]["ffn_width_before"] == 64
    assert record["prune"]["prune_train_steps"] == 4
    assert record["prune"]["recovery"]["steps"] == 2
    assert math.isfinite(record["prune"]["recovery"]["final_loss"])
    assert record["quantize"]["backend"] == "dynamic_int8"
    evals = {"valid": shared.splits["valid"], "test": shared.splits["test"]}
    row = assess(model, evals, study, torch.device("cpu"), record)
    assert row["rmse"] == pytest.approx(_rmse_in_one_forward(model, evals["test"]), rel=1e-5)
    assert row["valid_rmse"] == pytest.approx(_rmse_in_one_forward(model, evals["valid"]), rel=1e-5)
    assert "accuracy" not in row and row["student_layers"] == 2
    teacher = TASK.model_from_config(shared.teacher_config)
    teacher.load_state_dict(shared.teacher_state)
    assert row["params"] < sum(p.numel() for p in teacher.parameters())


@pytest.mark.slow
def test_prepare_on_the_real_pipeline_gives_each_review_its_stars_and_ids(ray_local) -> None:
    """Amazon 2023 fixture through the task's prepare: each row's float target is the rating
    the reader gives its (user, item) pair, and the ids are numbered on the train split."""
    from engine.data import DataConfig
    from tests.engine.data.conftest import ASSETS, plain_rows

    path = str(ASSETS / "amazon2023")
    data = TASK.prepare(
        DataConfig(corpus="amazon-2023", path=path, max_bad_fraction=0.5),
        "embedded:all-MiniLM-L6-v2",
    )
    rows, _ = plain_rows("amazon-2023", "amazon2023")
    stars: dict[tuple[str, str], set[float]] = {}
    for r in rows:
        if not r["reason"]:
            stars.setdefault((r["user_id"], r["item_id"]), set()).add(float(r["rating"]))
    known = sorted(set(data.train["user_id"].tolist()))
    seen = 0
    for split in ("train", "valid", "test"):
        got = getattr(data, split)
        assert got["labels"].dtype == np.float32
        for y, user, item, u in zip(
            got["labels"], got["user_id"], got["item_id"], got["user_idx"], strict=True
        ):
            if len(stars[(user, item)]) == 1:  # a pair reviewed twice keeps its earliest
                assert float(y) in stars[(user, item)]
                seen += 1
            assert u == (known.index(user) + 1 if user in known else 0)
    assert seen >= 10
