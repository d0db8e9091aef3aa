"""The time-to-front bench's clocks and hypervolume curve on planted trials whose schedule and
front are worked out by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.time_to_front import curve, wall_clock


def test_each_trial_takes_the_earliest_free_slot_after_the_gap() -> None:
    # 2 slots: 10 on slot 1 from 0; 4 on slot 2 from 0; 3 after the 4 (+ gap); 5 after that
    assert wall_clock([10, 4, 3, 5], slots=2, gap=0.0) == [10, 4, 7, 12]
    assert wall_clock([10, 4, 3, 5], slots=2, gap=1.0) == [11, 5, 9, 15]
    assert wall_clock([2, 2, 2], slots=1, gap=0.5) == [2.5, 5.0, 7.5]


def test_the_curve_counts_finished_trials_and_every_second_spent() -> None:
    # A [0, 10] ok at (0.5 acc, 0.2 GFLOPs); B [0, 4] stopped at (0.9, 0.1): never on the
    # front; C [4, 7] ok at (0.8, 0.6). Reference (0 acc, 1.0 GFLOPs).
    trials = pd.DataFrame(
        {
            "charged_s": [10.0, 4.0, 3.0],
            "status": ["ok", "stopped", "ok"],
            "valid_accuracy": [0.5, 0.9, 0.8],
            "gflops": [0.2, 0.1, 0.6],
        }
    )
    c = curve(trials, ref=(0.0, 1.0), slots=2, gap=0.0)
    assert list(c["wall_s"]) == [4.0, 7.0, 10.0]  # B, C, A end in that order
    # trial-seconds spent by then: at 4, A 4 + B 4; at 7, A 7 + B 4 + C 3; at 10, all
    assert list(c["trial_s"]) == pytest.approx([8.0, 14.0, 17.0])
    # hypervolume: nothing ok; C alone: (1 - 0.6) × 0.8; A and C: A's 0.8 × 0.5 + C's
    # strip above it, 0.4 × (0.8 - 0.5)
    assert list(c["hypervolume"]) == pytest.approx([0.0, 0.32, 0.4 + 0.12])
