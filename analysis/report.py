"""Write ``report.md`` and ``report.html`` (plus PNGs) into a run directory.

Reads only the run-directory files (:mod:`analysis.rundir`); needs no Ray and no GPU.
Failed trials (NaN metrics) and an all-failed run are reported, never crash the report.

Usage: ``python -m analysis.report RUN_DIR`` prints the path of ``report.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from analysis.arms import arm_blocks
from analysis.frontier import config_front, hypervolume_2d
from analysis.latency import latency_blocks, latency_note
from analysis.plots import PLOTS, aggregation_caption
from analysis.render import (
    Block,
    Code,
    Heading,
    Image,
    Para,
    Table,
    format_table,
    interval_cells,
    to_html,
    to_markdown,
)
from analysis.rundir import TEACHER_ID, RunData, load_run, students, varying_config_columns
from analysis.sensitivity import sensitivity_blocks
from analysis.stats import summarize

__all__ = ["build_blocks", "main", "write_report"]

SECTION_PLOTS = ("pareto", "importance", "agreement", "sensitivity")  # placed in their own sections
STRATEGY_COL = "pipeline.truncate.strategy"
BASELINE_STRATEGIES = ("uniform", "first_last", "random")
PARETO_METRICS = ("accuracy", "macro_f1", "gflops", "params", "latency_ms_p50")


def _short(col: str) -> str:
    return col.removeprefix("pipeline.")


def _cols(df: pd.DataFrame, wanted: list[str]) -> list[str]:
    return [c for c in dict.fromkeys(wanted) if c in df]


def _table(df: pd.DataFrame, cols: list[str]) -> Table:
    cols = _cols(df, cols)
    return Table(format_table(df[cols], {c: _short(c) for c in cols}))


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
    ok = int((trials.get("status", pd.Series(dtype=str)) == "ok").sum())
    stopped = int((trials.get("status", pd.Series(dtype=str)) == "stopped").sum())
    seeds = man.get("seeds", sorted(df["seed"].dropna().unique().tolist()) if "seed" in df else [])
    info = [
        f"Run directory: `{run.run_dir}`",
        f"git commit `{man.get('git_commit', '?')}`",
        f"started {man.get('started', '?')}, finished {man.get('finished', '?')}",
        f"seeds {list(seeds)}",
        f"trials: {len(trials)} ({ok} ok, {stopped} stopped early, "
        f"{len(trials) - ok - stopped} failed)",
    ]
    blocks: list[Block] = [Heading(f"Compression study: {run.name}", 1)]
    if run.description:
        blocks.append(Para(run.description))
    blocks.append(Para("; ".join(info) + "."))
    return blocks


def _teacher(run: RunData) -> list[Block]:
    df = run.results
    rows: list[dict[str, object]] = []
    teacher = df[df["trial_id"] == TEACHER_ID] if "trial_id" in df else df.iloc[:0]
    metric_cols = ["accuracy", "macro_f1", "gflops", "params", "weights_bytes", "latency_ms_p50"]
    for _, t in teacher.iterrows():
        rows.append({"model": "teacher", **{c: t.get(c) for c in metric_cols}})
    majority = (run.manifest.get("baselines") or {}).get("majority")
    if majority:
        rows.append(
            {
                "model": "majority class (of train)",
                "accuracy": majority.get("accuracy"),
                "macro_f1": majority.get("macro_f1"),
            }
        )
    blocks: list[Block] = [Heading("Teacher and baseline")]
    if not rows:
        return [*blocks, Para("No teacher row and no baseline in this run.")]
    table = pd.DataFrame(rows)
    return [*blocks, _table(table, ["model", *metric_cols])]


def _results(run: RunData, varying: list[str], quality: str, cost: str) -> list[Block]:
    cols = [
        "trial_id",
        "seed",
        *varying,
        "accuracy",
        "macro_f1",
        quality,
        "gflops",
        cost,
        "params",
        "latency_ms_p50",
        "status",
    ]
    return [
        Heading("Results (one row per trial)"),
        _table(_blank_teacher(run.results, varying), cols),
    ]


def _summary(run: RunData, varying: list[str], quality: str, cost: str) -> list[Block]:
    metrics = [
        m for m in dict.fromkeys(["accuracy", "macro_f1", quality, cost]) if m in run.results
    ]
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
    show = summ[[*varying, "n", "n_failed"]].copy()
    for m in metrics:
        show[f"{m}_mean"] = summ[f"{m}_mean"]
        show[f"{m}_std"] = summ[f"{m}_std"]
        if m in ("accuracy", "macro_f1", quality):
            show[f"{m}_ci95"] = interval_cells(summ[f"{m}_ci_low"], summ[f"{m}_ci_high"])
    return [*blocks, Table(format_table(show, {c: _short(c) for c in varying}))]


def _objectives_text(objectives: list[tuple[str, str]]) -> str:
    return ", ".join(f"{m} ({d})" for m, d in objectives)


def _pareto(
    run: RunData, varying: list[str], quality: str, cost: str, images: dict[str, Path]
) -> list[Block]:
    """The Pareto set of seed-averaged configurations (:func:`config_front`, the definition of
    ``on_front``): table, hypervolume and figure all from the same means."""
    df = run.results
    blocks: list[Block] = [Heading(f"Pareto set ({quality} up, {cost} down)")]
    if quality not in df or cost not in df:
        return [*blocks, Para(f"Columns {quality!r} / {cost!r} are missing from the results.")]
    objectives = [(quality, "max"), (cost, "min")]
    shown = [m for m in PARETO_METRICS if m in df and m not in (quality, cost)]
    configs = config_front(df, objectives, shown)
    front = configs[configs["on_front"]]
    front = front.sort_values([cost, quality], ascending=[True, False], kind="stable")
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
        table = front.copy()
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
        blocks.append(_table(table, [*columns, *shown]))
        majority = ((run.manifest.get("baselines") or {}).get("majority") or {}).get(quality)
        ok = df[df["status"] == "ok"] if "status" in df else df
        teacher = ok[ok["trial_id"] == TEACHER_ID][cost] if "trial_id" in ok else pd.Series()
        if majority is not None and len(teacher):
            ref = (float(majority), float(teacher.iloc[0]))
            hv = hypervolume_2d(configs[[quality, cost]].to_numpy(float), ref)
            blocks.append(
                Para(
                    f"Student hypervolume: {hv:.4g} ({quality} × {cost} area dominated by the "
                    f"configurations' means, above the majority baseline {ref[0]:.4f} and below "
                    f"the teacher's {cost} {ref[1]:.4g})."
                )
            )
    if "pareto" in images:
        blocks.append(Image(images["pareto"].name, f"{quality} vs {cost}"))
        if not configs.empty:
            blocks.append(Para(f"Figure: {aggregation_caption(configs, figure=True)}"))
    return blocks


def _interval_note(g: pd.DataFrame, level: float) -> str:
    """What one method's intervals resampled, and whether there were enough units."""
    if "ci_unit" not in g or g["ci_low"].isna().all():
        return "No interval (fewer than 2 resampling units)." if "ci_unit" in g else ""
    unit, n = str(g["ci_unit"].iloc[0]), int(g["ci_units"].iloc[0])
    units = {"example": "examples", "batch": "calibration batches"}.get(unit, unit)
    text = f"Interval: {level:.0%} BCa bootstrap over {n} {units}"
    if not bool(g["ci_reliable"].iloc[0]):
        return (
            f"{text} — **unreliable**: too few {units} for the interval to reach its nominal "
            "coverage (see `importance.ci_min_examples` / `ci_min_batches`)."
        )
    return f"{text}."


