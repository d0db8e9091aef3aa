"""Finding a corpus's files and reading them into normalised rows with Ray Data.

Each file is read and parsed by the corpus's reader inside one Ray Data ``map_batches``
task, because a reader must see a whole file to give 1-based line numbers, recover the readable part of a truncated gzip and quarantine single bad lines
(``read_json`` fails a whole dataset on one bad line). Counting and the bad-row policy are
here, once for every corpus; :func:`read_corpus` is the entry point for work that needs the
rows themselves (e.g. recommendation on MovieLens).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray
from ray.data.expressions import col

from engine.data.config import EvalDataConfig
from engine.data.decide import listed_bad_rows
from engine.data.paths import glob_files, is_pattern, locate, not_found
from engine.data.registry import (
    CORPORA,
    MAX_BAD_ROWS_LISTED,
    NORMAL_SKIPS,
    ROW_SCHEMA,
    TASK_CPUS,
    Corpus,
    DataError,
    FileRecord,
)
from sweepcore.registry import UnknownNameError

__all__ = [
    "CorpusRows",
    "Source",
    "apply_limit",
    "bad_rows_of",
    "bind_corpus",
    "check_bad_fraction",
    "collect",
    "count_reasons",
    "file_records",
    "get_corpus",
    "open_source",
    "parse_files",
    "read_bytes",
    "read_corpus",
    "read_item_titles",
    "resolve_files",
    "sha256_of",
]

_LOCAL = pafs.LocalFileSystem()


def get_corpus(name: str) -> Corpus:
    """The registered corpus ``name``; a :class:`DataError` lists the known names if unknown."""
    try:
        return CORPORA.get(name)
    except UnknownNameError as err:
        raise DataError(f"data.corpus: {err}") from None


def _matches(path: Path, globs: Iterable[str]) -> bool:
    return any(path.match(g) for g in globs)


def resolve_files(corpus: Corpus, path: str | None) -> tuple[list[Path], list[Path]]:
    """Review files and item files for ``path`` (a file, a directory or a glob).

    ``None`` means the corpus's default location. A relative path is taken from the current
    directory if it exists there, else from the repository root. Every file must exist, be
    readable and be non-empty; otherwise a :class:`DataError` names it.
    """
    raw = path if path is not None else corpus.default_path
    if is_pattern(raw):
        files = glob_files(raw)
        if not files:
            raise DataError(f"{raw}: no files match this pattern (corpus {corpus.name!r})")
        items = [f for f in files if _matches(f, corpus.item_globs)]
        reviews = [f for f in files if f not in items]
    else:
        where = locate(raw)
        if where is None:
            raise DataError(not_found(raw))
        if where.is_dir():
            entries = sorted(p for p in where.iterdir() if p.is_file())
            items = [p for p in entries if _matches(p, corpus.item_globs)]
            reviews = [p for p in entries if _matches(p, corpus.review_globs) and p not in items]
        else:
            reviews = [where]
            items = sorted(
                p
                for p in where.parent.iterdir()
                if p.is_file() and p != where and _matches(p, corpus.item_globs)
            )
    if not reviews:
        raise DataError(
            f"{raw}: no review files for corpus {corpus.name!r} "
            f"(expected names like {', '.join(corpus.review_globs)})"
        )
    for f in [*reviews, *items]:
        if not os.access(f, os.R_OK):
            raise DataError(f"{f}: file is not readable")
        if f.stat().st_size == 0:
            raise DataError(f"{f}: file is empty")
    return [p.resolve() for p in reviews], [p.resolve() for p in items]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_bytes(path: str) -> bytes:
    """A file's raw bytes, *not* decompressed: readers must see a truncated gzip as such.

    (``ray.data.read_binary_files`` gunzips ``.gz`` files by their name and fails the
    whole file on truncation, so files are opened here with ``compression=None``.)
    """
    filesystem, where = pafs.FileSystem.from_uri(path) if "://" in path else (_LOCAL, path)
    with filesystem.open_input_stream(where, compression=None) as fh:
        return fh.read()


def _parse_batch(
    batch: pa.Table,
    corpus: Corpus,
    titles: Mapping[str, str],
    items: bool,
    limit: int | None = None,
):
    tables = []
    for path in batch["path"].to_pylist():
        data = read_bytes(path)
        if items and corpus.read_items is not None:
            rows = corpus.read_items(path, data)
        else:
            rows = corpus(path, data, titles)
        # a limit stops reading the file early: at most ``limit`` records from any file
        listed = list(itertools.islice(rows, limit))
        t = pa.Table.from_pylist(listed, schema=ROW_SCHEMA)
        tables.append(t.append_column("record", pa.array(range(len(listed)), pa.int64())))
    return pa.concat_tables(tables)


def parse_files(
    corpus: Corpus,
    files: list[Path],
    titles: Mapping[str, str] | None = None,
    *,
    items: bool = False,
    limit: int | None = None,
) -> ray.data.Dataset:
    """Lazy dataset of :data:`ROW_SCHEMA` rows, one per record of ``files`` (bad ones too),
    plus ``record``, the record's 0-based position in its file.

    One Ray task per file reads and parses it (see :func:`read_bytes`); ``limit`` stops
    each file after that many records (:func:`apply_limit` makes it global).
    """
    paths = ray.data.from_items([{"path": str(f)} for f in files], override_num_blocks=len(files))
    kwargs = {"corpus": corpus, "titles": dict(titles or {}), "items": items, "limit": limit}
    return paths.map_batches(
        _parse_batch, batch_size=1, batch_format="pyarrow", fn_kwargs=kwargs, num_cpus=TASK_CPUS
    )


def _count_block(t: pa.Table) -> pa.Table:
    counted = t.group_by(["source_file", "reason"]).aggregate([([], "count_all")])
    return counted.rename_columns(["source_file", "reason", "n"])


def count_reasons(ds: ray.data.Dataset) -> dict[str, Counter[str]]:
    """``file → Counter(reason)`` ("" = valid), aggregated per block in Ray, so the driver
    receives one small row per (block, file, reason), never one per record."""
    parts = collect(
        ds.select_columns(["source_file", "reason"]).map_batches(
            _count_block, batch_format="pyarrow", batch_size=None, num_cpus=TASK_CPUS
        )
    )
    counts: dict[str, Counter[str]] = {}
    if parts.num_rows == 0 or "n" not in parts.column_names:
        return counts
    for path, reason, n in zip(
        parts["source_file"].to_pylist(),
        parts["reason"].to_pylist(),
        parts["n"].to_pylist(),
        strict=True,
    ):
        counts.setdefault(path, Counter())[reason] += n
    return counts


def _below(t: pa.Table, allowance: Mapping[str, int]) -> pa.Table:
    keep = [
        r < allowance.get(f, 0)
        for f, r in zip(t["source_file"].to_pylist(), t["record"].to_pylist(), strict=True)
    ]
    return t.filter(pa.array(keep, pa.bool_()))


def apply_limit(
    ds: ray.data.Dataset, files: list[str], limit: int | None
) -> tuple[ray.data.Dataset, int]:
    """Keep the first ``limit`` records of the corpus in file order (``files`` order, then
    record order); ``ds`` must come from :func:`parse_files` with the same ``limit``.
    Returns the (materialised) rows and how many records were left unread or dropped."""
    if limit is None:
        return ds, 0
    ds = ds.materialize()
    per_file = {f: sum(c.values()) for f, c in count_reasons(ds).items()}
    allowance, left = {}, limit
    for f in files:
        allowance[f] = min(left, per_file.get(f, 0))
        left -= allowance[f]
    dropped = sum(per_file.values()) - sum(allowance.values())
    if dropped == 0:
        return ds, 0
    kept = ds.map_batches(
        _below, batch_format="pyarrow", fn_kwargs={"allowance": allowance}, num_cpus=TASK_CPUS
    )
    return kept.materialize(), dropped


def collect(ds: ray.data.Dataset, columns: list[str] | None = None) -> pa.Table:
    """Bring (some columns of) a small or key-only dataset to the driver as one Arrow table."""
    if columns is not None:
        ds = ds.select_columns(columns)
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_columns]
    if not tables:
        schema = (
            ROW_SCHEMA if columns is None else pa.schema([ROW_SCHEMA.field(c) for c in columns])
        )
        return schema.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def _count(reasons: Iterable[tuple[str, str]]) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {}
    for path, reason in reasons:
        counts.setdefault(path, Counter())[reason] += 1
    return counts


def check_bad_fraction(counts: Mapping[str, Counter[str]], max_bad_fraction: float) -> None:
    """Raise a :class:`DataError` for the first file with no records, no valid record, or
    a share of invalid records above ``max_bad_fraction``. :data:`NORMAL_SKIPS` (empty
    text, duplicates) are not invalid: the embedded women's reviews have 3.6 % empty texts.
    """
    for path, c in counts.items():
        read = sum(c.values())
        bad = {r: n for r, n in sorted(c.items()) if r and r not in NORMAL_SKIPS}
        n_bad = sum(bad.values())
        detail = ", ".join(f"{r}={n}" for r, n in bad.items())
        if read == 0:
            raise DataError(f"{path}: no records in file")
        if n_bad == read:
            raise DataError(f"{path}: no valid rows ({read} read, all invalid: {detail})")
        if n_bad / read > max_bad_fraction:
            raise DataError(
                f"{path}: {n_bad} of {read} rows are invalid "
                f"({n_bad / read:.1%} > max_bad_fraction {max_bad_fraction:.1%}): {detail}"
            )


def file_records(
    files: list[Path],
    counts: Mapping[str, Counter[str]],
    checksums: Mapping[str, str] | None = None,
) -> list[FileRecord]:
    """One :class:`FileRecord` per file, in ``files`` order ("" in ``counts`` = kept).

    ``checksums`` gives the checksum of a source that is not a local file (a Hugging Face
    dataset's fingerprint)."""
    out = []
    for f in files:
        c = counts.get(str(f), Counter())
        skips = {r: n for r, n in sorted(c.items()) if r}
        kept = c.get("", 0)
        given = (checksums or {}).get(str(f))
        out.append(
            FileRecord(
                path=str(f),
                sha256=given if given is not None else sha256_of(f),
                rows_read=kept + sum(skips.values()),
                rows_kept=kept,
                rows_skipped=sum(skips.values()),
                skip_reasons=skips,
            )
        )
    return out


def bad_rows_of(table: pa.Table) -> list[dict]:
    """Quarantine entries ``{path, line, reason, raw}`` for the invalid rows of ``table``."""
    rows = [
        {"path": p, "line": ln, "reason": r, "raw": raw}
        for p, ln, r, raw in zip(
            table["source_file"].to_pylist(),
            table["source_line"].to_pylist(),
            table["reason"].to_pylist(),
            table["raw"].to_pylist(),
            strict=True,
        )
        if r and r not in NORMAL_SKIPS
    ]
    rows.sort(key=lambda b: (b["path"], b["line"] is None, b["line"] or 0))
    return rows[:MAX_BAD_ROWS_LISTED]


def read_item_titles(
    corpus: Corpus, item_files: list[Path], max_bad_fraction: float
) -> tuple[dict[str, str], list[FileRecord], list[dict]]:
    """``item_id → title`` from the corpus's item files (first non-empty title wins)."""
    if not item_files:
        return {}, [], []
    table = collect(parse_files(corpus, item_files, items=True))
    reasons = list(zip(table["source_file"].to_pylist(), table["reason"].to_pylist(), strict=True))
    counts = _count(reasons)
    check_bad_fraction(counts, max_bad_fraction)
    titles: dict[str, str] = {}
    for item, title, reason in zip(
        table["item_id"].to_pylist(),
        table["item_title"].to_pylist(),
        table["reason"].to_pylist(),
        strict=True,
    ):
        if not reason and title and item not in titles:
            titles[item] = title
    return titles, file_records(item_files, counts), bad_rows_of(table)


def bind_corpus(corpus: Corpus, source: Any) -> Corpus:
    """``corpus`` with the study's reader options bound (``data.columns``, ``timestamp_unit``).

    Raises a :class:`DataError` if the study sets options the corpus does not take.
    """
    columns = getattr(source, "columns", None)
    unit = getattr(source, "timestamp_unit", "s")
    if "columns" not in corpus.options:
        if columns is not None or unit != "s":
            takes = sorted(n for n in CORPORA.names() if "columns" in CORPORA.get(n).options)
            raise DataError(
                f"data.columns / data.timestamp_unit apply only to corpora {takes}, "
                f"not {corpus.name!r} (its reader knows its own fields)"
            )
        return corpus
    scale = 1000 if unit == "ms" else 1
    bound = partial(corpus.read_reviews, columns=columns, timestamp_scale=scale)
    return replace(corpus, read_reviews=bound)


@dataclass
class Source:
    """A corpus opened: all its records as a lazy dataset, and where they came from."""

    corpus: Corpus
    rows: ray.data.Dataset  # ROW_SCHEMA + ``record``, valid and invalid
    files: list[str]  # review files (or the one dataset name), in reading order
    checksums: dict[str, str]
    item_titles: dict[str, str]
    item_files: list[FileRecord]
    item_bad_rows: list[dict]
    not_read: int  # records past ``limit``


def open_source(source: Any, max_bad_fraction: float) -> Source:
    """Open the corpus a ``data:`` section (or ``data.eval``) names, with its ``limit``.

    File corpora resolve their files and read item metadata first; a corpus with an
    ``opener`` (``hf``) opens itself.
    """
    corpus = bind_corpus(get_corpus(source.corpus), source)
    limit = getattr(source, "limit", None)
    if corpus.opener is not None:
        rows, name, checksum = corpus.opener(source)
        rows, dropped = apply_limit(rows, [name], limit)
        return Source(corpus, rows, [name], {name: checksum}, {}, [], [], dropped)
    reviews, items = resolve_files(corpus, source.path)
    titles, item_records, item_bad = read_item_titles(corpus, items, max_bad_fraction)
    names = [str(f) for f in reviews]
    rows, dropped = apply_limit(parse_files(corpus, reviews, titles, limit=limit), names, limit)
    return Source(corpus, rows, names, {}, titles, item_records, item_bad, dropped)


@dataclass
class CorpusRows:
    """A corpus read and checked: valid rows (materialised in Ray) and the bookkeeping."""

    rows: ray.data.Dataset
    files: list[FileRecord]
    bad_rows: list[dict]
    item_titles: dict[str, str]


def read_corpus(
    name: str,
    path: str | None = None,
    *,
    max_bad_fraction: float = 0.01,
    columns: Mapping[str, str] | None = None,
    timestamp_unit: str = "s",
    limit: int | None = None,
    hf_name: str | None = None,
    hf_split: str = "train",
) -> CorpusRows:
    """Read any corpus (text or not) into valid :data:`ROW_SCHEMA` rows, without dedup.

    For recommendation work (e.g. MovieLens; see :func:`engine.data.recsys.build_recsys`).
    Raises :class:`DataError` like :func:`engine.data.prepare_data` does. Only per-block
    counts and at most :data:`MAX_BAD_ROWS_LISTED` quarantined rows reach the driver.
    """
    if not ray.is_initialized():
        raise RuntimeError("read_corpus needs Ray: call ray.init() first")
    spec = EvalDataConfig(
        corpus=name,
        path=path,
        columns=dict(columns) if columns is not None else None,
        timestamp_unit=timestamp_unit,  # type: ignore[arg-type]
        limit=limit,
        hf_name=hf_name,
        hf_split=hf_split,
    )
    src = open_source(spec, max_bad_fraction)
    ds = src.rows.materialize()
    counts = count_reasons(ds)
    check_bad_fraction({f: counts.get(f, Counter()) for f in src.files}, max_bad_fraction)
    bad = listed_bad_rows(ds) if _any_bad(counts) else []
    valid = ds.filter(expr=col("reason") == "").drop_columns(["record"])
    records = file_records([Path(f) for f in src.files], counts, src.checksums)
    return CorpusRows(valid, records + src.item_files, bad + src.item_bad_rows, src.item_titles)


def _any_bad(counts: Mapping[str, Counter[str]]) -> bool:
    return any(r and r not in NORMAL_SKIPS for c in counts.values() for r in c)
