"""The slot split of ``bench/trial_overhead.py`` on a planted schedule whose parts are known:
fresh workers take the earliest slot freed on their node (a slot is freed when a worker's last
trial ends), reused ones continue after their own previous trial."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.trial_overhead import slot_table


def _trial(tid, node, pid, k, imp0, imp_s, start, end, **phases) -> dict:
    return {
        "trial_id": tid,
        "node_id": node,
        "worker_pid": pid,
        "worker_trial": k,
        "worker_import_started_at": imp0,
        "worker_import_s": imp_s,
        "started_at": start,
        "finished_at": end,
        "wall_s": end - start,
        **{f"phase_{p}_s": v for p, v in phases.items()},
    }


def test_each_slot_is_split_into_its_known_parts() -> None:
    # Tune starts at 100. Node a, two slots:
    #   t1 fresh pid 1: imports 101 → 105, starts 106, ends 116 (its pid's last trial: frees a slot)
    #   t2 fresh pid 2: imports 101.5 → 105.5, starts 106.5, ends 120 (pid 2 runs t4 next)
    #   t3 fresh pid 3: imports from 117 for 3 s, starts 121: takes t1's slot (freed at 116)
    #   t4 reused pid 2: starts 120.5, 0.5 s after its own t2 ended
    # Node b: t5's process imported the engine at 90 → 94, before Tune started: none of its
    # import is this slot's; it starts at 102.
    planted = pd.DataFrame(
        [
            _trial("t1", "a", 1, 1, 101.0, 4.0, 106.0, 116.0, train=6.0, eval=2.0, build=1.0),
            _trial("t2", "a", 2, 1, 101.5, 4.0, 106.5, 120.0, train=10.0),
            _trial("t3", "a", 3, 1, 117.0, 3.0, 121.0, 130.0, train=9.0),
            _trial("t4", "a", 2, 2, 101.5, 4.0, 120.5, 125.0, train=4.0, reset=0.25),
            _trial("t5", "b", 5, 1, 90.0, 4.0, 102.0, 110.0, train=8.0),
        ]
    )
    got = slot_table(planted, tune_started_at=100.0).set_index("trial_id")
    expected = {  # (between, actor_start, imports, actor_setup)
        "t1": (0.0, 1.0, 4.0, 1.0),
        "t2": (0.0, 1.5, 4.0, 1.0),
        "t3": (0.0, 1.0, 3.0, 1.0),
        "t4": (0.5, 0.0, 0.0, 0.0),
        "t5": (0.0, 0.0, 0.0, 2.0),
    }
    for tid, parts in expected.items():
        row = got.loc[tid]
        assert (
            row["between_s"],
            row["actor_start_s"],
            row["imports_s"],
            row["actor_setup_s"],
        ) == pytest.approx(parts), tid
        assert row["gap_s"] == pytest.approx(sum(parts))
        assert row["slot_s"] == pytest.approx(
            sum(parts) + planted.set_index("trial_id").loc[tid, "wall_s"]
        )
    t1 = got.loc["t1"]
    assert (t1["train"], t1["eval"], t1["build"], t1["other"]) == pytest.approx((6, 2, 1, 1))
    assert t1["work_s"] == pytest.approx(8.0)
    assert got.loc["t4", "reset"] == pytest.approx(0.25)
    assert got.loc["t4", "other"] == pytest.approx(4.5 - 4.25)
