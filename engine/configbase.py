"""Base class for every config section (frozen, typed, unknown keys rejected), and the
sections several owners share as mixins: the optimiser knobs and the distillation-loss knobs.

The mixins keep YAML keys and results columns flat (``pipeline.distill.lr``, not
``pipeline.distill.optim.lr``); an owner redeclares a field to change its default.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["KDConfig", "OptimConfig", "Section"]


class Section(BaseModel):
    # inf and nan are never a setting (resources.cpus=1e400 would queue every trial forever)
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )


class OptimConfig(Section):
    """AdamW fine-tuning knobs shared by the teacher, ``distill`` and ``prune``."""

    lr: float = Field(1e-4, gt=0, lt=1)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    freeze_embeddings: bool = True


class KDConfig(Section):
    """The distillation loss α_distill · T² · KL(teacher_T ‖ student_T) + α_task · task loss.

    ``kd: false`` is the labels-only control (α_distill = 0, α_task = 1)."""

    kd: bool = True
    temperature: float = Field(2.0, gt=0)
    alpha_distill: float = Field(0.5, ge=0)
    alpha_task: float = Field(0.5, ge=0)

    @model_validator(mode="after")
    def _alphas(self) -> KDConfig:
        if self.kd and self.alpha_distill + self.alpha_task <= 0:
            raise ValueError("alpha_distill + alpha_task must be > 0")
        return self
