"""The corpus-wide decisions of data preparation, made inside Ray.

Which copy of a duplicate survives, how many rows each file lost and why, which rows fill
a split's size cap, which evaluation pairs were already seen in training, and which bad
rows are listed: each is computed per block in Ray, so the driver only ever holds small
tables whose size does not grow with the corpus:

* **dedup** (:func:`dedup`): rows are hash-partitioned by ``hash`` (a function of
  ``row_key``) in Ray tasks, so every copy of a (user, item) pair meets in one task, which
  marks ``duplicate`` / ``repeated_user_item`` (:func:`mark_block`).
* **counts** (:func:`tally`): per block, rows per (file, reason, split); the driver adds
  O(files × reasons × splits) numbers.
* **caps** (:func:`cap_policy`): per block, the ``cap`` smallest (hash, row_key) of each
  capped split; the driver keeps a running top-``cap`` while it fetches them one block at a
  time, and the last of those is the split's threshold. :func:`choose` then keeps, per
  block, the valid rows at or below their split's threshold (or all / none of a split).
* **cross-domain** (``seen`` in :func:`dedup`): the training corpus's train and valid rows
  join the evaluation rows in the same partitioning, so an evaluation pair that is in them
  is marked ``in_train_corpus`` in the partition — no set of keys on the driver.
* **bad rows** (:func:`listed_bad_rows`): per block the first
  :data:`~engine.data.registry.MAX_BAD_ROWS_LISTED` invalid rows in (file, line) order, merged
  on the driver into one bounded list.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from engine.data.registry import MAX_BAD_ROWS_LISTED, NORMAL_SKIPS, TASK_CPUS

__all__ = [
    "Policy",
    "cap_policy",
    "choose",
    "dedup",
    "file_counts",
    "listed_bad_rows",
    "mark_block",
    "partitions_for",
    "reason_counts",
    "split_counts",
    "tally",
    "with_side",
]

PARTITION_BYTES = 64 * 2**20  # aim for hash partitions of about this much row data
SIDE = "_side"  # 0: a row of the corpus being decided; 1: a training row it is checked against
# A split's rule in :func:`choose`: "all", "none", or the largest (hash, row_key) kept.
Policy = Mapping[str, str | tuple[int, str]]


def partitions_for(minimum: int, *datasets: ray.data.Dataset | None) -> int:
    """Hash partitions for a shuffle of ``datasets`` (materialised): ``minimum``, or more so
    that each holds about :data:`PARTITION_BYTES` (a partition is one task's memory)."""
    size = sum(ds.size_bytes() or 0 for ds in datasets if ds is not None)
    return max(minimum, math.ceil(size / PARTITION_BYTES))


def mark_block(t: pa.Table) -> pa.Table:
    """Dedup the rows of one hash partition (all copies of each ``row_key`` are in it).

    Within a ``row_key`` group of valid rows the earliest (``timestamp``, then ``uid`` =
    file, line) is kept; a later row whose ``content_key`` equals an earlier one's is a
    ``duplicate``, any other later row a ``repeated_user_item``. With a :data:`SIDE`
    column, only side-0 rows are decided; a side-0 row left valid whose ``row_key`` is
    among the side-1 rows becomes ``in_train_corpus``, and side-1 rows are dropped.
    """
    reason = np.asarray(t["reason"].to_pylist(), dtype=object)
    own = (
        np.ones(t.num_rows, bool)
        if SIDE not in t.column_names
        else t[SIDE].to_numpy(zero_copy_only=False) == 0
    )
    valid = own & (reason == "")
    idx = np.flatnonzero(valid)
    if len(idx) > 1:
        v = t.select(["row_key", "content_key", "timestamp", "uid"]).take(pa.array(idx))
        later = _not_first(v, ["row_key"])
        copy = _not_first(v, ["row_key", "content_key"])
        reason[idx[later & copy]] = "duplicate"
        reason[idx[later & ~copy]] = "repeated_user_item"
    out = t.set_column(t.schema.get_field_index("reason"), "reason", pa.array(reason, pa.string()))
    if SIDE not in t.column_names:
        return out
    train = pc.unique(t.filter(pc.equal(t[SIDE], 1))["row_key"])
    if len(train):
        seen = pc.is_in(t["row_key"], value_set=train).to_numpy(zero_copy_only=False)
        reason[own & (reason == "") & seen] = "in_train_corpus"
        out = out.set_column(
            out.schema.get_field_index("reason"), "reason", pa.array(reason, pa.string())
        )
    return out.filter(pa.array(own)).drop_columns([SIDE])


def _not_first(t: pa.Table, keys: list[str]) -> np.ndarray:
    """Per row: whether another row with the same ``keys`` comes before it in (timestamp,
    uid) order, i.e. it is not the first of its ``keys`` group (sorted, then neighbours
    compared)."""
    order = pc.sort_indices(t, sort_keys=[(k, "ascending") for k in [*keys, "timestamp", "uid"]])
    same = np.zeros(t.num_rows, bool)
    same[1:] = True
    for k in keys:
        col = t[k].take(order).to_numpy(zero_copy_only=False)
        same[1:] &= col[1:] == col[:-1]
    out = np.zeros(t.num_rows, bool)
    out[order.to_numpy()] = same
    return out


@ray.remote(num_cpus=TASK_CPUS)
def _split_block(t: pa.Table, partitions: int, side: int | None) -> tuple[pa.Table, ...]:
    """Map side of the shuffle: a block cut into ``partitions`` parts by ``hash``."""
    if side is not None:
        t = with_side(t, side)
    part = pa.array(t["hash"].to_numpy() % partitions)
    parts = tuple(t.filter(pc.equal(part, i)) for i in range(partitions))
    return parts if partitions > 1 else parts[0]


@ray.remote(num_cpus=TASK_CPUS)
def _mark_partition(*parts: pa.Table) -> pa.Table:
    """Reduce side of the shuffle: one partition's rows from every block, de-duplicated."""
    return mark_block(pa.concat_tables(parts, promote_options="default"))


def with_side(t: pa.Table, side: int) -> pa.Table:
    """``t`` with a :data:`SIDE` column; side-1 rows (training rows that evaluation pairs
    are checked against) keep only valid train/valid rows, texts blanked to cut the shuffle."""
    if side == 1:
        keep = pc.and_(
            pc.equal(t["reason"], ""), pc.is_in(t["split"], pa.array(["train", "valid"]))
        )
        t = t.filter(keep)
        blank = pa.array([""] * t.num_rows, pa.string())
        for name in ("text", "title", "raw"):
            t = t.set_column(t.schema.get_field_index(name), name, blank)
    return t.append_column(SIDE, pa.array(np.full(t.num_rows, side, np.int8)))


def dedup(
    ds: ray.data.Dataset, partitions: int, seen: ray.data.Dataset | None = None
) -> ray.data.Dataset:
    """``ds`` with duplicates marked (:func:`mark_block`), in ``partitions`` hash partitions
    of ``hash`` (a function of ``row_key``); with ``seen`` (the training corpus's
    de-duplicated rows), also marks ``in_train_corpus``. The result does not depend on
    ``partitions`` or on the block layout.

    The shuffle is two rounds of Ray tasks (split each block by partition, then one task per
    partition), whose outputs stay in the object store; the driver holds only object refs.
    Ray Data's own hash shuffle (``groupby(...).map_groups``) gives the same partitions but
    costs several seconds more per call on a 2-CPU machine (see the data benchmark notes).
    """
    inputs = [(ref, None if seen is None else 0) for ref in ds.to_arrow_refs()]
    if seen is not None:
        inputs += [(ref, 1) for ref in seen.to_arrow_refs()]
    split = [
        _split_block.options(num_returns=partitions).remote(ref, partitions, side)
        for ref, side in inputs
    ]
    if partitions == 1:
        split = [[r] for r in split]
    outs = [_mark_partition.remote(*[s[i] for s in split]) for i in range(partitions)]
    return ray.data.from_arrow_refs(outs)


def _fetch(ds: ray.data.Dataset) -> Iterator[pa.Table]:
    """The blocks of a dataset of small per-block tables, fetched one at a time."""
    for ref in ds.to_arrow_refs():
        t = ray.get(ref)
        if t.num_rows:
            yield t


def _tally_block(t: pa.Table) -> pa.Table:
    counted = t.group_by(["source_file", "reason", "split"]).aggregate([([], "count_all")])
    return counted.rename_columns(["source_file", "reason", "split", "n"])


def tally(ds: ray.data.Dataset) -> dict[tuple[str, str, str], int]:
    """``(file, reason, split) → rows`` ("" = valid), counted per block in Ray; the driver
    adds one small table per block."""
    out: Counter[tuple[str, str, str]] = Counter()
    parts = ds.select_columns(["source_file", "reason", "split"]).map_batches(
        _tally_block, batch_format="pyarrow", batch_size=None, num_cpus=TASK_CPUS
    )
    for t in _fetch(parts):
        for f, reason, split, n in zip(
            t["source_file"].to_pylist(),
            t["reason"].to_pylist(),
            t["split"].to_pylist(),
            t["n"].to_pylist(),
            strict=True,
        ):
            out[(f, reason, split)] += n
    return dict(out)


def file_counts(
    counts: Mapping[tuple[str, str, str], int], files: list[str]
) -> dict[str, Counter[str]]:
    """``file → Counter(reason)`` from :func:`tally`'s counts, in ``files`` order (an empty
    Counter for a file that had no records)."""
    out: dict[str, Counter[str]] = {f: Counter() for f in files}
    for (f, reason, _), n in counts.items():
        out.setdefault(f, Counter())[reason] += n
    return out


def reason_counts(counts: Mapping[tuple[str, str, str], int]) -> Counter[str]:
    """``reason → rows`` over all files ("" = kept)."""
    out: Counter[str] = Counter()
    for (_, reason, _), n in counts.items():
        out[reason] += n
    return out


def split_counts(counts: Mapping[tuple[str, str, str], int], splits: tuple[str, ...]) -> dict:
    """Valid rows per split."""
    return {s: sum(n for (_, r, sp), n in counts.items() if r == "" and sp == s) for s in splits}


def _order(t: pa.Table) -> pa.Table:
    return t.sort_by([("hash", "ascending"), ("row_key", "ascending")])


def _candidates(t: pa.Table, caps: Mapping[str, int]) -> pa.Table:
    parts = []
    for split, cap in caps.items():
        mine = t.filter(pc.and_(pc.equal(t["reason"], ""), pc.equal(t["split"], split)))
        parts.append(_order(mine.select(["split", "hash", "row_key"])).slice(0, cap))
    return pa.concat_tables(parts)


def cap_policy(
    ds: ray.data.Dataset, caps: Mapping[str, int | None], splits: tuple[str, ...]
) -> dict[str, str | tuple[int, str]]:
    """Per split: ``"all"`` (no cap, or fewer valid rows than the cap), ``"none"`` (cap 0),
    or the largest (hash, row_key) of the ``cap`` valid rows with the smallest ones.

    Each block sends at most ``cap`` candidates per split; the driver fetches them one block
    at a time and keeps a running top-``cap``, so it holds O(cap) keys whatever the corpus.
    """
    capped = {s: c for s, c in caps.items() if c is not None and c > 0}
    policy: dict[str, str | tuple[int, str]] = {
        s: "none" if caps.get(s) == 0 else "all" for s in splits
    }
    if not capped:
        return policy
    best = {s: None for s in capped}
    parts = ds.select_columns(["reason", "split", "hash", "row_key"]).map_batches(
        _candidates,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"caps": capped},
        num_cpus=TASK_CPUS,
    )
    for t in _fetch(parts):
        for split, cap in capped.items():
            mine = t.filter(pc.equal(t["split"], split))
            merged = mine if best[split] is None else pa.concat_tables([best[split], mine])
            best[split] = _order(merged).slice(0, cap)
    for split, cap in capped.items():
        top = best[split]
        if top is not None and top.num_rows >= cap:
            policy[split] = (top["hash"][cap - 1].as_py(), top["row_key"][cap - 1].as_py())
    return policy