def consensus_members(run: RunData) -> list[str]:
    """The methods the ``consensus`` score averages, from the run's config (engine default
    when the config predates the key)."""
    imp = run.config.get("importance") or {}
    default = ["fisher", "gradient", "taylor", "ablation", "block_influence"]
    return list(imp.get("consensus_methods") or default)


def _importance(run: RunData, images: dict[str, Path]) -> list[Block]:
    imp = run.importance
    if imp is None or imp.empty:
        return []
    level = float((run.config.get("importance") or {}).get("ci_level", 0.95))
    blocks: list[Block] = [
        Heading("Layer importance"),
        Para(
            "Per method: score (higher = more important to keep), rank (0 = most important) "
            "and the score's interval. Methods whose score is a mean of per-example "
            "contributions resample examples; the others (defined on whole batches) resample "
            "calibration batches."
        ),
    ]
    for method, g in imp.groupby("method", sort=True):
        blocks.append(Heading(f"{method}", 3))
        if method == "consensus":
            blocks.append(
                Para(f"Mean rank-normalised score of: {', '.join(consensus_members(run))}.")
            )
        note = _interval_note(g, level)
        if note:
            blocks.append(Para(note))
        blocks.append(
            _table(g.sort_values("rank"), ["layer", "rank", "score", "ci_low", "ci_high"])
        )
    if "importance" in images:
        blocks.append(Image(images["importance"].name, "rank-normalised layer importance"))
    return blocks


def _load_agreement(run: RunData) -> pd.DataFrame | None:
    path = Path(run.run_dir) / "agreement.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def _stat(df: pd.DataFrame, statistic: str) -> pd.DataFrame:
    return df[df["statistic"] == statistic]


