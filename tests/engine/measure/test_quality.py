"""engine.measure.quality: classification metrics against a hand-computed confusion, the
majority baseline, and evaluate against a direct forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.measure import classification_metrics, evaluate, majority_baseline
from tests.conftest import tiny_bert, toy_batches

# ----------------------------------------------------------------------------- quality


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


def test_evaluate_matches_a_direct_forward() -> None:
    model = tiny_bert()
    batches = toy_batches(n_batches=2, batch_size=8)
    data = {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}
    logits, metrics = evaluate(model, data, batch_size=5, device="cpu")
    with torch.no_grad():
        direct = model(
            input_ids=torch.as_tensor(data["input_ids"]),
            attention_mask=torch.as_tensor(data["attention_mask"]),
        ).logits
    assert logits.shape == (16, 5) and logits.dtype == np.float32
    torch.testing.assert_close(torch.as_tensor(logits), direct, rtol=1e-5, atol=1e-5)
    assert metrics == classification_metrics(direct, data["labels"], 5)
