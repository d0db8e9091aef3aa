"""The first task, ``rating_classification``: losses from their definitions, the metrics
against a hand-computed confusion, the majority baseline by hand and by brute force, and what
it declares."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.tasks import get_task
from engine.tasks.rating_classification import classification_metrics, majority_baseline

TASK = get_task("rating_classification")
kd_loss = TASK.kd_loss


def _log_softmax(z: list[float]) -> list[float]:
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def test_declares_accuracy_and_macro_f1_as_max_and_the_default_objectives() -> None:
    assert dict(TASK.metrics) == {"accuracy": "max", "macro_f1": "max"}
    assert TASK.default_objectives == (("valid_accuracy", "max"), ("gflops", "min"))
    assert TASK.default_quality_metric == "accuracy"
    assert TASK.view.arrays == ("input_ids", "attention_mask", "labels")
    assert TASK.view.target == "labels"
    assert TASK.head_outputs(5) == 5  # one logit per class


def test_per_example_loss_is_cross_entropy_by_hand() -> None:
    z = [[1.0, 2.0, 0.5], [0.0, -1.0, 1.0], [3.0, 3.0, -2.0]]
    y = [1, 2, 0]
    expected = [-_log_softmax(row)[label] for row, label in zip(z, y, strict=True)]
    got = TASK.loss_per_example(torch.tensor(z, dtype=torch.float64), torch.tensor(y))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    assert float(TASK.loss(torch.tensor(z, dtype=torch.float64), torch.tensor(y))) == (
        pytest.approx(sum(expected) / 3, rel=1e-12)
    )


def test_example_quality_is_correctness_and_attribution_is_the_label() -> None:
    z = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    y = torch.tensor([1, 1, 1])
    assert TASK.example_quality(z, y).tolist() == [1.0, 0.0, 1.0]
    assert torch.equal(TASK.attribution_target(y), y)


def test_majority_baseline_by_brute_force() -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 4, 50)
    test = rng.integers(0, 4, 30)
    counts = Counter(train.tolist())
    majority = min(c for c in counts if counts[c] == max(counts.values()))  # ties: smallest
    acc = sum(int(t == majority) for t in test) / len(test)
    # macro-F1 over classes present in test ∪ {majority}: only the majority class has TP
    present = set(test.tolist()) | {majority}
    tp = sum(int(t == majority) for t in test)
    f1_major = 2 * tp / (sum(int(t == majority) for t in test) + len(test))
    expected_f1 = f1_major / len(present)
    rows = TASK.baselines({"train": {"labels": train}, "test": {"labels": test}}, 4)
    assert set(rows) == {"majority"}
    assert rows["majority"]["accuracy"] == pytest.approx(acc)
    assert rows["majority"]["macro_f1"] == pytest.approx(expected_f1)


def test_score_is_accuracy_and_macro_f1_of_the_argmax() -> None:
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0]])
    y = np.array([0, 1, 1, 2])
    got = TASK.score(logits, {"labels": y})
    # per class: 0: tp1 fp1 fn0 → 2/3; 1: tp1 fn1 → 2/3; 2: fp1 fn1 → 0
    assert got["accuracy"] == pytest.approx(0.5)
    assert got["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


# ------------------------------------------------- moved from tests/engine/compress/test_distill.py
def test_kd_loss_equals_cross_entropy_without_distillation() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    got = kd_loss(s, y, t, temperature=3.0, alpha_distill=0.0, alpha_task=1.0)
    torch.testing.assert_close(got, F.cross_entropy(s, y))


def test_kd_loss_matches_hand_computation_at_t2() -> None:
    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]]
    t = [[2.0, 1.0, 0.0], [1.0, 1.0, 3.0]]
    y = [1, 2]
    temp, a_d, a_t = 2.0, 0.7, 0.3

    def softmax(z: list[float]) -> list[float]:
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    kl = 0.0
    ce = 0.0
    for zs, zt, label in zip(s, t, y, strict=True):
        ps = softmax([v / temp for v in zs])
        pt = softmax([v / temp for v in zt])
        kl += sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps, strict=True))
        ce += -math.log(softmax(zs)[label])
    expected = a_d * temp**2 * kl / 2 + a_t * ce / 2
    got = kd_loss(
        torch.tensor(s),
        torch.tensor(y),
        torch.tensor(t),
        temperature=temp,
        alpha_distill=a_d,
        alpha_task=a_t,
    )
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_kd_loss_needs_teacher_logits() -> None:
    with pytest.raises(ValueError, match="teacher logits"):
        kd_loss(
            torch.zeros(2, 3),
            torch.zeros(2, dtype=torch.long),
            None,
            temperature=2.0,
            alpha_distill=0.5,
            alpha_task=0.5,
        )


def test_metrics_match_a_hand_computed_confusion() -> None:
    labels = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    # class 0: TP 1, FP 1, FN 1 → F1 2/4; class 1: TP 2, FP 1 → 4/5; class 2: TP 1, FN 1 → 2/3;
    # class 3 (num_labels = 4) is in neither → left out of the mean (sklearn's default)
    m = classification_metrics(preds, labels, 4)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    logits = np.eye(4)[preds] * 3.0 - 1.0
    assert classification_metrics(torch.as_tensor(logits), labels, 4) == m
    # a class only predicted, never true, counts with F1 = 0
    m2 = classification_metrics([0, 1], [0, 0], 3)
    assert m2 == {"accuracy": 0.5, "macro_f1": pytest.approx((2 / 3 + 0) / 2)}
    with pytest.raises(ValueError, match="labels"):
        classification_metrics([0, 1], [0, 5], 3)
    with pytest.raises(ValueError, match="predictions"):
        classification_metrics([0], [0, 1], 3)


def test_majority_baseline() -> None:
    # train majority is 2; on test [2, 0, 1, 2]: class 2 TP 2, FP 2 → 2/3; classes 0, 1 → 0
    m = majority_baseline([2, 2, 1, 0, 2], [2, 0, 1, 2], 5)
    assert m == {"accuracy": 0.5, "macro_f1": pytest.approx((2 / 3) / 3)}
    # a tie goes to the smaller label
    assert majority_baseline([1, 0], [0, 1, 1], 2)["accuracy"] == pytest.approx(1 / 3)
