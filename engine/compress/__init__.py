"""Compression stages, composable in any order from a study's ``pipeline.order``.

Extension point — one signature for every stage::

    @register_stage("truncate")
    def apply(model: PreTrainedModel, cfg: TruncateConfig, ctx: StageContext) -> PreTrainedModel:
        ...

``cfg`` is the stage's own section (``pipeline.<name>``). A stage never imports Ray; the
Tune trainable in :mod:`engine.trial` only runs the stages in order.
"""

from __future__ import annotations

from engine.compress import distill, early_exit, prune, quantize, truncate  # noqa: F401  (register the stages)
from engine.compress.base import STAGES, StageContext, register_stage

__all__ = ["STAGES", "StageContext", "register_stage"]
