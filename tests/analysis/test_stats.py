"""analysis.stats: per-configuration summaries over seeds against a hand t-interval."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.stats import summarize, t_interval

# ----------------------------------------------------------------------------- stats


def test_summarize_groups_seeds_with_t_interval() -> None:
    df = pd.DataFrame(
        {
            "trial_id": ["teacher", "t0", "t1", "t2", "t3", "t4", "t5"],
            "seed": [0, 0, 1, 2, 0, 1, 2],
            "status": ["ok", "ok", "ok", "ok", "ok", "failed", "stopped"],
            "pipeline.truncate.strategy": [
                "fisher",
                "fisher",
                "fisher",
                "fisher",
                "uniform",
                "uniform",
                "uniform",
            ],
            "accuracy": [0.9, 0.60, 0.70, 0.80, 0.50, np.nan, 0.55],
        }
    )
    out = summarize(df, metrics=["accuracy"]).set_index("pipeline.truncate.strategy")
    fisher = out.loc["fisher"]
    assert fisher["n"] == 3 and fisher["n_failed"] == 0  # the teacher row is not a seed
    assert fisher["accuracy_mean"] == pytest.approx(0.70)
    assert fisher["accuracy_std"] == pytest.approx(0.10)
    half = 4.302652729911275 * 0.10 / math.sqrt(3)  # t_{0.975, 2} from tables
    assert fisher["accuracy_ci_low"] == pytest.approx(0.70 - half)
    assert fisher["accuracy_ci_high"] == pytest.approx(0.70 + half)
    uniform = out.loc["uniform"]
    # a trial the scheduler stopped early is neither a failure nor a seed of the statistics
    assert (uniform["n"], uniform["n_failed"], uniform["n_stopped"]) == (1, 1, 1)
    assert uniform["accuracy_mean"] == pytest.approx(0.50)
    assert math.isnan(uniform["accuracy_ci_low"])
    assert all(math.isnan(v) for v in t_interval([1.0]))