def _matrix_table(agreement: pd.DataFrame, statistic: str) -> Table:
    from analysis.plots import agreement_matrix

    mat = agreement_matrix(agreement, statistic)
    shown = mat.map(lambda v: "—" if not np.isfinite(v) else f"{v:.2f}")
    shown.insert(0, "method", list(mat.index))
    return Table(shown.reset_index(drop=True))


def consensus_definition(threshold: float, methods: int) -> str:
    """The precise meaning of "consensus 75 %" (at ``threshold``) for ``methods`` methods."""
    need = math.ceil(threshold * methods - 1e-9)
    return (
        f"Consensus {threshold:.0%} at k: the share of layers on whose top-k membership at "
        f"least {threshold:.0%} of the methods agree — a layer counts when at least {need} of "
        f"the {methods} methods rank it among their k most important layers, or at least "
        f"{need} rank it outside them. {1:.0%} means every layer's keep/drop decision at k is "
        f"backed by at least {threshold:.0%} of the methods; the hybrid and consensus scores "
        "are not counted as methods (they are built from the others). Ranks are 0-based "
        "(0 = most important), ties broken by layer index."
    )


def _agreement(run: RunData, images: dict[str, Path]) -> list[Block]:
    agr = _load_agreement(run)
    if agr is None or agr.empty:
        return []
    methods = list(
        dict.fromkeys(
            [*_stat(agr, "kendall_tau")["method_a"], *_stat(agr, "kendall_tau")["method_b"]]
        )
    )
    layers = int((_stat(agr, "mean_rank")["layer"] >= 0).sum())
    w = _stat(agr, "kendall_w")["value"]
    threshold = float((run.config.get("importance") or {}).get("consensus_threshold", 0.75))
    blocks: list[Block] = [
        Heading("Agreement between importance methods"),
        Para(
            f"{len(methods)} methods over {layers} layers ({', '.join(methods)}; hybrid and "
            f"consensus excluded). Kendall's W = {w.iloc[0]:.3f} (tie-corrected coefficient of concordance: 1 = "
            "every method ranks the layers identically, 0 = no agreement)."
            if len(w)
            else f"{len(methods)} methods over {layers} layers."
        ),
        Heading("Kendall τ-b between methods (agreement matrix)", 3),
        _matrix_table(agr, "kendall_tau"),
    ]
    if "agreement" in images:
        blocks.append(Image(images["agreement"].name, "Kendall tau between methods"))
    blocks += [Heading("Spearman ρ between methods", 3), _matrix_table(agr, "spearman")]

    jac = _stat(agr, "jaccard_top_k")
    share = _stat(agr, "consensus_share").set_index("k")["value"]
    rows = []
    for k, g in jac.groupby("k", sort=True):
        s = float(share.get(k, np.nan))
        rows.append(
            {
                "k": int(k),
                "mean Jaccard": g["value"].mean(),
                "min Jaccard": g["value"].min(),
                f"consensus {threshold:.0%}": s,
                "layers agreed": f"{round(s * layers)} of {layers}" if np.isfinite(s) else "—",
            }
        )
    if rows:
        blocks += [
            Heading(f"Top-k overlap and consensus {threshold:.0%}", 3),
            Para(
                "Jaccard |A ∩ B| / |A ∪ B| of two methods' top-k layer sets, over all method pairs."
            ),
            Table(format_table(pd.DataFrame(rows))),
            Para(consensus_definition(threshold, len(methods))),
        ]

    ranking = _stat(agr, "mean_rank")[["layer", "value"]].rename(columns={"value": "mean rank"})
    cons = _stat(agr, "consensus_rank")[["layer", "value"]].rename(
        columns={"value": "consensus rank"}
    )
    table = cons.merge(ranking, on="layer")
    tops = _stat(agr, "share_top_k")
    for k, g in tops.groupby("k", sort=True):
        table = table.merge(
            g[["layer", "value"]].rename(columns={"value": f"in top-{int(k)}"}), on="layer"
        )
    table["consensus rank"] = table["consensus rank"].astype(int)
    table = table.sort_values("consensus rank")
    blocks += [
        Heading("Consensus ranking", 3),
        Para(
            "Layers ordered by their mean rank over the methods above (0 = most important, "
            "ties by layer index); `in top-k` = share of methods that put the layer among "
            "their k most important. (The `consensus` importance method, usable as a "
            "layer-selection strategy, is computed differently: the mean rank-normalised score "
            "of `importance.consensus_methods` — here "
            f"{', '.join(consensus_members(run))} — per calibration batch.)"
        ),
        Table(
            format_table(table[["consensus rank", *[c for c in table if c != "consensus rank"]]])
        ),
    ]
    return blocks


