"""The ``data:`` checks that can run before Ray starts (:func:`problems`).

They read the registered corpora and the files' headers, so they live here rather than in
:mod:`engine.data.config`: the config schema imports nothing of the readers, and
:mod:`engine.data.read` can build a config without an import cycle.
"""

from __future__ import annotations

from typing import Any

# the package import (which runs first) registers every corpus
from engine.data import CORPORA
from engine.data.config import DataConfig, EvalDataConfig
from engine.data.read import resolve_files
from engine.data.registry import DataError
from engine.data.table import REQUIRED, header_columns, source_columns

__all__ = ["problems"]


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


def _source_problems(section: DataConfig | EvalDataConfig, source: str, key: str) -> list[str]:
    where = f"{source}: {key}"
    if section.corpus not in CORPORA:
        return [f"{where}.corpus: {CORPORA.unknown_message(section.corpus)}"]
    corpus = CORPORA.get(section.corpus)
    checked = corpus.check_header is not None and corpus.opener is None
    if checked and (out := _corpus_header_problems(corpus, section, where)):
        return out
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


def _corpus_header_problems(
    corpus: Any, section: DataConfig | EvalDataConfig, where: str
) -> list[str]:
    """The corpus's own header check (``check_header``) on each review file."""
    try:
        reviews, _ = resolve_files(corpus, section.path)
    except DataError:
        return []  # the reader says what is wrong with the path, in its own words
    return [
        f"{where}.path: {f.name}: {problem}"
        for f in reviews
        if (problem := corpus.check_header(f)) is not None
    ]


def _header_problems(
    corpus: Any, section: DataConfig | EvalDataConfig, where: str, key: str
) -> list[str]:
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
