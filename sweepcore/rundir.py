"""The run directory's shared names: what the engine writes and the analysis reads, defined once.

Both sides import these (neither imports the other): the teacher's ``trial_id``, the status
of the task's reference rows, the results columns the analysis groups by, and the schema
version every ``manifest.json`` carries (``manifest["schema"]``). A run written by a newer
engine (a larger schema) is refused by the analysis with one line
(:func:`schema_problem`); a run from before the version was written counts as schema 1.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "KD_COL",
    "KEPT_LAYERS_COL",
    "ORDER_COL",
    "REFERENCE_STATUS",
    "SCHEMA_VERSION",
    "STRATEGY_COL",
    "TEACHER_ID",
    "schema_problem",
]

SCHEMA_VERSION = 1  # raise it when a file or column changes meaning
TEACHER_ID = "teacher"  # the teacher's row in results.parquet (and its latency/example files)
# the status of the task's reference rows (no model: popularity, majority, global mean, ...)
REFERENCE_STATUS = "reference"
# results columns the analysis groups and labels by: each trial's stages in order (comma-
# joined), the layer-selection strategy, distillation on/off, and the layers a student kept
ORDER_COL = "pipeline.order"
STRATEGY_COL = "pipeline.truncate.strategy"
KD_COL = "pipeline.distill.kd"
KEPT_LAYERS_COL = "kept_layers"


def schema_problem(manifest: dict[str, Any], where: str) -> str | None:
    """One line when ``manifest`` was written by a newer engine than this code reads."""
    found = manifest.get("schema", 1)
    if not isinstance(found, int) or found > SCHEMA_VERSION:
        return (
            f"{where}: written with run-directory schema {found!r}, newer than this version "
            f"reads ({SCHEMA_VERSION}); read it with the version that wrote it"
        )
    return None
