"""The report's importance sections: each method's layer scores with their intervals, the
agreement between methods (``agreement.parquet``), and which ranking makes the best student.

Reads only the run directory (:class:`analysis.rundir.RunData`); :mod:`analysis.report` puts
the blocks in place.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from analysis.render import Block, Heading, Image, Para, Table, column_table, format_table
from analysis.rundir import (
    KEPT_LAYERS_COL,
    STRATEGY_COL,
    TEACHER_ID,
    RunData,
    better_first,
    students,
)

__all__ = [
    "agreement_blocks",
    "consensus_definition",
    "consensus_members",
    "downstream_blocks",
    "importance_blocks",
]

BASELINE_STRATEGIES = ("uniform", "first_last", "random")


def _interval_note(g: pd.DataFrame, level: float, floors: dict[str, int]) -> str:
    """What one method's intervals resampled, and whether they can be trusted: enough units
    (``floors``: the run's minimum per unit) and, layer by layer, not too skewed."""
    if "ci_unit" not in g or g["ci_low"].isna().all():
        return "No interval (fewer than 2 resampling units)." if "ci_unit" in g else ""
    unit, n = str(g["ci_unit"].iloc[0]), int(g["ci_units"].iloc[0])
    units = {"example": "examples", "batch": "calibration batches"}.get(unit, unit)
    text = f"Interval: {level:.0%} BCa bootstrap over {n} {units}"
    floor = n < floors.get(unit, 0)
    shaky = [int(r.layer) for r in g.itertuples() if not bool(r.ci_reliable)]
    if floor or len(shaky) == len(g):
        why = f"too few {units}" if floor else f"{units} too skewed for their number"
        return (
            f"{text}; unreliable: {why} for the interval to reach its nominal coverage "
            "(see `importance.ci_min_examples` / `ci_min_batches`; skew: n > 25·skewness²)."
        )
    if shaky:
        layers = ", ".join(map(str, sorted(shaky)))
        return (
            f"{text}; unreliable for layer{'s' if len(shaky) > 1 else ''} {layers}: their "
            f"{units} are too skewed for their number (n > 25·skewness² fails), so those "
            "intervals may cover less than nominal."
        )
    return f"{text}."


def consensus_members(run: RunData) -> list[str]:
    """The methods the ``consensus`` score averages, from the run's config (engine default
    when the config predates the key)."""
    imp = run.config.get("importance") or {}
    default = ["fisher", "gradient", "taylor", "ablation", "block_influence"]
    return list(imp.get("consensus_methods") or default)


def importance_blocks(run: RunData, images: dict[str, Path]) -> list[Block]:
    imp = run.importance
    if imp is None or imp.empty:
        return []
    cfg = run.config.get("importance") or {}
    level = float(cfg.get("ci_level", 0.95))
    floors = {
        "example": int(cfg.get("ci_min_examples", 100)),
        "batch": int(cfg.get("ci_min_batches", 50)),
    }
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
        note = _interval_note(g, level, floors)
        if note:
            blocks.append(Para(note))
        blocks.append(
            column_table(g.sort_values("rank"), ["layer", "rank", "score", "ci_low", "ci_high"])
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


def agreement_blocks(run: RunData, images: dict[str, Path]) -> list[Block]:
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
            "their k most important."
            + (
                " (The `consensus` importance method this study ran, usable as a "
                "layer-selection strategy, is computed differently: the mean rank-normalised "
                "score of `importance.consensus_methods` — here "
                f"{', '.join(consensus_members(run))} — per calibration batch.)"
                if run.importance is not None and "consensus" in set(run.importance["method"])
                else ""
            )
        ),
        Table(
            format_table(table[["consensus rank", *[c for c in table if c != "consensus rank"]]])
        ),
    ]
    return blocks


def downstream_blocks(run: RunData, varying: list[str], quality: str) -> list[Block]:
    """Which layer ranking gives the best student: one row per strategy (mean over seeds)."""
    df = students(run.results)
    if STRATEGY_COL not in varying or df.empty or quality not in df:
        return []
    ok = df[df["status"] == "ok"] if "status" in df else df
    if ok.empty:
        return []
    group = [c for c in varying if c in ok]
    metrics = [c for c in dict.fromkeys([quality, *run.quality_metrics]) if c in ok]
    agg = ok.groupby(group, dropna=False)[metrics].mean()
    agg["seeds"] = ok.groupby(group, dropna=False).size()
    if KEPT_LAYERS_COL in ok:
        agg["kept layers"] = ok.groupby(group, dropna=False)[KEPT_LAYERS_COL].agg(
            lambda v: " / ".join(sorted(set(map(str, v))))
        )
    agg = agg.reset_index()
    tau = _tau_with_consensus(run)
    agg["τ with consensus"] = [tau.get(s, np.nan) for s in agg[STRATEGY_COL]]
    res = run.results
    teacher = res[res["trial_id"] == TEACHER_ID] if "trial_id" in res else res.iloc[:0]
    if len(teacher) and quality in teacher:
        agg[f"Δ {quality} vs teacher"] = agg[quality] - float(teacher[quality].iloc[0])
    agg = agg.sort_values(
        quality, ascending=better_first(run.metric_directions.get(quality, "max"))
    )
    blocks: list[Block] = [
        Heading("Which ranking makes the best student"),
        Para(
            "Each layer-selection strategy keeps the layers its ranking puts first; the "
            "student is then built and distilled the same way. Sorted by "
            f"{quality} (mean over seeds). `τ with consensus` = Kendall τ-b between the "
            "method's layer scores and the consensus ranking (− mean rank); baselines "
            f"({', '.join(BASELINE_STRATEGIES)}) use no importance."
        ),
        column_table(
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
