"""Write a run directory: the results format, mirrored by :mod:`analysis.rundir` (its reader).

``results.parquet`` holds one row per trial (:func:`trial_rows`: Tune's bookkeeping keys
dropped, the trial's config as dotted-path columns from :func:`trial_columns`) plus the
teacher's row, first columns in a fixed order; ``importance.parquet``, ``agreement.parquet``,
``bad_rows.jsonl`` and ``manifest.json`` sit beside it (:func:`write_outputs`). An ensemble
teacher adds a reference row ``ensemble`` (:mod:`engine.ensemble`).

Every file is written atomically (:mod:`sweepcore.atomic`), ``manifest.json`` last: a run
killed while writing leaves each file absent or whole, never half.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from engine.config import StudyConfig, flatten
from engine.ensemble import ENSEMBLE_ID
from engine.ledger import config_id
from engine.tasks import get_task, metric_columns
from sweepcore.atomic import atomic_path, write_atomic
from sweepcore.rundir import REFERENCE_STATUS, TEACHER_ID

__all__ = [
    "PLACEMENT_COLUMNS",
    "REFERENCE_STATUS",
    "STUDY_FILE",
    "TUNE_KEYS",
    "examples_name",
    "record_study",
    "reference_rows",
    "study_mismatch",
    "trial_columns",
    "trial_rows",
    "tune_failures",
    "tune_unfinished",
    "write_examples",
    "write_outputs",
]

# the study as it started (written before Ray starts; ``--resume`` must match it)
STUDY_FILE = "study.json"
# settings a resumed run may change: where and how wide it runs, not what it computes
RESUMABLE_CHANGES = ("resources.", "threads_per_trial", "search.max_concurrent_trials")


TUNE_KEYS = (
    "trial_id",
    "timestamp",
    "date",
    "time_this_iter_s",
    "pid",
    "hostname",
    "node_ip",
    "time_since_restore",
    "iterations_since_restore",
    "training_iteration",
    "checkpoint_dir_path",
    "done",
    "config",
    "checkpoint_dir_name",
    "experiment_tag",
)


# Where and when each trial ran, so a cluster run says which node did what and which trials
# were retried (written by the trial, engine.trial._placement, except ``retries``):
#   node_id       the Ray node id of the attempt that produced the row
#   started_at    that attempt's start, finished_at its end (Unix seconds, the node's clock)
#   attempts      starts of the trial recorded in trials/<id>.attempts.jsonl (engine.ledger):
#                 1 + retries, plus one per --resume that reran it
#   node_history  the node id of each attempt, oldest first, comma-separated
#   retries       Tune's count of the trial's failures it retried (Trial.num_failures)
PLACEMENT_COLUMNS = (
    "node_id",
    "started_at",
    "finished_at",
    "attempts",
    "node_history",
    "retries",
)


def tune_failures(experiment_path: str) -> dict[str, int]:
    """Tune's failure count of each trial (``Trial.num_failures``, from the experiment state
    Tune saved): how often it was restarted after its worker or node died."""
    from ray.tune import ExperimentAnalysis

    return {t.trial_id: int(t.num_failures) for t in ExperimentAnalysis(experiment_path).trials}


def tune_unfinished(experiment_path: str) -> set[str]:
    """Trials Tune's saved experiment state does not call finished (``TERMINATED``, a
    scheduler's stop included, or ``ERROR``): the ones an interrupt (Ctrl-C) left running or
    waiting."""
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(experiment_path).trials
    return {t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")}


def trial_columns(values: dict[str, Any], study: StudyConfig) -> dict[str, Any]:
    """Config columns named by dotted path: the pipeline and search settings of a trial."""
    from engine.config import with_values

    trial = with_values(study, values).model_dump(mode="json")
    flat = flatten({"pipeline": trial["pipeline"]})
    for key in [*study.search.space, *(k for point in study.search.extra for k in point)]:
        flat[key] = flatten(trial).get(key, values.get(key))
    return {k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in flat.items()}


def trial_rows(cfg: StudyConfig, grid: Any) -> list[dict[str, Any]]:
    """One row per trial (a configuration under one seed).

    ``status``: ``ok`` (ran to its full budget), ``failed`` (raised; ``error`` says why),
    ``stopped`` (cut by the scheduler; the metrics are its last intermediate report) or
    ``interrupted`` (still running when the sweep was interrupted; ``--resume`` continues it).
    """
    from engine.trial import trial_seed

    rows = []
    failures = tune_failures(grid.experiment_path)
    unfinished = tune_unfinished(grid.experiment_path)
    for res in grid:
        config = res.config or {}
        values = config.get("values", {})
        metrics = dict(res.metrics or {})
        row: dict[str, Any] = {
            "trial_id": metrics.get("trial_id") or Path(res.path).name,
            "seed": trial_seed(config, cfg.repeats) if config else None,
            "config_id": config_id(values),
            "iterations": metrics.get("training_iteration"),
        }
        if res.error is not None:
            metrics.update(status="failed", error=f"{type(res.error).__name__}: {res.error}")
        elif "status" not in metrics:
            # a trial that never reported has no trial_id: Tune's folder name holds it
            name = f"_{Path(res.path).name}_"
            cut = row["trial_id"] in unfinished or any(f"_{t}_" in name for t in unfinished)
            status = "interrupted" if cut else "stopped"
            metrics.update(status=status, error=None)
        row["trial_time_s"] = metrics.pop("time_total_s", None)  # Tune's clock, incl. startup
        for k in TUNE_KEYS:
            metrics.pop(k, None)
        row.update(metrics)
        row["retries"] = failures.get(row["trial_id"])
        row.update(trial_columns(values, cfg))
        rows.append(row)
    return rows


def reference_rows(baselines: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per reference baseline of the task (``Task.baselines``' result;
    ``status = "reference"``, ``trial_id`` = the baseline's name: ``majority``,
    ``popularity``, ``global_mean``, ...)."""
    return [
        {"trial_id": name, "status": REFERENCE_STATUS, "error": None, **metric_columns(metrics)}
        for name, metrics in baselines.items()
    ]


