"""Write ``report.md`` and ``report.html`` (plus PNGs) into a run directory.

Reads only the run-directory files (:mod:`analysis.rundir`); needs no Ray and no GPU.
Failed trials (NaN metrics) and an all-failed run are reported, never crash the report.

Usage: ``python -m analysis.report RUN_DIR`` prints the path of ``report.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from analysis.arms import arm_blocks
from analysis.frontier import config_front, hypervolume_2d
from analysis.importance import agreement_blocks, downstream_blocks, importance_blocks
from analysis.latency import latency_blocks, latency_note
from analysis.plots import PLOTS, aggregation_caption
from analysis.ranking import ranking_blocks, retention_blocks, transfer_blocks
from analysis.render import (
    Block,
    Code,
    Heading,
    Image,
    Para,
    Table,
    column_table,
    format_table,
    interval_cells,
    short_name,
    to_html,
    to_markdown,
)
from analysis.report_answer import answer_blocks
from analysis.rundir import (
    ORDER_COL,
    TEACHER_ID,
    RunData,
    RunDirError,
    better_first,
    blank_unapplied,
    load_run,
    students,
    varying_config_columns,
)
from analysis.sensitivity import sensitivity_blocks
from analysis.stats import summarize
from sweepcore.atomic import write_atomic

__all__ = ["build_blocks", "main", "write_report"]

SECTION_PLOTS = ("pareto", "importance", "agreement", "sensitivity")  # placed in their own sections
# How the report names a task's reference rows (manifest["baselines"]); others: "<name> baseline"
BASELINE_LABELS = {
    "majority": "majority class (of train)",
    "popularity": "popularity (most frequent training targets)",
    "global_mean": "global mean rating (of train)",
    "bias_mf": "user + item bias model (of train)",
}
PARETO_COSTS = ("gflops", "params", "latency_ms_p50")  # shown beside the task's quality metrics


def _blank_teacher(df: pd.DataFrame, varying: list[str]) -> pd.DataFrame:
    """The teacher row carries the study defaults in its config columns; they do not apply."""
    if "trial_id" not in df or not varying:
        return df
    df = df.copy()
    df[varying] = df[varying].astype(object)
    df.loc[df["trial_id"] == TEACHER_ID, varying] = None
    return df


def _header(run: RunData) -> list[Block]:
    man, df = run.manifest, run.results
    trials = students(df)
    status = trials.get("status", pd.Series(dtype=str))
    ok = int((status == "ok").sum())
    stopped = int((status == "stopped").sum())
    cut = int((status == "interrupted").sum())
    seeds = man.get("seeds", sorted(df["seed"].dropna().unique().tolist()) if "seed" in df else [])
    info = [
        f"Run directory: `{run.run_dir}`",
        f"git commit `{man.get('git_commit', '?')}`",
        f"started {man.get('started', '?')}, finished {man.get('finished', '?')}",
        f"seeds {list(seeds)}",
        f"trials: {len(trials)} ({ok} ok, {stopped} stopped early by the scheduler, "
        + (f"{cut} interrupted, " if cut else "")
        + f"{len(trials) - ok - stopped - cut} failed)",
    ]
    blocks: list[Block] = [Heading(f"Compression study: {run.name}", 1)]
    if run.description:
        blocks.append(Para(run.description))
    if (stop := man.get("interrupted")) is not None:
        blocks.append(
            Para(
                f"This run was interrupted (Ctrl-C): {stop.get('finished', '?')} of "
                f"{stop.get('planned', '?')} trials finished, and the figures below cover only "
                f"those. Continue it with: {stop.get('resume', '--resume --out ' + str(run.run_dir))}"
            )
        )
    blocks.append(Para("; ".join(info) + "."))
    return blocks


def _teacher(run: RunData) -> list[Block]:
    df = run.results
    rows: list[dict[str, object]] = []
    teacher = df[df["trial_id"] == TEACHER_ID] if "trial_id" in df else df.iloc[:0]
    quality_cols = list(run.quality_metrics)
    metric_cols = [*quality_cols, "gflops", "params", "weights_bytes", "latency_ms_p50"]
    for _, t in teacher.iterrows():
        rows.append({"model": "teacher", **{c: t.get(c) for c in metric_cols}})
    ensemble = (run.manifest.get("teacher") or {}).get("ensemble")
    if ensemble:  # teacher.ensemble: the members' mean output (students distil from it)
        label = f"ensemble teacher (mean output of {ensemble['size']} members)"
        rows.append({"model": label, **{m: ensemble["metrics"].get(m) for m in quality_cols}})
    for name, metrics in (run.manifest.get("baselines") or {}).items():
        if metrics:
            label = BASELINE_LABELS.get(name, f"{name} baseline")
            rows.append({"model": label, **{m: metrics.get(m) for m in quality_cols}})
    blocks: list[Block] = [Heading("Teacher and baseline")]
    if not rows:
        return [*blocks, Para("No teacher row and no baseline in this run.")]
    table = pd.DataFrame(rows)
    blocks.append(column_table(table, ["model", *metric_cols]))
    training = ((run.manifest.get("teacher") or {}).get("metrics") or {}).get("training")
    if training:
        blocks.append(Para(_training_text(training)))
    return blocks


def _training_text(t: dict) -> str:
    """How an early-stopped teacher trained (``manifest["teacher"]["metrics"]["training"]``)."""
    how = (
        f"stopped early after {t['epochs_run']:g} of a budget of {t['budget_epochs']:g} epochs"
        f" ({t['steps_run']} of {t['budget_steps']} steps)"
        if t["stopped_early"]
        else f"trained its whole budget of {t['budget_epochs']:g} epochs ({t['budget_steps']} steps)"
    )
    kept = (
        f"the weights of step {t['best_step']} (epoch {t['best_epoch']:g}) are kept, the best "
        f"{t['selection_metric']} ({t['best_value']:.4f}) of {len(t['evaluations'])} "
        f"evaluations on {t['selection_examples']} validation rows"
        if t.get("best_step") is not None
        else "no evaluation gave a finite score: the last weights are kept"
    )
    return (
        f"Teacher training: {how}; {kept} (early stopping, patience {t['patience']} "
        f"evaluations, one every {t['eval_every_steps']} steps)."
    )


def _results(run: RunData, varying: list[str], quality: str, cost: str) -> list[Block]:
    cols = [
        "trial_id",
        "seed",
        *varying,
        *run.quality_metrics,
        quality,
        "gflops",
        cost,
        "params",
        "latency_ms_p50",
        "status",
    ]
    return [
        Heading("Results (one row per trial)"),
        column_table(_blank_teacher(blank_unapplied(run.results, varying), varying), cols),
    ]


def _summary(run: RunData, varying: list[str], quality: str, cost: str) -> list[Block]:
    metrics = [m for m in dict.fromkeys([*run.quality_metrics, quality, cost]) if m in run.results]
    summ = summarize(run.results, by=varying, metrics=metrics)
    blocks: list[Block] = [
        Heading("Across seeds"),
        Para(
            "Mean, sample std and 95 % Student-t interval over the successful seeds of each "
            "config (interval shown as — with fewer than 2 seeds)."
        ),
    ]
    if summ.empty or (summ["n"] == 0).all():
        return [*blocks, Para("No successful trials.")]
    cols = [*varying, "n", "n_failed"] + (["n_stopped"] if summ["n_stopped"].any() else [])
    keep = [*cols, *([ORDER_COL] if ORDER_COL in summ and ORDER_COL not in cols else [])]
    show = blank_unapplied(summ[keep], varying)
    show = show[cols]
    for m in metrics:
        show[f"{m}_mean"] = summ[f"{m}_mean"]
        show[f"{m}_std"] = summ[f"{m}_std"]
        if m in (*run.quality_metrics, quality):
            show[f"{m}_ci95"] = interval_cells(summ[f"{m}_ci_low"], summ[f"{m}_ci_high"])
    return [*blocks, Table(format_table(show, {c: short_name(c) for c in varying}))]


def _objectives_text(objectives: list[tuple[str, str]]) -> str:
    return ", ".join(f"{m} ({d})" for m, d in objectives)


def _pareto(
    run: RunData, varying: list[str], quality: str, cost: str, images: dict[str, Path]
) -> list[Block]:
    """The Pareto set of seed-averaged configurations (:func:`config_front`, the definition of
    ``on_front``): table, hypervolume and figure all from the same means."""
    df = run.results
    direction = run.quality_direction
    up = "up" if direction == "max" else "down"
    blocks: list[Block] = [Heading(f"Pareto set ({quality} {up}, {cost} down)")]
    if quality not in df or cost not in df:
        return [*blocks, Para(f"Columns {quality!r} / {cost!r} are missing from the results.")]
    objectives = [(quality, direction), (cost, "min")]
    shown = [
        m for m in (*run.quality_metrics, *PARETO_COSTS) if m in df and m not in (quality, cost)
    ]
    configs = config_front(df, objectives, shown)
    front = configs[configs["on_front"]]
    front = front.sort_values(
        [cost, quality], ascending=[True, better_first(direction)], kind="stable"
    )
    if front.empty:
        blocks.append(Para("No successful configurations with finite metrics: no Pareto set."))
    else:
        search = [
            (str(o.get("metric")), str(o.get("mode")))
            for o in (run.config.get("search") or {}).get("objectives") or []
        ]
        if not search or search == objectives:
            same = "the same definition as the `on_front` column of results.parquet"
        else:
            same = (
                "the definition of the `on_front` column of results.parquet, which applies it "
                f"to the search objectives {_objectives_text(search)} instead, so the two sets "
                "can differ"
            )
        blocks.append(
            Para(
                f"{len(front)} non-dominated of {len(configs)} configurations, cheapest first "
                "(the teacher is the reference, not a configuration). "
                f"{aggregation_caption(configs)} The table, the hypervolume and the figure use "
                f"these per-configuration means: {same}."
            )
        )
        table = blank_unapplied(front, varying)
        table["seeds"] = table["n_seeds"]
        columns = ["config_id", *varying, "seeds", quality, f"{quality} seed min–max", cost]
        table[f"{quality} seed min–max"] = interval_cells(
            table[f"{quality}_min"].rename(quality), table[f"{quality}_max"].rename(quality)
        )
        if (configs[f"{cost}_max"] > configs[f"{cost}_min"]).any():
            table[f"{cost} seed min–max"] = interval_cells(
                table[f"{cost}_min"].rename(cost), table[f"{cost}_max"].rename(cost)
            )
            columns.append(f"{cost} seed min–max")
        blocks.append(column_table(table, [*columns, *shown]))
        # the reference corner: the task's first baseline that reports the quality metric
        baseline, base_value = next(
            (
                (name, metrics[quality])
                for name, metrics in (run.manifest.get("baselines") or {}).items()
                if (metrics or {}).get(quality) is not None
            ),
            (None, None),
        )
        ok = df[df["status"] == "ok"] if "status" in df else df
        teacher = ok[ok["trial_id"] == TEACHER_ID][cost] if "trial_id" in ok else pd.Series()
        if base_value is not None and len(teacher):
            ref = (float(base_value), float(teacher.iloc[0]))
            points = configs[[quality, cost]].to_numpy(float)
            if direction == "min":  # hypervolume_2d counts quality upwards: flip a "min" one
                points[:, 0], ref = -points[:, 0], (-ref[0], ref[1])
            hv = hypervolume_2d(points, ref)
            side = "above" if direction == "max" else "below"
            blocks.append(
                Para(
                    f"Student hypervolume: {hv:.4g} ({quality} × {cost} area dominated by the "
                    f"configurations' means, {side} the {baseline} baseline {float(base_value):.4f} "
                    "and below "
                    f"the teacher's {cost} {ref[1]:.4g})."
                )
            )
    if "pareto" in images and not configs.empty:
        blocks.append(Para("The figure of these configurations leads the Answer above."))
    return blocks


def _failures(run: RunData, varying: list[str]) -> list[Block]:
    df = run.results
    # stopped = cut short by the scheduler on purpose, interrupted = by Ctrl-C: not failures
    done = ["ok", "stopped", "interrupted"]
    failed = df[~df["status"].isin(done)] if "status" in df else df.iloc[:0]
    blocks: list[Block] = [Heading("Failed trials")]
    if failed.empty:
        return [*blocks, Para("None.")]
    shown = blank_unapplied(failed, varying)
    errors = shown["error"].fillna("") if "error" in shown else pd.Series("", shown.index)
    shown["error"] = [(str(e).strip().splitlines() or ["(no message)"])[-1][:200] for e in errors]
    blocks.append(column_table(shown, ["trial_id", "seed", *varying, "status", "error"]))
    for tid, err in zip(shown.get("trial_id", shown.index), errors, strict=True):
        if str(err).strip():
            blocks.append(Para(f"`{tid}`:"))
            blocks.append(Code("\n".join(str(err).strip().splitlines()[-25:])))
    return blocks


def build_blocks(run: RunData, images: dict[str, Path]) -> list[Block]:
    """The report's content, section by section."""
    quality, cost = run.quality_metric, run.cost_metric
    varying = varying_config_columns(run.results)
    seq = run.seq_len
    seq_text = f"S = {seq} (`data.max_length`)" if seq else "S (`data.max_length`)"
    retention = retention_blocks(run)  # ranking runs: retention with users resampled
    blocks = [
        *_header(run),
        *answer_blocks(run, varying, quality, cost, users_resampled=bool(retention), images=images),
        *_teacher(run),
        *ranking_blocks(run),
        *retention,
        *transfer_blocks(run),
        *_results(run, varying, quality, cost),
        *_summary(run, varying, quality, cost),
        *latency_blocks(run),
        *sensitivity_blocks(run, images),
        *arm_blocks(run),
        *_pareto(run, varying, quality, cost, images),
        *importance_blocks(run, images),
        *agreement_blocks(run, images),
        *downstream_blocks(run, varying, quality),
        *_failures(run, varying),
    ]
    extra = [name for name in images if name not in SECTION_PLOTS]
    if extra:
        blocks.append(Heading("More plots"))
        blocks += [Image(images[name].name, name) for name in extra]
    blocks += [
        Heading("Notes"),
        Para(
            "GFLOPs = 2 × multiply-adds counted by fvcore on the built model, per example at "
            f"sequence length {seq_text}; matmul-class ops only (linear layers and attention "
            "QKᵀ/AV), norms and activations excluded. " + latency_note(run)
        ),
    ]
    return blocks


def write_report(run_dir: Path) -> Path:
    """Write ``report.md``, ``report.html`` and the plots into ``run_dir``; return the .md."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    images: dict[str, Path] = {}
    for name in PLOTS:
        path = PLOTS.get(name)(run, run_dir)
        if path is not None:
            images[name] = path
    blocks = build_blocks(run, images)
    md = run_dir / "report.md"
    write_atomic(md, to_markdown(blocks))
    html = to_html(blocks, f"Compression study: {run.name}", base=run_dir)  # images inlined
    write_atomic(run_dir / "report.html", html)
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a run directory with results.parquet")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.run_dir)
    except (FileNotFoundError, RunDirError) as e:  # no run directory, or a damaged file in it
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
