"""The ``measure`` section of a study: how cost is measured on each built model."""

from __future__ import annotations

from pydantic import Field

from engine.configbase import Section

__all__ = ["MeasureConfig"]


class MeasureConfig(Section):
    """How cost is measured on each built model."""

    batch_size: int = Field(32, ge=1)
    latency_repeats: int = Field(10, ge=1)
    warmup: int = Field(2, ge=0)
    eval_batch_size: int = Field(64, ge=1)
    # Save each student under models/<trial_id>/ (~70 MB for a 4-of-6-layer MiniLM); false
    # for quick laptop runs: the results are the same, only the model files are not written.
    save_models: bool = True
