"""Compression stages, composable in any order from a study's ``pipeline.order``.

Extension point — one module per stage, everything declared where it is registered::

    @register_stage("truncate", config=TruncateConfig, record=TruncateRecord, ...)
    def apply(model: PreTrainedModel, cfg: TruncateConfig, ctx: StageContext) -> PreTrainedModel:
        ...

``cfg`` is the stage's own section (``pipeline.<name>``); what it did goes into
``ctx.records[<name>]`` as its typed record. A stage never imports Ray; the Tune trainable
in :mod:`engine.trial` only runs the stages in order. The pipeline config, validation, the
results budget, checkpoints, save/reload and result columns ask the registry
(:mod:`engine.compress.base`, :mod:`engine.compress.pipeline`).
"""

from __future__ import annotations

# register the stages; registration order = the pipeline config's field order
# isort: off
from engine.compress import truncate  # noqa: F401
from engine.compress import distill  # noqa: F401
from engine.compress import prune  # noqa: F401
from engine.compress import quantize  # noqa: F401
from engine.compress import early_exit  # noqa: F401

# isort: on
from engine.compress.base import STAGES, Stage, StageContext, StageRecord, register_stage
from engine.compress.pipeline import pipeline_config

__all__ = ["STAGES", "Stage", "StageContext", "StageRecord", "pipeline_config", "register_stage"]
