"""Read a run directory (the public contract the engine writes) into one object.

Files: ``results.parquet`` (one row per trial plus the ``teacher`` row), optional
``importance.parquet`` and ``manifest.json``. Config columns are the dotted-path columns
(``pipeline.truncate.strategy``); metric columns have plain names (``accuracy``, ``gflops``).
The manifest's ``task`` entry names the study's task and its quality metrics with their
directions (``{"accuracy": "max", ...}``); runs written before it existed are classification
runs (:data:`CLASSIFICATION_METRICS`). The engine writes each file atomically; a damaged one
(e.g. truncated by a copy) raises :class:`RunDirError` naming it, never a half-parsed table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sweepcore.rundir import (
    KD_COL,
    KEPT_LAYERS_COL,
    ORDER_COL,
    REFERENCE_STATUS,
    STRATEGY_COL,
    TEACHER_ID,
    schema_problem,
)

__all__ = [
    "CLASSIFICATION_METRICS",
    "COST_DIRECTIONS",
    "KD_COL",
    "KEPT_LAYERS_COL",
    "METRIC_COLUMNS",
    "ORDER_COL",
    "REFERENCE_STATUS",
    "STRATEGY_COL",
    "TEACHER_ID",
    "RunData",
    "RunDirError",
    "applied",
    "better_first",
    "blank_unapplied",
    "config_columns",
    "load_run",
    "stage_of",
    "student_kind",
    "students",
    "varying_config_columns",
]

# The shared names (TEACHER_ID, REFERENCE_STATUS: rows :func:`load_run` moves to
# :attr:`RunData.references`, out of the trials; ORDER_COL, STRATEGY_COL, KD_COL,
# KEPT_LAYERS_COL) are the run-directory contract's, sweepcore/rundir.py.
METRIC_COLUMNS = (
    "accuracy",
    "macro_f1",
    "gflops",
    "params",
    "weights_bytes",
    "latency_ms_p50",
    "latency_ms_p95",
    "student_layers",
)

# quality metrics of runs whose manifest predates manifest["task"] (all rating classification)
CLASSIFICATION_METRICS = {"accuracy": "max", "macro_f1": "max"}
# cost columns every run reports, whatever the task: lower is better
COST_DIRECTIONS = {
    "gflops": "min",
    "params": "min",
    "weights_bytes": "min",
    "latency_ms_p50": "min",
    "latency_ms_p95": "min",
}


def better_first(direction: str) -> bool:
    """``ascending`` for a sort that puts the best value of a ``"max"``/``"min"`` metric first."""
    return direction == "min"


def config_columns(df: pd.DataFrame) -> list[str]:
    """Dotted-path columns, in table order: the knobs a trial's result depends on."""
    return [c for c in df.columns if "." in str(c)]


def students(df: pd.DataFrame) -> pd.DataFrame:
    """All rows except the teacher's (and any reference row left in ``df``)."""
    if "status" in df:
        df = df[df["status"].astype(str) != REFERENCE_STATUS]
    if "trial_id" not in df:
        return df
    return df[df["trial_id"].astype(str) != TEACHER_ID]


def varying_config_columns(df: pd.DataFrame) -> list[str]:
    """Config columns that take more than one value across the (non-teacher) trials where
    they took effect (:func:`applied`): a stage's setting recorded by trials that never ran
    the stage does not make it vary."""
    rows = students(df)
    return [
        c
        for c in config_columns(df)
        if rows.loc[applied(rows, c), c].astype(str).nunique(dropna=False) > 1
    ]


def stage_of(column: str) -> str | None:
    """The pipeline stage a config column belongs to (``pipeline.<stage>.<key>``), else None
    (``pipeline.order`` itself, ``data.*``, ``teacher.*``, ...)."""
    parts = str(column).split(".")
    return parts[1] if len(parts) >= 3 and parts[0] == "pipeline" else None


def _stages(order: Any) -> list[str]:
    if isinstance(order, str):
        return [s.strip() for s in order.split(",") if s.strip()]
    if isinstance(order, list | tuple) or hasattr(order, "tolist"):
        return [str(s) for s in list(order)]
    return []  # missing (the teacher row): no stage ran


def applied(df: pd.DataFrame, column: str) -> pd.Series:
    """Per row, whether ``column``'s setting took effect: its stage is in the row's
    ``pipeline.order``. A column of no stage, or a table without the order, always does."""
    stage = stage_of(column)
    if stage is None or ORDER_COL not in df:
        return pd.Series(True, index=df.index)
    return df[ORDER_COL].map(lambda order: stage in _stages(order)).astype(bool)