def _downstream(run: RunData, varying: list[str], quality: str) -> list[Block]:
    """Which layer ranking gives the best student: one row per strategy (mean over seeds)."""
    df = students(run.results)
    if STRATEGY_COL not in varying or df.empty or quality not in df:
        return []
    ok = df[df["status"] == "ok"] if "status" in df else df
    if ok.empty:
        return []
    group = [c for c in varying if c in ok]
    metrics = [c for c in dict.fromkeys([quality, "accuracy", "macro_f1"]) if c in ok]
    agg = ok.groupby(group, dropna=False)[metrics].mean()
    agg["seeds"] = ok.groupby(group, dropna=False).size()
    if "kept_layers" in ok:
        agg["kept layers"] = ok.groupby(group, dropna=False)["kept_layers"].agg(
            lambda v: " / ".join(sorted(set(map(str, v))))
        )
    agg = agg.reset_index()
    tau = _tau_with_consensus(run)
    agg["τ with consensus"] = [tau.get(s, np.nan) for s in agg[STRATEGY_COL]]
    res = run.results
    teacher = res[res["trial_id"] == TEACHER_ID] if "trial_id" in res else res.iloc[:0]
    if len(teacher) and quality in teacher:
        agg[f"Δ {quality} vs teacher"] = agg[quality] - float(teacher[quality].iloc[0])
    agg = agg.sort_values(quality, ascending=False)
    blocks: list[Block] = [
        Heading("Which ranking makes the best student"),
        Para(
            "Each layer-selection strategy keeps the layers its ranking puts first; the "
            "student is then built and distilled the same way. Sorted by "
            f"{quality} (mean over seeds). `τ with consensus` = Kendall τ-b between the "
            "method's layer scores and the consensus ranking (− mean rank); baselines "
            f"({', '.join(BASELINE_STRATEGIES)}) use no importance."
        ),
        _table(
            agg,
            [
                *group,
                "kept layers",
                "seeds",
                *metrics,
                f"Δ {quality} vs teacher",
                "τ with consensus",
            ],
        ),
    ]
    n_test = (((run.manifest.get("data") or {}).get("stats") or {}).get("split_sizes") or {}).get(
        "test"
    )
    if n_test and quality == "accuracy":
        p = float(agg[quality].mean())
        se = math.sqrt(max(p * (1 - p), 0.0) / n_test)
        blocks.append(
            Para(
                f"Test accuracy is measured on {n_test} examples: its binomial standard error "
                f"is about {se:.3f} at {p:.2f}, so with one seed differences below ~{2 * se:.3f} "
                "(2 SE) between strategies are not evidence that one ranking is better."
            )
        )
    return blocks


def _tau_with_consensus(run: RunData) -> dict[str, float]:
    """Kendall τ-b of each method's layer scores against the consensus ranking."""
    agr, imp = _load_agreement(run), run.importance
    if agr is None or imp is None or imp.empty:
        return {}
    mean_rank = _stat(agr, "mean_rank").set_index("layer")["value"].sort_index()
    out = {}
    for method, g in imp.groupby("method"):
        scores = g.set_index("layer")["score"].reindex(mean_rank.index)
        if scores.notna().all() and scores.nunique() > 1:
            out[str(method)] = float(kendalltau(scores, -mean_rank)[0])
    return out


def _failures(run: RunData, varying: list[str]) -> list[Block]:
    df = run.results
    # stopped = cut short by the scheduler on purpose, not a failure
    failed = df[~df["status"].isin(["ok", "stopped"])] if "status" in df else df.iloc[:0]
    blocks: list[Block] = [Heading("Failed trials")]
    if failed.empty:
        return [*blocks, Para("None.")]
    shown = failed.copy()
    errors = shown["error"].fillna("") if "error" in shown else pd.Series("", shown.index)
    shown["error"] = [(str(e).strip().splitlines() or ["(no message)"])[-1][:200] for e in errors]
    blocks.append(_table(shown, ["trial_id", "seed", *varying, "status", "error"]))
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
    blocks = [
        *_header(run),
        *_teacher(run),
        *_results(run, varying, quality, cost),
        *_summary(run, varying, quality, cost),
        *latency_blocks(run),
        *sensitivity_blocks(run, images),
        *arm_blocks(run),
        *_pareto(run, varying, quality, cost, images),
        *_importance(run, images),
        *_agreement(run, images),
        *_downstream(run, varying, quality),
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
    md.write_text(to_markdown(blocks))
    (run_dir / "report.html").write_text(to_html(blocks, f"Compression study: {run.name}"))
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a run directory with results.parquet")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.run_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
