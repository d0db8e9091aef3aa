"""Measurement of one built model: cost, latency and quality, each a plain function.

Every trial and the teacher are measured by the same calls, so rows are comparable:

* :mod:`~engine.measure.cost` — ``count_gflops(model, seq_len)`` (GFLOPs per example =
  2 × multiply-adds counted by fvcore on the built model, SDPA attention included),
  ``count_params``, ``count_params_nonzero``, ``weights_bytes``;
* :mod:`~engine.measure.latency` — ``measure_latency(model, batch, repeats=, warmup=)``,
  ``interleaved_latency([(model, batch), ...], repeats=, warmup=)`` (several models in turns);
* :mod:`~engine.measure.quality` — ``evaluate(model, split, task=...)`` (runs the model, the
  study's task scores it: :mod:`engine.tasks`; a task's own metrics live in its module —
  ranking metrics in :mod:`engine.tasks.ranking`).

Example::

    gflops = count_gflops(model, seq_len=64)
    logits, metrics = evaluate(model, test, task="rating_classification", batch_size=64, device="cpu")
    metrics["macro_f1"]
"""

from __future__ import annotations

from engine.measure.cost import (
    count_gflops,
    count_multiply_adds,
    count_params,
    count_params_nonzero,
    weights_bytes,
)
from engine.measure.latency import interleaved_latency, measure_latency
from engine.measure.quality import evaluate

__all__ = [
    "count_gflops",
    "count_multiply_adds",
    "count_params",
    "count_params_nonzero",
    "evaluate",
    "interleaved_latency",
    "measure_latency",
    "weights_bytes",
]