def choose(t: pa.Table, policy: Policy, columns: list[str]) -> pa.Table:
    """The valid rows of ``t`` that ``policy`` keeps (see :func:`cap_policy`), ``columns`` only."""
    valid = pc.equal(t["reason"], "")
    keep = pa.array(np.zeros(t.num_rows, bool))
    for split, rule in policy.items():
        if rule == "none":
            continue
        mine = pc.and_(valid, pc.equal(t["split"], split))
        if rule != "all":
            h, key = rule
            below = pc.or_(
                pc.less(t["hash"], h),
                pc.and_(pc.equal(t["hash"], h), pc.less_equal(t["row_key"], key)),
            )
            mine = pc.and_(mine, below)
        keep = pc.or_(keep, mine)
    return t.filter(keep).select(columns)


def _bad_order(t: pa.Table) -> pa.Table:
    return t.sort_by(
        [
            ("source_file", "ascending"),
            ("_no_line", "ascending"),
            ("_line", "ascending"),
            ("record", "ascending"),
        ]
    )


def _bad_block(t: pa.Table, k: int) -> pa.Table:
    bad = t.filter(pc.invert(pc.is_in(t["reason"], pa.array(["", *sorted(NORMAL_SKIPS)]))))
    bad = bad.select(["source_file", "source_line", "reason", "raw", "record"])
    bad = bad.append_column("_no_line", pc.is_null(bad["source_line"]))
    bad = bad.append_column("_line", pc.fill_null(bad["source_line"], 0))
    return _bad_order(bad).slice(0, k)


def listed_bad_rows(ds: ray.data.Dataset, k: int = MAX_BAD_ROWS_LISTED) -> list[dict]:
    """The first ``k`` invalid rows in (file, line; rows without a line last; record) order,
    as quarantine entries ``{path, line, reason, raw}``; O(k) rows on the driver."""
    best: pa.Table | None = None
    parts = ds.map_batches(
        _bad_block, batch_format="pyarrow", batch_size=None, fn_kwargs={"k": k}, num_cpus=TASK_CPUS
    )
    for t in _fetch(parts):
        best = _bad_order(t if best is None else pa.concat_tables([best, t])).slice(0, k)
    if best is None:
        return []
    return [
        {"path": p, "line": ln, "reason": r, "raw": raw}
        for p, ln, r, raw in zip(
            best["source_file"].to_pylist(),
            best["source_line"].to_pylist(),
            best["reason"].to_pylist(),
            best["raw"].to_pylist(),
            strict=True,
        )
    ]
