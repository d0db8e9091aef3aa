"""engine.early_stopping: a teacher trained with model selection on validation keeps the weights
of its best evaluation — checked on a real next-item teacher (MovieLens-100K, a GPT-2 item
model from scratch) by re-scoring the returned weights, and the run's record against the
definition (evaluation steps, best = the first maximum, stop after ``patience`` evaluations
without a gain); and the teacher's cache key follows the validation rows that choose it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.early_stopping import EarlyStopping, selection_subset
from engine.teacher import TeacherConfig, finetune, load_model, teacher_key


def test_the_key_follows_the_validation_rows_only_with_early_stopping() -> None:
    rng = np.random.default_rng(0)
    train = {"input_ids": rng.integers(1, 50, (20, 6)), "attention_mask": np.ones((20, 6), int),
             "labels": rng.integers(1, 50, 20)}  # fmt: skip
    valid = {k: v[:8].copy() for k, v in train.items()}
    other = {k: v.copy() for k, v in valid.items()}
    other["labels"][3] += 1  # one validation target changed
    plain = TeacherConfig(model="scratch:gpt2")
    stopping = TeacherConfig(model="scratch:gpt2", early_stopping=EarlyStopping(eval_examples=8))

    def key(cfg, v):
        return teacher_key(cfg, train, 51, task="next_item", valid=v)

    assert key(plain, valid) == key(plain, other) == key(plain, None)  # as before the setting
    assert key(stopping, valid) != key(stopping, other)
    # rows beyond the selection subset do not choose the weights, so do not enter the key
    small = TeacherConfig(model="scratch:gpt2", early_stopping=EarlyStopping(eval_examples=3))
    assert key(small, valid) == key(small, other)
    with pytest.raises(ValueError, match="validation rows"):
        key(stopping, None)


def test_the_next_item_teacher_stops_early_by_default_and_others_do_not() -> None:
    from engine.config import load_study

    assert load_study("smoke-rec").teacher.early_stopping == EarlyStopping()
    assert load_study("smoke").teacher.early_stopping is None


@pytest.mark.slow
def test_a_real_teacher_keeps_its_best_evaluation(ray_local) -> None:
    from engine.data.config import DataConfig
    from engine.data.sequences import prepare_sequences
    from engine.measure import evaluate

    data = prepare_sequences(
        DataConfig(corpus="movielens", max_length=8, train_size=600, valid_size=200, test_size=50)
    )
    every, patience = 4, 2
    cfg = TeacherConfig(
        model="scratch:gpt2",
        freeze_embeddings=False,
        lr=3e-3,
        batch_size=32,
        epochs=40,  # a budget far past the point where 600 prefixes are learnt by heart
        early_stopping=EarlyStopping(patience=patience, eval_every_steps=every, eval_examples=150),
    )
    evals = {"valid": data.valid, "test": data.test}
    art = finetune(cfg, data.train, evals, data.num_labels, key="t", threads=2, task="next_item")
    t = art.metrics["training"]
    steps = [s for s, _ in t["evaluations"]]
    values = [v for _, v in t["evaluations"]]
    budget = math.ceil(40 * math.ceil(600 / 32))
    assert t["budget_steps"] == budget and t["selection_metric"] == "valid_ndcg_at_10"
    # evaluations every 4 steps; the best is the first maximum
    assert steps == list(range(every, t["steps_run"] + 1, every))
    assert t["best_value"] == max(values) and t["best_step"] == steps[values.index(max(values))]
    # it stopped after `patience` evaluations without a gain, well inside the budget
    assert t["stopped_early"] and t["steps_run"] < budget
    after = [v for s, v in t["evaluations"] if s > t["best_step"]]
    assert len(after) == patience and all(v <= t["best_value"] for v in after)
    assert t["epochs_run"] == round(t["steps_run"] / math.ceil(600 / 32), 3)
    # the weights returned are the best evaluation's: scored again, the same figure
    model = load_model(art.config, art.state_dict, "next_item")
    subset = selection_subset(data.valid, 150)
    _, again = evaluate(model, subset, task="next_item", batch_size=64, device="cpu")
    assert again["ndcg_at_10"] == pytest.approx(t["best_value"], abs=1e-9)
    assert (
        art.metrics["valid_ndcg_at_10"] >= 0
        and torch.isfinite(torch.as_tensor(art.train_logits)).all()
    )
