"""The ``importance:`` section of a study file."""

from __future__ import annotations

from pydantic import Field

from engine.configbase import Section

__all__ = ["ImportanceConfig"]


class ImportanceConfig(Section):
    """Which layer-importance methods to compute once per study, and on how much data.

    ``methods`` are registered names (see :data:`engine.importance.IMPORTANCE`). Scores are
    computed on ``num_batches`` calibration batches of ``batch_size`` training examples, split
    across ``actors`` Ray actors each holding the model once.
    """

    methods: tuple[str, ...] = ("fisher", "ablation")
    num_batches: int = Field(4, ge=1)
    batch_size: int = Field(32, ge=1)
    actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1.0, ge=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    seed: int = Field(0, ge=0)
