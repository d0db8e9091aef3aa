"""The ``data:`` section of a study file."""

from __future__ import annotations

from pydantic import Field, model_validator

from engine.configbase import Section

__all__ = ["DataConfig"]


class DataConfig(Section):
    """Which corpus, how much of it, and how it is split and tokenised.

    ``path`` None means the corpus's embedded copy under ``datasets/``. Sizes cap each split
    after the deterministic hash split (None = everything that falls in the split).
    """

    corpus: str = "womens-ecommerce"
    path: str | None = None
    max_length: int = Field(64, ge=8, le=4096)
    train_fraction: float = Field(0.8, gt=0, lt=1)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    train_size: int | None = Field(None, ge=1)
    valid_size: int | None = Field(None, ge=1)
    test_size: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0)
    max_bad_fraction: float = Field(0.01, ge=0, le=1)

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.train_fraction + self.valid_fraction >= 1:
            raise ValueError(
                "train_fraction + valid_fraction must be < 1 so the test split is not empty "
                f"(got {self.train_fraction} + {self.valid_fraction})"
            )
        return self
