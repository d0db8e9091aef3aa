"""Recommendation views of a corpus on Ray Data: per-user sequences, leave-one-out targets.

:func:`build_recsys` takes valid interaction rows (e.g. ``read_corpus("movielens").rows``)
and returns :class:`RecsysViews`:

1. **histories** — ``groupby(user_id).map_groups``: one row per user, items in chronological
   order (timestamp, then item id for ties); a repeated (user, item) keeps its earliest
   interaction. ``sample_fraction`` keeps a hash-chosen share of the users.
2. **k-core** (``k_core`` ≥ 2) — repeat until nothing changes: count each item's users (per
   block in Ray; the driver adds the small per-block tables), drop items with fewer than k,
   drop users left with fewer than k. The result is the unique maximal subgraph in which
   every user and item has ≥ k interactions.
3. **vocabulary** — item → id 1…V by descending count, then item id (0 is padding).
4. **leave-one-out** — per user with ≥ ``min_interactions`` items: the latest item is the
   test target, the second latest the valid target; the train sequence is the rest. Each
   input sequence keeps its ``max_sequence_length`` most recent items; ``history`` keeps
   every item (the items a ranking excludes as already seen).

The driver holds only per-item tables (vocabulary, counts), never per-interaction rows.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from engine.data.config import RecsysConfig
from engine.data.read import collect
from engine.data.registry import TASK_CPUS, DataError

__all__ = ["USER_SCHEMA", "VIEW_SCHEMA", "RecsysViews", "build_recsys", "kept_user"]

USER_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("items", pa.list_(pa.string())),
        ("timestamps", pa.list_(pa.int64())),
        ("repeats", pa.int64()),
    ]
)
VIEW_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("train", pa.list_(pa.int64())),  # the training sequence (most recent items kept)
        ("valid_input", pa.list_(pa.int64())),
        ("valid_target", pa.int64()),  # 0 when the user has too few interactions
        ("test_input", pa.list_(pa.int64())),
        ("test_target", pa.int64()),
        ("n_interactions", pa.int64()),
        ("history", pa.list_(pa.int64())),  # every item id in order, never truncated
        ("timestamps", pa.list_(pa.int64())),  # each history item's timestamp
    ]
)


def kept_user(user: str, seed: int, fraction: float) -> bool:
    """``sample_fraction`` rule for users: crc32(f"sample:{seed}:{user}") / 2³² < fraction."""
    return fraction >= 1.0 or zlib.crc32(f"sample:{seed}:{user}".encode()) < fraction * 2**32


@dataclass(frozen=True)
class RecsysViews:
    """Per-user views (a materialised Ray dataset of :data:`VIEW_SCHEMA`) and the vocabulary.

    ``item_ids[i]`` is the item with id ``i + 1``; ``item_counts[i]`` its interactions after
    filtering.
    """

    users: ray.data.Dataset
    item_ids: list[str]
    item_counts: np.ndarray
    stats: dict

    def to_numpy(self, max_sequence_length: int) -> dict[str, np.ndarray]:
        """Small data only: every user's row, sequences left-padded with 0, by user id."""
        t = collect(self.users)
        if t.num_rows == 0 or "user_id" not in t.column_names:
            return {}
        t = t.sort_by("user_id")
        out: dict[str, np.ndarray] = {"user_id": np.asarray(t["user_id"].to_pylist())}
        for name in ("train", "valid_input", "test_input"):
            seqs = t[name].to_pylist()
            arr = np.zeros((len(seqs), max_sequence_length), np.int64)
            for i, s in enumerate(seqs):
                if s:
                    arr[i, -len(s) :] = s
            out[name] = arr
        for name in ("valid_target", "test_target", "n_interactions"):
            out[name] = t[name].to_numpy()
        return out


def _history(group: pa.Table, seed: int, sample_fraction: float) -> pa.Table:
    user = group["user_id"][0].as_py()
    if not kept_user(user, seed, sample_fraction):
        return USER_SCHEMA.empty_table()
    g = group.sort_by([("timestamp", "ascending"), ("item_id", "ascending")])
    items: list[str] = []
    stamps: list[int] = []
    seen: set[str] = set()
    for item, ts in zip(g["item_id"].to_pylist(), g["timestamp"].to_pylist(), strict=True):
        if item in seen:
            continue
        seen.add(item)
        items.append(item)
        stamps.append(ts)
    repeats = g.num_rows - len(items)
    return pa.Table.from_pylist(
        [{"user_id": user, "items": items, "timestamps": stamps, "repeats": repeats}],
        schema=USER_SCHEMA,
    )


def _count_block(t: pa.Table, k: int, evaluate_from: int) -> pa.Table:
    """Per block: interactions per item (``key`` "item"), plus one row per summary count."""
    lengths = pc.list_value_length(t["items"])
    counts = pc.value_counts(pc.list_flatten(t["items"]))
    summary = {
        "users": t.num_rows,
        "short_users": int(pc.sum(pc.less(lengths, k)).as_py() or 0),
        "evaluated": int(pc.sum(pc.greater_equal(lengths, evaluate_from)).as_py() or 0),
        "repeats": int(pc.sum(t["repeats"]).as_py() or 0),
        "empty_user": int(pc.sum(pc.equal(t["user_id"], "")).as_py() or 0),
    }
    n_items = len(counts)
    return pa.table(
        {
            "key": pa.array(["item"] * n_items + list(summary), pa.string()),
            "item": pa.array(
                [*counts.field("values").to_pylist(), *[None] * len(summary)], pa.string()
            ),
            "n": pa.array([*counts.field("counts").to_pylist(), *summary.values()], pa.int64()),
        }
    )


