"""Next-item splits: leave-one-out recommendation views as arrays a sequence model reads.

:func:`prepare_sequences` reads a corpus with user ids and timestamps (``read_corpus``),
builds the per-user views on Ray Data (:func:`engine.data.recsys.build_recsys`: chronological
histories, k-core, item ids 1…V by popularity, 0 = padding) and returns
:class:`engine.data.PreparedData` whose arrays are item ids instead of tokens:

* ``train`` — every prefix of each user's history *without its last two items* predicts
  the next item: ``input_ids`` = the ``max_length`` most recent items before position t
  (left-padded with 0), ``labels`` = the item at t (t ≥ 1). ``data.train_size`` keeps a
  seeded random subset of these prefixes. No training example ever has a user's valid or
  test item as input or target.
* ``valid`` — per user with ≥ 3 items: the history without its last two items → the
  second-latest item.
* ``test`` — the history without its last item → the latest item.

``attention_mask`` is 1 on items. Valid and test rows also carry ``seen`` (every item the
user interacted with before the target, 0-padded, never truncated: the items a full ranking
excludes) and ``negatives`` (``data.recsys.negatives = N``): N distinct items drawn per user
(seeded) from the items the user never interacted with, for the ``sampled-N`` protocol, and
``protocol`` (``data.recsys.ranking``: which protocol the metric columns use).
``stats["order"]`` counts the targets whose order is a timestamp tie-break, and
``stats["warnings"]`` says when a split's order is mostly tie-breaks or the sampled side
figures are absent (:mod:`engine.data.order`); data no split can be ordered on (one
timestamp for everything, a one-item catalogue) is a ``DataError``.
With ``ranking: full`` the negatives are drawn too (for the ``sampled_*`` side columns) unless
some user has fewer unseen items than N (then none are, and ``stats["sampled_negatives"]``
is 0). ``row_key`` is the user id (``user:t`` for a training prefix). ``num_labels`` is V + 1 (the
catalogue plus the padding id 0, which is never a candidate).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from engine.data.config import DataConfig
from engine.data.order import order_problem, order_stats, order_warnings
from engine.data.pipeline import PreparedData
from engine.data.read import collect, read_corpus
from engine.data.recsys import RecsysViews, build_recsys
from engine.data.registry import DataError

__all__ = [
    "catalogue_titles",
    "left_pad",
    "negatives_for",
    "prepare_sequences",
    "sequence_data",
    "sequence_splits",
]


def left_pad(seqs: list[list[int]], width: int) -> np.ndarray:
    """``[len(seqs), width]`` int64, each sequence's last ``width`` items right-aligned."""
    out = np.zeros((len(seqs), max(width, 1)), np.int64)
    for i, s in enumerate(seqs):
        s = s[-width:] if width else []
        if s:
            out[i, -len(s) :] = s
    return out


def negatives_for(user: str, history: list[int], n_items: int, n: int, seed: int) -> list[int]:
    """``n`` distinct item ids in 1..n_items that are not in ``history``, drawn uniformly by
    a generator seeded from (seed, user): the same user gets the same negatives in every run."""
    seen = set(history)
    pool = n_items - len(seen)
    if n > pool:
        raise DataError(
            f"sampled-{n} needs {n} unseen items per user; user {user!r} has only {pool}"
        )
    rng = np.random.default_rng([seed, zlib.crc32(user.encode())])
    out: list[int] = []
    taken: set[int] = set()
    while len(out) < n:
        for item in rng.integers(1, n_items + 1, size=2 * (n - len(out)) + 8).tolist():
            if item not in seen and item not in taken:
                taken.add(item)
                out.append(item)
                if len(out) == n:
                    break
    return out


def catalogue_titles(item_ids: Sequence[str], titles: Mapping[str, str]) -> tuple[list[str], int]:
    """The title of each item id 1…V (``item_ids[i]`` has id i + 1) and how many had none."""
    out, missing = [], 0
    for item in item_ids:
        title = " ".join(str(titles.get(item, "")).split())
        if not title:
            missing += 1
            title = f"item {item}"
        out.append(title)
    return out, missing


