"""engine.measure.quality: evaluate against a direct forward (the classification metrics'
own tests are in tests/engine/tasks/test_rating_classification.py)."""

from __future__ import annotations

import numpy as np
import torch

from engine.measure import evaluate
from engine.tasks.rating_classification import classification_metrics
from tests.conftest import tiny_bert, toy_batches

# ----------------------------------------------------------------------------- quality


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
