"""Whether a corpus's timestamps can order a next-item split: counted, warned, or refused.

A leave-one-out split takes each user's latest item as the test target and the one before as
the validation target. Where two interactions share a timestamp (day-granular reviews, a
batch import) the order between them is the item-id tie-break of
:mod:`engine.data.recsys`, not time. :func:`order_stats` counts, over the users a split
evaluates (≥ 3 items), the targets decided that way, the users whose every interaction has
one timestamp, and the users whose whole history is the same as another user's;
:func:`order_warnings` turns the counts into lines for the terminal and the report when a
split's order is mostly tie-breaks (more than :data:`MOSTLY` of its targets) or most users
are duplicates. :func:`order_problem` refuses data no split can be ordered on: one timestamp
for every interaction, or a catalogue of one item.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

__all__ = ["MOSTLY", "order_problem", "order_stats", "order_warnings"]

MOSTLY = 0.5  # a share above this is "most"


def order_stats(users: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Counts over per-user rows (``history``: item ids in order; ``timestamps`` alike)."""
    evaluated = [u for u in users if len(u["history"]) >= 3]
    histories = Counter(tuple(u["history"]) for u in evaluated)
    return {
        "users": len(users),
        "users_evaluated": len(evaluated),
        "test_targets_tied": sum(u["timestamps"][-1] == u["timestamps"][-2] for u in evaluated),
        "valid_targets_tied": sum(u["timestamps"][-2] == u["timestamps"][-3] for u in evaluated),
        "users_one_timestamp": sum(
            len(u["timestamps"]) >= 2 and len(set(u["timestamps"])) == 1 for u in users
        ),
        "users_duplicate_history": sum(histories[tuple(u["history"])] > 1 for u in evaluated),
    }


def _share(part: int, whole: int) -> str:
    return f"{part} of {whole} ({part / whole:.0%})"


def order_warnings(stats: dict[str, int]) -> list[str]:
    """One line per split whose order is mostly tie-breaks, and for mostly duplicate users."""
    n = stats["users_evaluated"]
    out = []
    if not n:
        return out
    for split in ("test", "valid"):
        tied = stats[f"{split}_targets_tied"]
        if tied > MOSTLY * n:
            out.append(
                f"{split} split: {_share(tied, n)} targets share their timestamp with the item "
                "before, so their order is the item-id tie-break, not time"
            )
    if stats["users_one_timestamp"] > MOSTLY * stats["users"]:
        out.append(
            f"{_share(stats['users_one_timestamp'], stats['users'])} users have every "
            "interaction at one timestamp"
        )
    if stats["users_duplicate_history"] > MOSTLY * n:
        out.append(
            f"{_share(stats['users_duplicate_history'], n)} evaluated users have the same "
            "history as another user"
        )
    return out


def order_problem(users: Sequence[dict[str, Any]], n_items: int, where: str) -> str | None:
    """Why no next-item split can be ordered on these users (one line), or None."""
    if n_items <= 1:
        return f"{where}: the catalogue has {n_items} item after filtering: nothing to rank"
    stamps = {t for u in users for t in u["timestamps"]}
    interactions = sum(len(u["timestamps"]) for u in users)
    if len(stamps) == 1 and interactions > 1:
        return (
            f"{where}: all {interactions} interactions share one timestamp ({next(iter(stamps))}),"
            " so nothing orders a user's items (a split would follow item ids); give the "
            "corpus its real timestamps"
        )
    return None
