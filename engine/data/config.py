"""The ``data:`` section of a study file."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from engine.configbase import Section

__all__ = [
    "NORMALISED_COLUMNS",
    "DataConfig",
    "EvalDataConfig",
    "RecsysConfig",
    "TransferDataConfig",
]

# The normalised names a column mapping may target (``data.columns``).
NORMALISED_COLUMNS = ("user_id", "item_id", "rating", "timestamp", "text", "title", "item_title")


def _check_columns(columns: dict[str, str] | None) -> dict[str, str] | None:
    if columns is None:
        return None
    unknown = sorted(set(columns) - set(NORMALISED_COLUMNS))
    if unknown:
        raise ValueError(
            f"unknown normalised column(s) {unknown}; allowed: {', '.join(NORMALISED_COLUMNS)}"
        )
    empty = sorted(k for k, v in columns.items() if not str(v).strip())
    if empty:
        raise ValueError(f"empty source column name for {empty}")
    return columns


class _Source(Section):
    """Where rows come from and how much of them to read (shared by train and eval data)."""

    corpus: str = "womens-ecommerce"
    path: str | None = None
    # For the ``table`` and ``hf`` corpora: normalised name → the source's column name.
    columns: dict[str, str] | None = None
    timestamp_unit: Literal["s", "ms"] = "s"
    # For the ``hf`` corpus: the dataset's configuration name and split.
    hf_name: str | None = None
    hf_split: str = "train"
    limit: int | None = Field(None, ge=1)
    sample_fraction: float = Field(1.0, gt=0, le=1)

    @field_validator("columns")
    @classmethod
    def _columns(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return _check_columns(value)


class EvalDataConfig(_Source):
    """``data.eval``: a second corpus whose rows form the test split (cross-domain study).

    Its rows are read, validated and de-duplicated like the training corpus's; all of them
    are test rows (capped by ``data.test_size``), except (user, item) pairs that also occur
    in the training corpus's train or valid split, which are dropped and counted.
    """

    corpus: str


class RecsysConfig(Section):
    """Recommendation views of a corpus (:func:`engine.data.recsys.build_recsys`).

    ``k_core`` 0 or 1 means no filtering; k ≥ 2 repeats dropping users and items with fewer
    than k interactions until none remain. ``max_sequence_length`` keeps each user's most
    recent items (the next-item task sets it to ``data.max_length``).
    """

    k_core: int = Field(0, ge=0)
    max_sequence_length: int = Field(50, ge=1)
    min_interactions: int = Field(3, ge=1)
    # ranking protocol of the next-item task's metric columns: ``full`` = every catalogue
    # item is a candidate, the user's earlier items excluded (the default); ``sampled`` = the
    # labelled ``sampled-N`` variant: the target among ``negatives`` items drawn (seeded) from
    # those the user never interacted with. With ``full`` and negatives > 0 the sampled
    # figures are reported beside the full ones (``sampled_*`` columns), for comparison.
    ranking: Literal["full", "sampled"] = "full"
    negatives: int = Field(100, ge=0)
    # the next-item ``text`` family: how many of a user's most recent item titles make the
    # user's text (most recent first), and each title's token budget in the item vectors
    text_items: int = Field(10, ge=1)
    title_tokens: int = Field(32, ge=4)
    # the ``sequence`` family's item embeddings: ``random`` (the HF init) or ``titles``: start
    # from the embedded MiniLM's encodings of the item titles, reduced to the model's width by
    # PCA (the language-model-enhanced variant); the teacher then trains from there
    item_init: Literal["random", "titles"] = "random"

    @model_validator(mode="after")
    def _protocol(self) -> RecsysConfig:
        if self.ranking == "sampled" and self.negatives < 1:
            raise ValueError("ranking: sampled needs negatives >= 1")
        return self

    # hash partitions of the per-user shuffle (None: 2 per cluster CPU); each partition's
    # users must fit in one worker's memory, so raise it for corpora of many GB
    num_partitions: int | None = Field(None, ge=1)


class TransferDataConfig(_Source):
    """``data.transfer``: another domain whose users are scored beside the study's own valid
    and test users, as ``transfer_*`` columns (the next-item task's ``text`` family: items are
    titles, so a model trained on one catalogue ranks another). Its users' leave-one-out test
    items are the targets, capped by ``data.test_size``; ``data.recsys`` applies to it too."""

    corpus: str


class DataConfig(_Source):
    """Which corpus, how much of it, and how it is split and tokenised.

    ``path`` None means the corpus's embedded copy under ``datasets/``. Sizes cap each split
    after the deterministic hash split (None = everything that falls in the split).
    ``limit`` reads at most that many records, in file order (files sorted by path, then
    line), before anything else; ``sample_fraction`` then keeps a deterministic share of
    the (user, item) pairs by a hash of the pair and the seed. ``eval`` makes the test split
    come from another corpus.
    """

    max_length: int = Field(64, ge=8, le=4096)
    train_fraction: float = Field(0.8, gt=0, lt=1)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    train_size: int | None = Field(None, ge=1)
    valid_size: int | None = Field(None, ge=1)
    test_size: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0)
    max_bad_fraction: float = Field(0.01, ge=0, le=1)
    eval: EvalDataConfig | None = None
    transfer: TransferDataConfig | None = None
    # recommendation views (the next_item task): k-core, evaluation protocol
    recsys: RecsysConfig = RecsysConfig()

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.train_fraction + self.valid_fraction >= 1:
            raise ValueError(
                "train_fraction + valid_fraction must be < 1 so the test split is not empty "
                f"(got {self.train_fraction} + {self.valid_fraction})"
            )
        return self


# ----------------------------------------------------------------------------- checks
