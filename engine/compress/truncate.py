"""``truncate`` stage: keep k of the teacher's L layers, weights copied.

Selection strategies: any importance method computed by the study (top-k by score), or a
baseline — ``uniform`` (layers ⌊i·L/k⌉ − 1 for i = 1..k: evenly spaced, ending at the last
layer, as in DistilBERT's every-other-layer), ``first_last`` (the first k − 1 and the last),
``random`` (k layers drawn under the trial seed).
"""

from __future__ import annotations

import math
import random

from transformers import PreTrainedModel

from engine.compress.base import StageContext, register_stage
from engine.config import TruncateConfig
from engine.models import keep_layers, num_layers

__all__ = ["apply", "num_kept", "select_layers"]


def num_kept(cfg: TruncateConfig, total: int) -> int:
    if cfg.keep_layers is not None:
        k = cfg.keep_layers
    else:
        k = max(1, math.floor(cfg.keep_ratio * total + 0.5))  # round half up
    if k > total:
        raise ValueError(f"keep_layers={k} exceeds the model's {total} layers")
    return k


def select_layers(strategy: str, k: int, total: int, ctx: StageContext) -> list[int]:
    """The k layer indices (forward order) that ``strategy`` keeps."""
    if strategy == "uniform":  # spacing L/k >= 1, so the rounded indices never collide
        return sorted({math.floor((i + 1) * total / k + 0.5) - 1 for i in range(k)})
    if strategy == "first_last":
        return [*range(k - 1), total - 1] if k > 1 else [total - 1]
    if strategy == "random":
        return sorted(random.Random(ctx.seed).sample(range(total), k))
    if strategy not in ctx.importance:
        known = ", ".join(sorted(ctx.importance)) or "none"
        raise ValueError(f"no importance scores for strategy {strategy!r} (computed: {known})")
    scores = ctx.importance[strategy]
    if len(scores.scores) != total:
        raise ValueError(f"{strategy} scored {len(scores.scores)} layers, model has {total}")
    return scores.top_k(k)


@register_stage("truncate")
def apply(model: PreTrainedModel, cfg: TruncateConfig, ctx: StageContext) -> PreTrainedModel:
    total = num_layers(model)
    k = num_kept(cfg, total)
    kept = select_layers(cfg.strategy, k, total, ctx)
    ctx.record["truncate"] = {"strategy": cfg.strategy, "kept_layers": kept, "of": total}
    return keep_layers(model, kept)
