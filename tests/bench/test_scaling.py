"""The scheduling-gap measure of ``bench/scaling.py`` on a planted schedule: on each node a
freed slot is taken by the next start, and the gap is that start minus the freeing."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from scaling import slot_gaps  # noqa: E402


def test_gaps_pair_each_start_with_the_earliest_freed_slot_on_its_node() -> None:
    # node a, two slots: t1 [0, 10], t2 [1, 12]; t3 starts at 10.5 (slot of t1, gap 0.5),
    # t4 at 13 (slot of t2, gap 1.0); node b, one slot: t5 [0, 5], t6 [8, 9] (gap 3.0).
    # A trial on b never fills a slot freed on a, whatever the times.
    planted = pd.DataFrame(
        {
            "node_id": ["a", "a", "a", "a", "b", "b"],
            "started_at": [0.0, 1.0, 10.5, 13.0, 0.0, 8.0],
            "finished_at": [10.0, 12.0, 20.0, 21.0, 5.0, 9.0],
        }
    )
    assert sorted(slot_gaps(planted)) == pytest.approx([0.5, 1.0, 3.0])


def test_trials_that_fill_initially_free_slots_have_no_gap() -> None:
    planted = pd.DataFrame(
        {"node_id": ["a", "a"], "started_at": [0.0, 2.0], "finished_at": [5.0, 6.0]}
    )
    assert slot_gaps(planted) == []