def student_kind(order: Any, strategy: Any = None) -> str:
    """What a student is, from the stages that ran (``pipeline.order``) and the layer
    selection where ``truncate`` ran: "depth (fisher)", "width (pruned)", "depth (uniform) +
    width (pruned)", other stages by name ("… + quantize", "early exit"); "distilled, full
    size" when only distillation ran."""
    stages = _stages(order)
    parts = []
    if "truncate" in stages:
        known = strategy is not None and not (isinstance(strategy, float) and strategy != strategy)
        parts.append(f"depth ({strategy})" if known else "depth")
    if "prune" in stages:
        parts.append("width (pruned)")
    parts += [s.replace("_", " ") for s in stages if s not in ("truncate", "prune", "distill")]
    return " + ".join(parts) or "distilled, full size"


def blank_unapplied(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """A copy of ``df`` with each of ``columns`` blank (None) in the rows where it did not take
    effect (:func:`applied`): a table shows a stage's setting only where the stage ran."""
    out = df.copy()
    for c in columns:
        if c not in out:
            continue
        off = ~applied(out, c)
        if off.any():
            out[c] = out[c].astype(object)
            out.loc[off, c] = None
    return out


@dataclass(frozen=True)
class RunData:
    """Everything the report reads from one run directory."""

    run_dir: Path
    results: pd.DataFrame
    importance: pd.DataFrame | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    #: the task's reference rows (``status = "reference"``: popularity, majority, ...)
    references: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config") or {}

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.run_dir.name)

    @property
    def description(self) -> str:
        return str(self.config.get("description") or "")

    @property
    def task(self) -> dict[str, Any]:
        """The manifest's ``task`` entry (name, metrics with directions, default objectives)."""
        return self.manifest.get("task") or {}

    @property
    def quality_metrics(self) -> dict[str, str]:
        """The task's quality metrics → ``"max"``/``"min"`` (classification for old runs)."""
        return dict(self.task.get("metrics") or CLASSIFICATION_METRICS)

    @property
    def metric_directions(self) -> dict[str, str]:
        """Every metric column's direction: the task's quality metrics and the cost columns."""
        return {**self.quality_metrics, **COST_DIRECTIONS}

    @property
    def quality_metric(self) -> str:
        default = self.task.get("quality_metric") or next(iter(self.quality_metrics))
        return str((self.config.get("report") or {}).get("quality_metric") or default)

    @property
    def quality_direction(self) -> str:
        """Whether more of :attr:`quality_metric` is better (``"max"``) or less (``"min"``)."""
        return self.metric_directions.get(self.quality_metric, "max")

    @property
    def cost_metric(self) -> str:
        return str((self.config.get("report") or {}).get("cost_metric") or "gflops")

    @property
    def seq_len(self) -> int | None:
        value = (self.config.get("data") or {}).get("max_length")
        return int(value) if value is not None else None


class RunDirError(ValueError):
    """A run-directory file exists but cannot be read (damaged or not what it claims)."""


def _read(path: Path, read: Callable[[Path], Any]) -> Any:
    try:
        return read(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid and JSONDecodeError are both
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RunDirError(f"{path} cannot be read: {first}") from e


def load_run(run_dir: Path | str) -> RunData:
    """Load ``run_dir``; only ``results.parquet`` is required."""
    run_dir = Path(run_dir)
    results_path = run_dir / "results.parquet"
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path} not found: is {run_dir} a run directory?")
    results = _read(results_path, pd.read_parquet)
    if "trial_id" in results:
        results["trial_id"] = results["trial_id"].astype(str)
    references = results.iloc[:0]
    if "status" in results:
        is_ref = results["status"].astype(str) == REFERENCE_STATUS
        references, results = results[is_ref].reset_index(drop=True), results[~is_ref]
        results = results.reset_index(drop=True)
    imp_path = run_dir / "importance.parquet"
    importance = _read(imp_path, pd.read_parquet) if imp_path.is_file() else None
    man_path = run_dir / "manifest.json"
    manifest = _read(man_path, lambda p: json.loads(p.read_text())) if man_path.is_file() else {}
    if (problem := schema_problem(manifest, str(man_path))) is not None:
        raise RunDirError(problem)
    return RunData(
        run_dir=run_dir,
        results=results,
        importance=importance,
        manifest=manifest,
        references=references,
    )