def _counts(
    users: ray.data.Dataset, k: int, evaluate_from: int
) -> tuple[dict[str, int], dict[str, int]]:
    """``(item → interactions, summary counts)``, summed on the driver over blocks."""
    parts = collect(
        users.map_batches(
            _count_block,
            batch_format="pyarrow",
            batch_size=None,
            fn_kwargs={"k": k, "evaluate_from": evaluate_from},
            num_cpus=TASK_CPUS,
        )
    )
    counts: dict[str, int] = {}
    summary = {"users": 0, "short_users": 0, "evaluated": 0, "repeats": 0, "empty_user": 0}
    if parts.num_rows == 0 or "key" not in parts.column_names:
        return counts, summary
    for key, item, n in zip(
        parts["key"].to_pylist(), parts["item"].to_pylist(), parts["n"].to_pylist(), strict=True
    ):
        if key == "item":
            counts[item] = counts.get(item, 0) + n
        else:
            summary[key] += n
    return counts, summary


def _prune(t: pa.Table, drop: frozenset[str], k: int) -> pa.Table:
    rows = []
    for row in t.to_pylist():
        keep = [i for i, item in enumerate(row["items"]) if item not in drop]
        if len(keep) < k:
            continue
        row["items"] = [row["items"][i] for i in keep]
        row["timestamps"] = [row["timestamps"][i] for i in keep]
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=USER_SCHEMA)


def _views(t: pa.Table, vocab: dict[str, int], max_len: int, min_interactions: int) -> pa.Table:
    rows = []
    columns = (t["user_id"].to_pylist(), t["items"].to_pylist(), t["timestamps"].to_pylist())
    for user, items, stamps in zip(*columns, strict=True):
        ids = [vocab[i] for i in items]
        n = len(ids)
        if n >= max(min_interactions, 3):
            train, valid_target, test_target = ids[:-2], ids[-2], ids[-1]
            valid_input, test_input = ids[:-2][-max_len:], ids[:-1][-max_len:]
        else:  # too short to hold out: everything trains, nothing is evaluated
            train, valid_target, test_target, valid_input, test_input = ids, 0, 0, [], []
        rows.append(
            {
                "user_id": user,
                "train": train[-max_len:],
                "valid_input": valid_input,
                "valid_target": valid_target,
                "test_input": test_input,
                "test_target": test_target,
                "n_interactions": n,
                "history": ids,
                "timestamps": stamps,
            }
        )
    return pa.Table.from_pylist(rows, schema=VIEW_SCHEMA)


def build_recsys(
    rows: ray.data.Dataset,
    cfg: RecsysConfig | None = None,
    *,
    seed: int = 0,
    sample_fraction: float = 1.0,
) -> RecsysViews:
    """Recommendation views of valid interaction rows (``user_id, item_id, timestamp``).

    Raises:
        DataError: the corpus has no user ids, or nothing survives the k-core filter.
    """
    cfg = cfg or RecsysConfig()
    base = rows.select_columns(["user_id", "item_id", "timestamp"])
    partitions = cfg.num_partitions or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    users = (
        base.groupby("user_id", num_partitions=partitions)
        .map_groups(
            _history,
            batch_format="pyarrow",
            fn_kwargs={"seed": seed, "sample_fraction": sample_fraction},
            num_cpus=TASK_CPUS,
        )
        .materialize()
    )
    k = cfg.k_core if cfg.k_core >= 2 else 1
    evaluate_from = max(cfg.min_interactions, 3)
    counts, summary = _counts(users, k, evaluate_from)
    if summary["empty_user"]:
        raise DataError("recommendation views need user ids; this corpus has rows without one")
    first = dict(summary)
    interactions_in = sum(counts.values()) + summary["repeats"]
    rounds = 0
    while k > 1:
        drop = frozenset(i for i, n in counts.items() if n < k)
        if not drop and summary["short_users"] == 0:
            break
        users = users.map_batches(
            _prune,
            batch_format="pyarrow",
            fn_kwargs={"drop": drop, "k": k},
            num_cpus=TASK_CPUS,
        ).materialize()
        rounds += 1
        counts, summary = _counts(users, k, evaluate_from)
    if not counts:
        raise DataError(
            f"no interactions remain after the {k}-core filter ({interactions_in} before)"
        )
    order = sorted(counts, key=lambda i: (-counts[i], i))
    vocab = {item: n + 1 for n, item in enumerate(order)}
    views = users.map_batches(
        _views,
        batch_format="pyarrow",
        fn_kwargs={
            "vocab": vocab,
            "max_len": cfg.max_sequence_length,
            "min_interactions": cfg.min_interactions,
        },
        num_cpus=TASK_CPUS,
    ).materialize()
    stats = {
        "interactions_in": interactions_in,
        "repeated_pairs_removed": first["repeats"],
        "users_in": first["users"],
        "interactions": int(sum(counts.values())),
        "users": summary["users"],
        "users_evaluated": summary["evaluated"],
        "items": len(vocab),
        "k_core": cfg.k_core,
        "k_core_rounds": rounds,
        "max_sequence_length": cfg.max_sequence_length,
        "sample_fraction": sample_fraction,
        "seed": seed,
    }
    return RecsysViews(
        users=views,
        item_ids=order,
        item_counts=np.asarray([counts[i] for i in order], np.int64),
        stats=stats,
    )
