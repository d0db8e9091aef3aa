"""Finding a corpus's files and reading them into normalised rows with Ray Data.

Each file is read and parsed by the corpus's reader inside one Ray Data ``map_batches``
task, because a reader must see a whole file to give 1-based line numbers, recover the readable part of a truncated gzip and quarantine single bad lines
(``read_json`` fails a whole dataset on one bad line). Counting and the bad-row policy are
here, once for every corpus; :func:`read_corpus` is the entry point for work that needs the
rows themselves (e.g. recommendation on MovieLens).
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import ray
from ray.data.expressions import col

import engine
from engine.data.registry import CORPORA, ROW_SCHEMA, Corpus, DataError, FileRecord
from engine.registry import UnknownNameError

__all__ = [
    "NORMAL_SKIPS",
    "REPO_ROOT",
    "CorpusRows",
    "bad_rows_of",
    "check_bad_fraction",
    "collect",
    "file_records",
    "get_corpus",
    "parse_files",
    "read_bytes",
    "read_corpus",
    "read_item_titles",
    "resolve_files",
    "sha256_of",
]

REPO_ROOT = Path(engine.__file__).resolve().parent.parent
TASK_CPUS = 0.5  # read/parse tasks; fractional so actor pools never starve them
MAX_BAD_ROWS_LISTED = 1_000
# Skips that are a property of the data, not damage: they never count as "bad".
_LOCAL = pafs.LocalFileSystem()
NORMAL_SKIPS = frozenset({"empty_text", "duplicate", "repeated_user_item"})


def get_corpus(name: str) -> Corpus:
    """The registered corpus ``name``; a :class:`DataError` lists the known names if unknown."""
    try:
        return CORPORA.get(name)
    except UnknownNameError as err:
        raise DataError(f"data.corpus: {err}") from None


def _locate(raw: str) -> Path:
    path = Path(raw).expanduser()
    if path.exists() or path.is_absolute():
        return path
    return REPO_ROOT / raw


def _matches(path: Path, globs: Iterable[str]) -> bool:
    return any(path.match(g) for g in globs)


def resolve_files(corpus: Corpus, path: str | None) -> tuple[list[Path], list[Path]]:
    """Review files and item files for ``path`` (a file, a directory or a glob).

    ``None`` means the corpus's default location. A relative path is taken from the current
    directory if it exists there, else from the repository root. Every file must exist, be
    readable and be non-empty; otherwise a :class:`DataError` names it.
    """
    raw = path if path is not None else corpus.default_path
    if any(ch in raw for ch in "*?["):
        found = sorted(glob.glob(os.path.expanduser(raw)))
        if not found and not Path(raw).is_absolute():
            found = sorted(glob.glob(str(REPO_ROOT / raw)))
        files = [Path(f) for f in found if Path(f).is_file()]
        if not files:
            raise DataError(f"{raw}: no files match this pattern (corpus {corpus.name!r})")
        items = [f for f in files if _matches(f, corpus.item_globs)]
        reviews = [f for f in files if f not in items]
    else:
        where = _locate(raw)
        if not where.exists():
            places = sorted({str(Path.cwd()), str(REPO_ROOT)})
            raise DataError(f"{raw}: no such file or directory (looked in {' and '.join(places)})")
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


def _parse_batch(batch: pa.Table, corpus: Corpus, titles: Mapping[str, str], items: bool):
    rows: list[dict] = []
    for path in batch["path"].to_pylist():
        data = read_bytes(path)
        if items and corpus.read_items is not None:
            rows.extend(corpus.read_items(path, data))
        else:
            rows.extend(corpus(path, data, titles))
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def parse_files(
    corpus: Corpus,
    files: list[Path],
    titles: Mapping[str, str] | None = None,
    *,
    items: bool = False,
) -> ray.data.Dataset:
    """Lazy dataset of :data:`ROW_SCHEMA` rows, one per record of ``files`` (bad ones too).

    One Ray task per file reads and parses it (see :func:`read_bytes`).
    """
    paths = ray.data.from_items([{"path": str(f)} for f in files], override_num_blocks=len(files))
    return paths.map_batches(
        _parse_batch,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"corpus": corpus, "titles": dict(titles or {}), "items": items},
        num_cpus=TASK_CPUS,
    )


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


def file_records(files: list[Path], counts: Mapping[str, Counter[str]]) -> list[FileRecord]:
    """One :class:`FileRecord` per file, in ``files`` order ("" in ``counts`` = kept)."""
    out = []
    for f in files:
        c = counts.get(str(f), Counter())
        skips = {r: n for r, n in sorted(c.items()) if r}
        kept = c.get("", 0)
        out.append(
            FileRecord(
                path=str(f),
                sha256=sha256_of(f),
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


@dataclass
class CorpusRows:
    """A corpus read and checked: valid rows (materialised in Ray) and the bookkeeping."""

    rows: ray.data.Dataset
    files: list[FileRecord]
    bad_rows: list[dict]
    item_titles: dict[str, str]


def read_corpus(
    name: str, path: str | None = None, *, max_bad_fraction: float = 0.01
) -> CorpusRows:
    """Read any corpus (text or not) into valid :data:`ROW_SCHEMA` rows, without dedup.

    For recommendation work (e.g. MovieLens). Raises :class:`DataError` like
    :func:`engine.data.prepare_data` does.
    """
    if not ray.is_initialized():
        raise RuntimeError("read_corpus needs Ray: call ray.init() first")
    corpus = get_corpus(name)
    reviews, items = resolve_files(corpus, path)
    titles, item_records, item_bad = read_item_titles(corpus, items, max_bad_fraction)
    ds = parse_files(corpus, reviews, titles).materialize()
    keys = collect(ds, ["source_file", "reason"])
    counts = _count(zip(keys["source_file"].to_pylist(), keys["reason"].to_pylist(), strict=True))
    check_bad_fraction(counts, max_bad_fraction)
    bad = bad_rows_of(collect(ds.filter(expr=col("reason") != ""))) if _any_bad(counts) else []
    valid = ds.filter(expr=col("reason") == "")
    return CorpusRows(valid, file_records(reviews, counts) + item_records, bad + item_bad, titles)


def _any_bad(counts: Mapping[str, Counter[str]]) -> bool:
    return any(r and r not in NORMAL_SKIPS for c in counts.values() for r in c)