def sequence_splits(
    users: list[dict], n_items: int, cfg: DataConfig
) -> dict[str, dict[str, np.ndarray]]:
    """The three splits from per-user rows (``user_id``, ``history``: item ids in order)."""
    width = cfg.max_length
    users = sorted(users, key=lambda u: u["user_id"])
    train_in: list[list[int]] = []
    train_y: list[int] = []
    train_key: list[str] = []
    n_neg = cfg.recsys.negatives
    if cfg.recsys.ranking == "full" and n_neg:
        # side figures only: skipped (and said so) when a user has too few unseen items
        longest = max((len(u["history"]) for u in users), default=0)
        if n_items - longest < n_neg:
            n_neg = 0
    ev: dict[str, dict[str, list]] = {
        s: {"in": [], "y": [], "seen": [], "key": [], "neg": []} for s in ("valid", "test")
    }
    for u in users:
        h, user = list(u["history"]), u["user_id"]
        held = len(h) >= 3
        fit = h[:-2] if held else h
        for t in range(1, len(fit)):
            train_in.append(fit[max(0, t - width) : t])
            train_y.append(fit[t])
            train_key.append(f"{user}:{t}")
        if not held:
            continue
        for split, cut in (("valid", len(h) - 2), ("test", len(h) - 1)):
            e = ev[split]
            e["in"].append(h[:cut])
            e["y"].append(h[cut])
            e["seen"].append(h[:cut])
            e["key"].append(user)
            if n_neg:
                e["neg"].append(negatives_for(user, h, n_items, n_neg, cfg.seed))
    out: dict[str, dict[str, np.ndarray]] = {}
    order = np.arange(len(train_y))
    if cfg.train_size is not None and cfg.train_size < len(order):
        rng = np.random.default_rng(cfg.seed)
        order = np.sort(rng.choice(len(order), cfg.train_size, replace=False))
    ids = left_pad([train_in[i] for i in order], width)
    out["train"] = {
        "input_ids": ids,
        "attention_mask": (ids != 0).astype(np.int64),
        "labels": np.asarray([train_y[i] for i in order], np.int64),
        "row_key": np.asarray([train_key[i] for i in order], dtype=str),
    }
    for split, cap in (("valid", cfg.valid_size), ("test", cfg.test_size)):
        e = ev[split]
        keep = np.arange(len(e["y"]))
        if cap is not None and cap < len(keep):  # the same users in valid and test
            rng = np.random.default_rng([cfg.seed, 1])
            keep = np.sort(rng.choice(len(keep), cap, replace=False))
        ids = left_pad([e["in"][i] for i in keep], width)
        width_seen = max([len(e["seen"][i]) for i in keep] or [1])
        out[split] = {
            "input_ids": ids,
            "attention_mask": (ids != 0).astype(np.int64),
            "labels": np.asarray([e["y"][i] for i in keep], np.int64),
            "seen": left_pad([e["seen"][i] for i in keep], width_seen),
            "row_key": np.asarray([e["key"][i] for i in keep], dtype=str),
        }
        if n_neg:
            out[split]["negatives"] = np.asarray([e["neg"][i] for i in keep], np.int64)
        # the protocol of the metric columns, per row (row-aligned like every array)
        out[split]["protocol"] = np.full(len(keep), cfg.recsys.ranking)
    return out


def prepare_sequences(cfg: DataConfig) -> PreparedData:
    """Read ``cfg.corpus`` and build the next-item splits (see the module docstring).

    Raises:
        DataError: the corpus cannot be read, has no user ids or timestamps to order by,
            or leaves no user with a held-out item.
    """
    return sequence_data(cfg)[0]


def sequence_data(cfg: DataConfig) -> tuple[PreparedData, dict[str, str]]:
    """:func:`prepare_sequences` and the corpus's item titles (raw item id → title)."""
    if cfg.eval is not None:
        raise DataError(
            "data.eval (a second corpus as the test split) is not supported by the next_item "
            "task: item ids are not shared between catalogues"
        )
    corpus = read_corpus(
        cfg.corpus,
        cfg.path,
        max_bad_fraction=cfg.max_bad_fraction,
        columns=cfg.columns,
        timestamp_unit=cfg.timestamp_unit,
        limit=cfg.limit,
        hf_name=cfg.hf_name,
        hf_split=cfg.hf_split,
    )
    rec = cfg.recsys.model_copy(update={"max_sequence_length": cfg.max_length})
    views: RecsysViews = build_recsys(
        corpus.rows, rec, seed=cfg.seed, sample_fraction=cfg.sample_fraction
    )

    table = collect(views.users.select_columns(["user_id", "history", "timestamps"]))
    users = table.to_pylist()
    n_items = len(views.item_ids)
    if (problem := order_problem(users, n_items, str(cfg.path or cfg.corpus))) is not None:
        raise DataError(problem)
    splits = sequence_splits(users, n_items, cfg)
    if len(splits["test"]["labels"]) == 0:
        raise DataError(
            f"{cfg.path or cfg.corpus}: no user has the 3 interactions a leave-one-out "
            f"split needs ({views.stats['users']} users)"
        )
    if len(splits["train"]["labels"]) == 0:
        raise DataError(f"{cfg.path or cfg.corpus}: no training prefixes remain")
    stats = {
        **views.stats,
        "split_sizes": {s: len(splits[s]["labels"]) for s in splits},
        "ranking": f"sampled-{rec.negatives}" if rec.ranking == "sampled" else "full",
        "sampled_negatives": int(splits["test"].get("negatives", np.zeros((0, 0))).shape[1]),
        "item_titles": len(corpus.item_titles),
        "order": order_stats(users),
    }
    stats["warnings"] = order_warnings(stats["order"])
    wanted = cfg.recsys.negatives if cfg.recsys.ranking == "full" else 0
    if wanted and not stats["sampled_negatives"]:  # why the sampled side figures are absent
        longest = max(len(u["history"]) for u in users)
        stats["warnings"].append(
            f"no sampled-{wanted} figures: the catalogue has {n_items} items and a user has "
            f"{longest} of them, so fewer than {wanted} unseen items to draw"
        )
    if cfg.recsys.item_init == "titles":  # the LM-enhanced variant's starting embeddings
        from engine.models import EMBEDDED_TEACHER
        from engine.tasks.text_ranker import TEXT, title_vectors

        titles, missing = catalogue_titles(views.item_ids, corpus.item_titles)
        splits["train"]["title_vectors"] = title_vectors(
            TEXT + EMBEDDED_TEACHER, titles, max_length=cfg.recsys.title_tokens
        )
        stats["items_without_title"] = missing
    data = PreparedData(
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        num_labels=n_items + 1,
        label_names=["<pad>", *views.item_ids],
        files=corpus.files,
        bad_rows=corpus.bad_rows,
        stats=stats,
    )
    return data, dict(corpus.item_titles)