def examples_name(split: str, trial_id: str) -> str:
    """Where a model's per-example table of ``split`` goes under the task's examples folder:
    ``<trial_id>`` for the test split, ``<split>/<trial_id>`` for another (``transfer``)."""
    return trial_id if split == "test" else f"{split}/{trial_id}"


def write_examples(run_dir: str | Path, name: str, table: Any, task: Any) -> Path | None:
    """Write one model's per-example table as ``<task.examples_dir>/<name>.parquet``."""
    import pyarrow.parquet as pq

    if table is None or task.examples_dir is None:
        return None
    path = Path(run_dir, task.examples_dir, f"{name}.parquet")
    with atomic_path(path) as tmp:  # never a half-written table under the final name
        pq.write_table(table, tmp)
    return path


def write_outputs(
    cfg: StudyConfig,
    run_dir: Path,
    data: Any,
    art: Any,
    shared: Any,
    rows: list[dict[str, Any]],
    manifest: dict[str, Any],
) -> None:
    import pandas as pd

    from engine.importance.consensus import write_agreement
    from engine.importance.runner import importance_table

    task = get_task(cfg.task)
    splits = {"train": data.train, "valid": data.valid, "test": data.test}
    if getattr(data, "transfer", None) is not None:
        splits["transfer"] = data.transfer
    baselines = task.baselines(splits, data.num_labels)  # scored once: rows and manifest
    references = reference_rows(baselines)
    if art.ensemble is not None:  # teacher.ensemble: the members' mean output as a reference
        references += reference_rows({ENSEMBLE_ID: art.ensemble.metrics})
        test = art.ensemble.outputs["test"]
        write_examples(run_dir, ENSEMBLE_ID, task.example_table(test, splits["test"]), task)
    df = pd.DataFrame([*rows, *references])
    front = ["trial_id", "seed", "status", "error", "wall_s", "device"]
    df = df[[c for c in front if c in df] + [c for c in df.columns if c not in front]]
    with atomic_path(run_dir / "results.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    with atomic_path(run_dir / "importance.parquet") as tmp:
        importance_table(shared.importance).to_parquet(tmp, index=False)
    write_agreement(  # needs ≥ 2 methods; atomic itself
        shared.importance, run_dir / "agreement.parquet", cfg.importance.consensus_threshold
    )
    bad_rows = "".join(json.dumps(bad, default=str) + "\n" for bad in data.bad_rows)
    write_atomic(run_dir / "bad_rows.jsonl", bad_rows)
    manifest["task"] = task.describe()
    manifest["baselines"] = baselines
    manifest["data"] = {
        "corpus": cfg.data.corpus,
        "files": [vars(f) if not hasattr(f, "_asdict") else f._asdict() for f in data.files],
        "stats": data.stats,
        "label_names": data.label_names,
    }
    manifest["teacher"] = {"cache_key": art.key, "cached": art.cached, "metrics": art.metrics}
    if art.ensemble is not None:
        manifest["teacher"]["ensemble"] = art.ensemble.summary()
    trials = (df["trial_id"] != TEACHER_ID) & (df["status"] != REFERENCE_STATUS)
    manifest["trials"] = {
        "total": int(trials.sum()),
        "ok": int(((df["status"] == "ok") & trials).sum()),
        "failed": int((df["status"] == "failed").sum()),
        "stopped": int((df["status"] == "stopped").sum()),
    }
    if (df["status"] == "interrupted").any():
        manifest["trials"]["interrupted"] = int((df["status"] == "interrupted").sum())
    manifest["finished"] = dt.datetime.now(dt.UTC).isoformat()
    # last: a manifest with "finished" means every file above is complete
    write_atomic(run_dir / "manifest.json", json.dumps(manifest, indent=2, default=str))


def record_study(run_dir: Path, cfg: StudyConfig) -> None:
    """Write ``run_dir/study.json``: the study's settings as the run starts."""
    text = json.dumps(cfg.model_dump(mode="json"), indent=1, sort_keys=True)
    write_atomic(run_dir / STUDY_FILE, text + "\n")


def study_mismatch(run_dir: Path, cfg: StudyConfig) -> str | None:
    """Why ``--resume`` of ``run_dir`` with ``cfg`` would mix two studies in one results file
    (one line), or None: every setting but where and how wide it runs
    (:data:`RESUMABLE_CHANGES`) must equal the recorded ``study.json``. A run without the
    file (written before it existed) is not checked."""
    try:
        recorded = json.loads((run_dir / STUDY_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return f"--resume: {run_dir / STUDY_FILE} cannot be read ({e})"
    old, new = flatten(recorded), flatten(cfg.model_dump(mode="json"))
    differ = sorted(
        k
        for k in old.keys() | new.keys()
        if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES)
    )
    if not differ:
        return None
    shown = ", ".join(f"{k} {old.get(k)!r} → {new.get(k)!r}" for k in differ[:3])
    more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
    return (
        f"--resume: {run_dir} is a run of study {recorded.get('name')!r} with other settings "
        f"({shown}{more}): resume it with the study and overrides it started with"
    )
