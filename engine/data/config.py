"""The ``data:`` section of a study file."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from engine.configbase import Section

__all__ = ["NORMALISED_COLUMNS", "DataConfig", "EvalDataConfig", "RecsysConfig", "problems"]

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

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.train_fraction + self.valid_fraction >= 1:
            raise ValueError(
                "train_fraction + valid_fraction must be < 1 so the test split is not empty "
                f"(got {self.train_fraction} + {self.valid_fraction})"
            )
        return self


class RecsysConfig(Section):
    """Recommendation views of a corpus (:func:`engine.data.recsys.build_recsys`).

    ``k_core`` 0 or 1 means no filtering; k ≥ 2 repeats dropping users and items with fewer
    than k interactions until none remain. ``max_sequence_length`` keeps each user's most
    recent items.
    """

    k_core: int = Field(0, ge=0)
    max_sequence_length: int = Field(50, ge=1)
    min_interactions: int = Field(3, ge=1)
    # hash partitions of the per-user shuffle (None: 2 per cluster CPU); each partition's
    # users must fit in one worker's memory, so raise it for corpora of many GB
    num_partitions: int | None = Field(None, ge=1)


# ----------------------------------------------------------------------------- checks


def problems(cfg: DataConfig, source: str) -> list[str]:
    """What is wrong with the ``data:`` section (and ``data.eval``) that can be seen before
    Ray starts: an unknown corpus name, reader options (``columns``, ``timestamp_unit``) for
    a corpus that takes none, and a column mapping whose source columns the files' headers
    lack (Parquet schema, CSV/TSV first line; where the files can be found and read cheaply —
    a missing file is reported by the reader, with its own message). One line per problem,
    each naming ``source``, the dotted key, the bad value and what is allowed."""
    out = _source_problems(cfg, source, "data")
    if cfg.eval is not None:
        out += _source_problems(cfg.eval, source, "data.eval")
    return out


def _source_problems(section: _Source, source: str, key: str) -> list[str]:
    from engine.data import CORPORA  # the package import registers every corpus

    where = f"{source}: {key}"
    if section.corpus not in CORPORA:
        return [f"{where}.corpus: {CORPORA.unknown_message(section.corpus)}"]
    corpus = CORPORA.get(section.corpus)
    if "columns" not in corpus.options:
        takes = ", ".join(n for n in CORPORA.names() if "columns" in CORPORA.get(n).options)
        out = []
        if section.columns is not None:
            out.append(
                f"{where}.columns: corpus {corpus.name!r} reads its own fields and takes no "
                f"column mapping (got {section.columns}; only corpora {takes} take one)"
            )
        if section.timestamp_unit != "s":
            out.append(
                f"{where}.timestamp_unit: corpus {corpus.name!r} reads its own timestamps "
                f"(got {section.timestamp_unit!r}; only corpora {takes} take one)"
            )
        return out
    if corpus.opener is not None:  # opens itself (a dataset, maybe on the hub): not read here
        return []
    return _header_problems(corpus, section, where, key)


def _header_problems(corpus: Any, section: _Source, where: str, key: str) -> list[str]:
    from engine.data.read import resolve_files
    from engine.data.registry import DataError
    from engine.data.table import REQUIRED, header_columns, source_columns

    try:
        reviews, _ = resolve_files(corpus, section.path)
    except DataError:
        return []  # the reader says what is wrong with the path, in its own words
    src = source_columns(section.columns)
    explicit = dict(section.columns or {})
    wanted = {n: src[n] for n in (*REQUIRED, *explicit)}
    for f in reviews:
        header = header_columns(f)
        if header is None or len(header) == 1:  # unreadable or one field: the reader says why
            continue
        missing = {n: col for n, col in wanted.items() if col not in header}
        if missing:
            return [
                (
                    f"{where}.columns.{n}: source column {col!r} is not in {f.name} "
                    f"(its columns: {', '.join(header)})"
                    if n in explicit
                    else f"{where}.columns: {f.name} has no {col!r} column for the required "
                    f"field {n!r} (its columns: {', '.join(header)}); map one with {key}.columns.{n}"
                )
                for n, col in missing.items()
            ]
    return []
