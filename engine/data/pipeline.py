"""Rating classification data: read → validate → dedup → split → cap → tokenise.

Everything that touches rows runs as Ray Data operations: parsing, hashing and tokenising
per block, and the corpus-wide decisions too (:mod:`engine.data.decide`): duplicates are
marked in hash partitions by ``row_key``, counts are summed from per-block tables, and
each split's size cap is a (hash, row_key) threshold found from per-block top-k
candidates. The driver holds O(files × reasons) counts, O(cap) candidate keys, at most
:data:`~engine.data.registry.MAX_BAD_ROWS_LISTED` bad rows and the tokenised, capped splits
it returns — nothing that grows with the corpus when the split sizes are capped.

Every decision depends only on row content and ``cfg.seed``, never on file order, block
count or worker count, so the splits are reproducible anywhere.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from engine.data.config import DataConfig, EvalDataConfig
from engine.data.decide import (
    Policy,
    cap_policy,
    choose,
    dedup,
    file_counts,
    listed_bad_rows,
    partitions_for,
    reason_counts,
    split_counts,
    tally,
)
from engine.data.read import (
    Source,
    check_bad_fraction,
    file_records,
    get_corpus,
    open_source,
)
from engine.data.registry import NORMAL_SKIPS, RAW_CHARS, TASK_CPUS, DataError, FileRecord

__all__ = ["LABEL_NAMES", "SPLITS", "PreparedData", "prepare_data", "split_of"]

SPLITS = ("train", "valid", "test")
LABEL_NAMES = ["1 star", "2 stars", "3 stars", "4 stars", "5 stars"]
BUCKETS = 10_000
TOKENIZER_CPUS = 0.5  # per tokenizer actor; with TASK_CPUS this leaves room for reads
# user/item ids ride along as split arrays (``user_id``/``item_id``; "" where the corpus has
# none) for tasks that read them, e.g. rating regression's user + item bias baseline
TOKENISE_COLUMNS = ["title", "text", "label", "row_key", "hash", "split", "user_id", "item_id"]


@dataclass
class PreparedData:
    """Tokenised splits plus everything needed to audit how they were made."""

    train: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    num_labels: int
    label_names: list[str]
    files: list[FileRecord]
    bad_rows: list[dict]
    stats: dict
    #: an extra split scored beside valid and test as ``transfer_*`` columns (the text
    #: next-item family: another domain's users and catalogue, ``data.transfer``); None: none
    transfer: dict[str, np.ndarray] | None = None


def _norm(text: str) -> str:
    return " ".join(text.split())


def split_of(
    row_key: str, seed: int, train_fraction: float, valid_fraction: float
) -> tuple[str, int]:
    """``(split, hash)`` for a row: bucket = crc32(f"{seed}:{row_key}") mod 10 000."""
    h = zlib.crc32(f"{seed}:{row_key}".encode())
    bucket = h % BUCKETS
    if bucket < round(train_fraction * BUCKETS):
        return "train", h
    if bucket < round((train_fraction + valid_fraction) * BUCKETS):
        return "valid", h
    return "test", h


def sampled(row_key: str, seed: int, fraction: float) -> bool:
    """Whether ``sample_fraction`` keeps a row: crc32(f"sample:{seed}:{row_key}") / 2³² <
    fraction. All copies of a (user, item) pair share the decision, so dedup is unaffected."""
    return fraction >= 1.0 or zlib.crc32(f"sample:{seed}:{row_key}".encode()) < fraction * 2**32


def _annotate(
    t: pa.Table,
    file_index: dict[str, int],
    seed: int,
    train_fraction: float,
    valid_fraction: float,
    sample_fraction: float = 1.0,
    all_test: bool = False,
) -> pa.Table:
    """Add keys, split and label to parsed rows; mark empty texts, non-integer ratings and
    rows left out by ``sample_fraction``.

    Exact duplicate = same user, item, rating, timestamp, title and text (whitespace
    collapsed). ``row_key`` hashes the (user, item) pair where the corpus has users, else
    the content, so it is unique once duplicates are removed and stable across copies.
    ``uid`` = file index << 32 | record index. ``all_test`` puts every row in the test split
    (the evaluation corpus of a cross-domain study).
    """
    cols = {name: t[name].to_pylist() for name in t.column_names}
    raws = cols["raw"]
    reasons, uids, row_keys, content_keys, hashes, splits, labels = [], [], [], [], [], [], []
    for i, reason in enumerate(cols["reason"]):
        user, item, rating = cols["user_id"][i], cols["item_id"][i], cols["rating"][i]
        text, title = _norm(cols["text"][i]), _norm(cols["title"][i])
        if not reason and not text:
            reason = "empty_text"
        elif not reason and rating != int(rating):
            reason = "rating_not_integer"
            raws[i] = json.dumps(
                {"user_id": user, "item_id": item, "rating": rating, "text": text}
            )[:RAW_CHARS]
        content = "\x1f".join([user, item, f"{rating:g}", str(cols["timestamp"][i]), title, text])
        content_key = hashlib.sha1(content.encode()).hexdigest()
        group = f"u\x1f{user}\x1f{item}" if user else f"c\x1f{content_key}"
        row_key = hashlib.sha1(group.encode()).hexdigest()
        split, h = split_of(row_key, seed, train_fraction, valid_fraction)
        if all_test:
            split = "test"
        if not reason and not sampled(row_key, seed, sample_fraction):
            reason = "sampled_out"
        reasons.append(reason)
        uids.append((file_index[cols["source_file"][i]] << 32) | cols["record"][i])
        row_keys.append(row_key)
        content_keys.append(content_key)
        hashes.append(h)
        splits.append(split)
        labels.append(int(rating) - 1 if not reason else -1)
    t = t.set_column(t.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))
    t = t.set_column(t.schema.get_field_index("raw"), "raw", pa.array(raws, pa.string()))
    for name, values, typ in [
        ("uid", uids, pa.int64()),
        ("row_key", row_keys, pa.string()),
        ("content_key", content_keys, pa.string()),
        ("hash", hashes, pa.int64()),
        ("split", splits, pa.string()),
        ("label", labels, pa.int64()),
    ]:
        t = t.append_column(name, pa.array(values, typ))
    return t


def _summary(reasons: Counter[str]) -> str:
    return ", ".join(f"{r or 'kept'}={n}" for r, n in sorted(reasons.items()) if n)


class Tokenise:
    """Ray Data callable class: loads the tokenizer once per actor, tokenises a batch."""

    def __init__(self, tokenizer_path: str, max_length: int) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        if self.tokenizer.pad_token is None:  # decoders (GPT-2, Llama): pad with end-of-text,
            self.tokenizer.pad_token = self.tokenizer.eos_token  # as build_classifier's head
        self.tokenizer.padding_side = "right"  # pooling and the head read the last real token
        self.max_length = max_length

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [
            f"{title}. {text}" if title else str(text)
            for title, text in zip(batch["title"], batch["text"], strict=True)
        ]
        enc = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
        )
        return {
            "input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64),
            "labels": batch["label"].astype(np.int64),
            "row_key": batch["row_key"],
            "hash": batch["hash"],
            "split": batch["split"],
            "user_id": batch["user_id"],
            "item_id": batch["item_id"],
        }


def _free_cpus(wait_s: float = 30.0) -> float:
    """Free CPUs, waiting up to ``wait_s`` for a finished actor pool to release its CPUs
    (Ray Data tears pools down asynchronously, so back-to-back calls can see them held)."""
    total = float(ray.cluster_resources().get("CPU", 0.0))
    deadline = time.monotonic() + wait_s
    while True:
        cpus = float(ray.available_resources().get("CPU", 0.0))
        if cpus >= min(total, 2 * TOKENIZER_CPUS + TASK_CPUS) or time.monotonic() > deadline:
            return cpus
        time.sleep(0.25)


def _pool_size() -> int:
    cpus = _free_cpus()
    if cpus < TASK_CPUS + TOKENIZER_CPUS:
        raise RuntimeError(
            f"prepare_data needs {TASK_CPUS + TOKENIZER_CPUS} free CPUs in the Ray cluster, "
            f"{cpus} are free: prepare data before starting trials that hold every CPU"
        )
    # leave one CPU for the read/select tasks; fractional actors so they cannot starve them
    return max(1, min(8, int((cpus - 1.0) / TOKENIZER_CPUS)))


def _tokenise(ds: ray.data.Dataset, policy: Policy, cfg: DataConfig, tokenizer_path: str):
    size = _pool_size()
    out = ds.map_batches(
        choose,
        batch_format="pyarrow",
        fn_kwargs={"policy": policy, "columns": TOKENISE_COLUMNS},
        num_cpus=TASK_CPUS,
    ).map_batches(
        Tokenise,
        fn_constructor_kwargs={"tokenizer_path": tokenizer_path, "max_length": cfg.max_length},
        compute=ray.data.ActorPoolStrategy(size=size),
        num_cpus=TOKENIZER_CPUS,
        batch_size=512,
        batch_format="numpy",
    )
    batches = list(out.iter_batches(batch_format="numpy", batch_size=None))
    if not batches:
        return {}
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _splits(arrays: dict[str, np.ndarray], max_length: int) -> dict[str, dict[str, np.ndarray]]:
    """Split the tokenised rows, each split in (hash, row_key) order for determinism."""
    out = {}
    for split in SPLITS:
        if not arrays:
            idx = np.zeros(0, dtype=np.int64)
        else:
            mine = np.flatnonzero(arrays["split"] == split)
            order = np.lexsort((arrays["row_key"][mine], arrays["hash"][mine]))
            idx = mine[order]
        out[split] = {
            "input_ids": arrays["input_ids"][idx]
            if arrays
            else np.zeros((0, max_length), np.int64),
            "attention_mask": arrays["attention_mask"][idx]
            if arrays
            else np.zeros((0, max_length), np.int64),
            "labels": arrays["labels"][idx] if arrays else np.zeros(0, np.int64),
            "row_key": arrays["row_key"][idx].astype(str) if arrays else np.zeros(0, str),
            "user_id": arrays["user_id"][idx].astype(str) if arrays else np.zeros(0, str),
            "item_id": arrays["item_id"][idx].astype(str) if arrays else np.zeros(0, str),
        }
    return out


@dataclass
class _Part:
    """One corpus read, annotated, checked and de-duplicated (all of it in Ray)."""

    src: Source
    ds: ray.data.Dataset  # every record, ``reason`` final, materialised in hash partitions
    counts: dict[tuple[str, str, str], int]  # (file, reason, split) → rows
    bad: list[dict]

    @property
    def reasons(self) -> Counter[str]:
        return reason_counts(self.counts)


def _read_part(
    spec: DataConfig | EvalDataConfig,
    cfg: DataConfig,
    num_blocks: int | None,
    all_test: bool,
    seen: ray.data.Dataset | None = None,
) -> _Part:
    corpus = get_corpus(spec.corpus)
    if not corpus.has_text:
        raise DataError(
            f"data{'.eval' if all_test else ''}.corpus {spec.corpus!r} has no review text, so "
            "it cannot feed the rating classification task (use engine.data.read.read_corpus "
            "and engine.data.recsys.build_recsys for recommendation work)"
        )
    src = open_source(spec, cfg.max_bad_fraction)
    file_index = {f: i for i, f in enumerate(src.files)}
    kwargs = {
        "file_index": file_index,
        "seed": cfg.seed,
        "train_fraction": cfg.train_fraction,
        "valid_fraction": cfg.valid_fraction,
        "sample_fraction": spec.sample_fraction,
        "all_test": all_test,
    }
    ds = src.rows.map_batches(
        _annotate, batch_format="pyarrow", fn_kwargs=kwargs, num_cpus=TASK_CPUS
    ).materialize()
    first = file_counts(tally(ds), src.files)
    check_bad_fraction(first, cfg.max_bad_fraction)
    invalid = any(r and r not in NORMAL_SKIPS for c in first.values() for r in c)
    bad = listed_bad_rows(ds) if invalid else []
    partitions = num_blocks or partitions_for(max(2, 2 * _pool_size()), ds, seen)
    ds = dedup(ds, partitions, seen)
    return _Part(src, ds, tally(ds), bad)


def prepare_data(
    cfg: DataConfig, tokenizer_path: str | Path, *, num_blocks: int | None = None
) -> PreparedData:
    """Read, validate, de-duplicate, split and tokenise ``cfg.corpus`` for rating
    classification (label = stars − 1).

    Rows without text are skipped and counted as ``empty_text``; like duplicates they are
    a property of real data (3.6 % of the women's reviews), so they do not count towards
    ``cfg.max_bad_fraction``: only malformed or invalid rows do. ``num_blocks`` sets the
    Ray parallelism and never changes the result. With ``cfg.eval`` (cross-domain) the
    test split is the other corpus's rows, less any (user, item) pair that is in this
    corpus's train or valid split; this corpus's own test rows are then unused (counted).

    Raises:
        DataError: a file is missing, unreadable or empty, a file's invalid share exceeds
            ``cfg.max_bad_fraction``, the corpus has no text, or nothing valid remains.
        RuntimeError: Ray is not initialised, or has no free CPU.
    """
    if not ray.is_initialized():
        raise RuntimeError("prepare_data needs Ray: call ray.init() first")
    main = _read_part(cfg, cfg, num_blocks, all_test=False)
    reasons = main.reasons
    where = cfg.path or main.src.corpus.default_path
    if not reasons[""]:
        raise DataError(f"{where}: no usable rows remain ({_summary(reasons)})")
    before_caps = split_counts(main.counts, SPLITS)
    caps = {"train": cfg.train_size, "valid": cfg.valid_size, "test": cfg.test_size}
    cross: dict = {}
    ev: _Part | None = None
    if cfg.eval is not None:
        ev = _read_part(cfg.eval, cfg, num_blocks, all_test=True, seen=main.ds)
        ev_reasons = ev.reasons
        if not ev_reasons[""]:
            raise DataError(
                f"{cfg.eval.path or ev.src.corpus.default_path}: no usable evaluation rows "
                f"remain ({_summary(ev_reasons)})"
            )
        policy = {**cap_policy(main.ds, {**caps, "test": None}, SPLITS), "test": "none"}
        ev_policy = {
            **cap_policy(ev.ds, {"test": cfg.test_size}, ("test",)),
            "train": "none",
            "valid": "none",
        }
        cross = {
            "train_corpus": cfg.corpus,
            "test_corpus": cfg.eval.corpus,
            "test_path": cfg.eval.path,
            "in_domain_test_rows_unused": before_caps["test"],
            "eval_pairs_dropped_as_in_train_corpus": ev_reasons["in_train_corpus"],
            "eval_read": sum(ev_reasons.values()),
            "eval_kept": ev_reasons[""],
            "eval_reasons": _reasons(ev_reasons),
        }
    else:
        policy = cap_policy(main.ds, caps, SPLITS)

    arrays = _tokenise(main.ds, policy, cfg, str(tokenizer_path))
    if ev is not None:
        ev_arrays = _tokenise(ev.ds, ev_policy, cfg, str(tokenizer_path))
        arrays = _concat(arrays, ev_arrays)
    splits = _splits(arrays, cfg.max_length)
    if len(splits["train"]["labels"]) == 0:
        raise DataError(f"{where}: the train split is empty")

    stats = {
        "read": sum(reasons.values()),
        "bad": sum(n for r, n in reasons.items() if r and r not in NORMAL_SKIPS),
        "bad_reasons": {r: n for r, n in sorted(reasons.items()) if r and r not in NORMAL_SKIPS},
        "empty_text": reasons.get("empty_text", 0),
        "duplicates_removed": reasons.get("duplicate", 0),
        "repeated_pairs_removed": reasons.get("repeated_user_item", 0),
        "limit": cfg.limit,
        "limit_reached": main.src.not_read > 0,
        "sample_fraction": cfg.sample_fraction,
        "sampled_out": reasons.get("sampled_out", 0),
        "kept": reasons[""],
        "split_sizes_before_caps": before_caps,
        "split_sizes": {s: len(splits[s]["labels"]) for s in SPLITS},
        "label_histogram": {
            s: np.bincount(splits[s]["labels"], minlength=5).tolist() for s in SPLITS
        },
        "item_titles": len(main.src.item_titles),
        "bad_rows_listed": len(main.bad) + len(main.src.item_bad_rows),
    }
    files = _records(main) + main.src.item_files
    bad = main.bad + main.src.item_bad_rows
    if ev is not None:
        cross["split_sizes_before_caps_test"] = ev_reasons[""]
        stats["cross_domain"] = cross
        files += _records(ev) + ev.src.item_files
        bad += ev.bad + ev.src.item_bad_rows
    return PreparedData(
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        num_labels=len(LABEL_NAMES),
        label_names=list(LABEL_NAMES),
        files=files,
        bad_rows=bad,
        stats=stats,
    )


def _reasons(reasons: Counter[str]) -> dict[str, int]:
    return {r or "kept": int(n) for r, n in sorted(reasons.items()) if n}


def _records(part: _Part) -> list[FileRecord]:
    counts = file_counts(part.counts, part.src.files)
    return file_records([Path(f) for f in part.src.files], counts, part.src.checksums)


def _concat(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not a or not b:
        return a or b
    return {k: np.concatenate([a[k], b[k]]) for k in a}
