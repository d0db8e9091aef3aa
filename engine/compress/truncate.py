"""``truncate`` stage: keep k of the teacher's L layers, weights copied.

Selection strategies: any importance method computed by the study (top-k by score), or a
baseline — ``uniform`` (layers ⌊i·L/k⌉ − 1 for i = 1..k: evenly spaced, ending at the last
layer, as in DistilBERT's every-other-layer), ``first_last`` (the first k − 1 and the last),
``random`` (k layers drawn under the trial seed).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field, model_validator
from transformers import PreTrainedModel

from engine.compress.base import StageContext, StageRecord, register_stage
from engine.configbase import Section
from engine.models import keep_layers, num_layers

__all__ = [
    "BASELINE_STRATEGIES",
    "TruncateConfig",
    "TruncateRecord",
    "apply",
    "num_kept",
    "select_layers",
]

BASELINE_STRATEGIES = ("uniform", "first_last", "random")


class TruncateConfig(Section):
    """Keep k of L layers, chosen by an importance method or a baseline strategy.

    Exactly one of ``keep_layers`` (k) and ``keep_ratio`` (k = round(ratio × L), at least 1)
    is set. ``strategy`` is an importance method computed by the study (top-k by score) or
    one of ``uniform`` (evenly spaced, last layer kept), ``first_last`` (first k−1 and the
    last), ``random`` (k layers drawn under the trial seed).
    """

    # an override of one member (CLI, search.space, search.extra, a trial's values) replaces
    # the other: engine.config.apply_overrides clears it
    either_or: ClassVar[tuple[tuple[str, ...], ...]] = (("keep_layers", "keep_ratio"),)

    keep_layers: int | None = Field(None, ge=1)
    keep_ratio: float | None = Field(None, gt=0, le=1)
    strategy: str = "fisher"

    @model_validator(mode="after")
    def _one_size(self) -> TruncateConfig:
        if (self.keep_layers is None) == (self.keep_ratio is None):
            raise ValueError(
                "set exactly one of keep_layers and keep_ratio "
                f"(got keep_layers={self.keep_layers}, keep_ratio={self.keep_ratio})"
            )
        return self


@dataclass(frozen=True)
class TruncateRecord(StageRecord):
    """``kept_layers``: the teacher layers kept (forward order) ``of`` its total."""

    strategy: str
    kept_layers: list[int]
    of: int

    def kept_teacher_layers(self) -> list[int] | None:
        return list(self.kept_layers)


def _check(cfg: TruncateConfig, study: Any) -> list[tuple[str, str]]:
    allowed = (*study.importance.methods, *BASELINE_STRATEGIES)
    if cfg.strategy in allowed:
        return []
    return [
        (
            "strategy",
            f"{cfg.strategy!r} is neither a baseline nor a method in importance.methods "
            f"(allowed: {', '.join(allowed)})",
        )
    ]


def _row_columns(record: TruncateRecord | None) -> dict[str, Any]:
    return {"kept_layers": ",".join(map(str, record.kept_layers if record else []))}


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


@register_stage(
    "truncate",
    config=TruncateConfig,
    record=TruncateRecord,
    default=TruncateConfig(keep_ratio=0.5),
    default_on=True,
    row_columns=_row_columns,
    check=_check,
)
def apply(model: PreTrainedModel, cfg: TruncateConfig, ctx: StageContext) -> PreTrainedModel:
    total = num_layers(model)
    k = num_kept(cfg, total)
    kept = select_layers(cfg.strategy, k, total, ctx)
    ctx.records["truncate"] = TruncateRecord(strategy=cfg.strategy, kept_layers=kept, of=total)
    return keep_layers(model, kept)
