"""Analysis of a finished run directory: Pareto front, across-seed statistics, plots, report.

Reads only the run-directory files (``results.parquet``, ``importance.parquet``,
``manifest.json``); imports neither Ray nor anything that needs a GPU. Entry point::

    python -m analysis.report RUN_DIR   # writes report.md / report.html / *.png, prints the path
"""

from __future__ import annotations

from analysis.frontier import config_front, hypervolume_2d, pareto_front, pareto_mask, seed_means
from analysis.rundir import RunData, load_run
from analysis.stats import summarize, t_interval

__all__ = [
    "RunData",
    "config_front",
    "hypervolume_2d",
    "load_run",
    "pareto_front",
    "pareto_mask",
    "seed_means",
    "summarize",
    "t_interval",
]
