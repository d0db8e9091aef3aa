"""Report figures (matplotlib, Agg backend), plus a registry of the run-level plots.

A registered plot has one signature: ``plot(run: RunData, out_dir: Path) -> Path | None``
(the PNG written, or None when the run has nothing to show). The report places the known
ones in their sections and appends any other registered plot at the end::

    @PLOTS.register("latency_vs_params")
    def _latency(run: RunData, out_dir: Path) -> Path | None: ...
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.frontier import config_front
from analysis.rundir import (
    KD_COL,
    ORDER_COL,
    STRATEGY_COL,
    TEACHER_ID,
    RunData,
    better_first,
    student_kind,
)
from sweepcore.atomic import atomic_path
from sweepcore.registry import Registry

__all__ = [
    "AXIS_LABELS",
    "PLOTS",
    "aggregation_caption",
    "agreement_heatmap",
    "agreement_matrix",
    "importance_heatmap",
    "pareto_plot",
    "rank_normalised",
    "save_figure",
    "seed_count_text",
]

PLOTS: Registry = Registry("plot")

AXIS_LABELS = {
    "accuracy": "test accuracy",
    "macro_f1": "test macro-F1",
    "gflops": "GFLOPs per example",
    "params": "parameters",
    "weights_bytes": "weights (bytes)",
    "latency_ms_p50": "p50 batch latency (ms)",
}


def save_figure(fig: Figure, path: Path) -> Path:
    """Save ``fig`` to ``path`` atomically (format from the suffix) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."))
    plt.close(fig)
    return path


def _truthy(col: pd.Series) -> pd.Series:
    """Booleans that may have round-tripped through strings ("True"/"false"/1)."""
    return col.astype(str).str.lower().isin({"true", "1", "1.0"})


def _cost_label(cost: str, seq_len: int | None) -> str:
    label = AXIS_LABELS.get(cost, cost)
    if cost == "gflops" and seq_len:
        label += f" at sequence length {seq_len}"
    return label


def _spread(means: pd.DataFrame, metric: str) -> np.ndarray:
    """Errorbar lengths below and above each mean: to the min and max over its seeds (the
    mean of equal values can land an ulp outside them, hence the clip at 0)."""
    below = means[metric] - means[f"{metric}_min"]
    above = means[f"{metric}_max"] - means[metric]
    return np.clip(np.vstack([below.to_numpy(float), above.to_numpy(float)]), 0.0, None)


def seed_count_text(n_seeds: pd.Series) -> str:
    """ "3 seeds" or "1–3 seeds" (the range when failed seeds left configurations uneven)."""
    n = pd.Series(n_seeds, dtype=float).dropna()
    if n.empty:
        return "0 seeds"
    lo, hi = int(n.min()), int(n.max())
    return f"{lo} seed{'s' * (hi != 1)}" if lo == hi else f"{lo}–{hi} seeds"


def aggregation_caption(configs: pd.DataFrame, *, figure: bool = False) -> str:
    """What a point of the Pareto table, hypervolume and figure is (one wording for all);
    ``figure`` adds what the bars and faint dots of :func:`pareto_plot` show."""
    text = (
        f"Each point = one configuration, mean over {seed_count_text(configs['n_seeds'])} "
        "(its successful seeds)."
    )
    if figure:
        text += " Bars = min–max over those seeds; faint dots = single seeds."
    return text


def pareto_plot(
    results: pd.DataFrame,
    path: Path,
    quality: str = "accuracy",
    cost: str = "gflops",
    *,
    seq_len: int | None = None,
    title: str | None = None,
    quality_direction: str = "max",
) -> Path:
    """Scatter of ``quality`` vs ``cost``, one point per configuration (seed-averaged by
    :func:`analysis.frontier.config_front`, the definition of the run's ``on_front``), with
    min–max bars over its seeds and each seed as a faint dot; the teacher as a star; the
    non-dominated configurations joined by a step line (``quality_direction``: whether more
    ``quality`` is better, ``"max"``, or less, ``"min"``). Colours by layer-selection strategy
    and marker by distillation on/off when those columns exist. Always writes ``path``.

    Artists carry gids (``seeds``, ``config_means``, ``seed_spread``, ``pareto_front``) so a
    test can read back what was drawn.
    """
    path = Path(path)
    df = results
    if "status" in df:
        df = df[df["status"] == "ok"]
    df = df[np.isfinite(df[quality].astype(float)) & np.isfinite(df[cost].astype(float))]
    is_teacher = df["trial_id"].astype(str).eq(TEACHER_ID) if "trial_id" in df else False
    teacher, trials = df[is_teacher], df[~is_teacher]  # trials: the seeds drawn as dots
    configs = config_front(
        results, [(quality, quality_direction), (cost, "min")]
    )  # as the report's table

    by_strategy = STRATEGY_COL in configs and configs[STRATEGY_COL].notna().any()
    has_kd = KD_COL in configs and configs[KD_COL].nunique() > 1
    by_kind = ORDER_COL in configs and configs[ORDER_COL].notna().any()

    def styled(d: pd.DataFrame) -> pd.DataFrame:  # legend name and marker of each row
        if by_kind:  # what the students are, from the stages that ran
            strategy = d[STRATEGY_COL] if by_strategy else pd.Series(None, index=d.index)
            name = pd.Series(
                [student_kind(o, s) for o, s in zip(d[ORDER_COL], strategy, strict=True)],
                index=d.index,
            )
        else:
            name = d[STRATEGY_COL].astype(str) if by_strategy else "configurations"
        marker = _truthy(d[KD_COL]).map({True: "o", False: "^"}) if has_kd else "o"
        return d.assign(_name=name, _marker=marker)

    trials, configs = styled(trials), styled(configs)
    fig, ax = plt.subplots(figsize=(7.5, 5.4), dpi=120)
    colors = plt.get_cmap("tab10").colors
    for i, name in enumerate(sorted(configs["_name"].unique())):
        color = colors[i % len(colors)]
        for marker in ("o", "^"):
            seeds = trials[(trials["_name"] == name) & (trials["_marker"] == marker)]
            means = configs[(configs["_name"] == name) & (configs["_marker"] == marker)]
            if means.empty:
                continue
            ax.scatter(seeds[cost], seeds[quality], color=color, marker=marker, s=14,
                       alpha=0.25, linewidths=0, gid="seeds")  # fmt: skip
            bars = ax.errorbar(
                means[cost],
                means[quality],
                xerr=_spread(means, cost),
                yerr=_spread(means, quality),
                fmt="none",
                ecolor=color,
                elinewidth=1.0,
                capsize=2.5,
                alpha=0.7,
            )
            for part in bars.lines[2]:
                part.set_gid("seed_spread")
            ax.scatter(means[cost], means[quality], color=color, marker=marker, s=45,
                       alpha=0.9, gid="config_means")  # fmt: skip
        ax.scatter([], [], color=color, marker="s", label=name)
    if has_kd:
        ax.scatter([], [], color="grey", marker="o", label="distilled (KD)")
        ax.scatter([], [], color="grey", marker="^", label="labels only")
    if len(teacher):
        ax.scatter(
            teacher[cost],
            teacher[quality],
            marker="*",
            s=260,
            color="black",
            zorder=4,
            label="teacher",
        )
    front = configs[configs["on_front"]].sort_values(
        [cost, quality], ascending=[True, better_first(quality_direction)]
    )
    if len(front):
        ax.step(
            front[cost],
            front[quality],
            where="post",
            color="grey",
            linestyle="--",
            linewidth=1.2,
            zorder=1,
            label="Pareto front (configurations)",
            gid="pareto_front",
        )
        ax.scatter(
            front[cost],
            front[quality],
            facecolors="none",
            edgecolors="black",
            s=110,
            linewidths=1.0,
            zorder=3,
        )
    if df.empty:
        ax.text(0.5, 0.5, "no successful trials", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(_cost_label(cost, seq_len))
    ax.set_ylabel(AXIS_LABELS.get(quality, quality))
    ax.set_title(title or f"{AXIS_LABELS.get(quality, quality)} vs cost")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        legend_title = "students" if by_kind else "layer selection" if by_strategy else None
        ax.legend(title=legend_title, fontsize=8, title_fontsize=8, loc="best")
    # the caption (what a point and a bar are) is the report's, under the figure: once
    fig.tight_layout()
    save_figure(fig, path)
    return path


def rank_normalised(importance: pd.DataFrame) -> pd.DataFrame:
    """Layer × method table of ``1 - rank / (layers - 1)``: 1 = most important, 0 = least."""
    df = importance.copy()
    n = df.groupby("method")["layer"].transform("count")
    df["norm"] = 1.0 - df["rank"] / (n - 1).where(n > 1, 1)
    return df.pivot_table(index="layer", columns="method", values="norm").sort_index()


def importance_heatmap(importance_df: pd.DataFrame, path: Path) -> Path:
    """Heatmap of rank-normalised layer importance, layers down, methods across; each cell
    is labelled with its rank (0 = most important)."""
    path = Path(path)
    table = rank_normalised(importance_df)
    ranks = importance_df.pivot_table(index="layer", columns="method", values="rank")
    ranks = ranks.reindex(index=table.index, columns=table.columns)
    width = max(5.5, 2.6 + 1.1 * table.shape[1])
    fig, ax = plt.subplots(figsize=(width, 1.4 + 0.45 * table.shape[0]), dpi=120)
    im = ax.imshow(table.to_numpy(float), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (r, c), v in np.ndenumerate(ranks.to_numpy(float)):
        if np.isfinite(v):
            shade = table.iat[r, c]
            ax.text(
                c,
                r,
                f"{int(v)}",
                ha="center",
                va="center",
                color="black" if shade > 0.6 else "white",
                fontsize=9,
            )
    ax.set_xticks(range(table.shape[1]), [str(m) for m in table.columns])
    ax.set_yticks(range(table.shape[0]), [str(i) for i in table.index])
    ax.set_xlabel("importance method")
    ax.set_ylabel("layer (0 = nearest the embeddings)")
    ax.set_title("Layer importance by method\n(cell text = rank, 0 = most important)", fontsize=10)
    fig.colorbar(im, ax=ax, label="rank-normalised importance (1 = most)")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def agreement_matrix(agreement: pd.DataFrame, statistic: str = "kendall_tau") -> pd.DataFrame:
    """Square method × method matrix of a pairwise statistic from ``agreement.parquet``
    (``kendall_tau``, ``spearman``, or ``jaccard_top_k`` with one ``k`` selected beforehand);
    the diagonal is 1, methods in the order they first appear."""
    pairs = agreement[agreement["statistic"] == statistic]
    names = list(dict.fromkeys([*pairs["method_a"], *pairs["method_b"]]))
    out = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for a, b, v in zip(pairs["method_a"], pairs["method_b"], pairs["value"], strict=True):
        out.loc[a, b] = out.loc[b, a] = v
    return out


def agreement_heatmap(agreement_df: pd.DataFrame, path: Path) -> Path:
    """Heatmap of the pairwise Kendall τ-b between importance methods (diverging, −1 … 1),
    each cell labelled with its value; Kendall's W in the title."""
    path = Path(path)
    mat = agreement_matrix(agreement_df, "kendall_tau")
    w = agreement_df.loc[agreement_df["statistic"] == "kendall_w", "value"]
    n = mat.shape[0]
    width = max(4.8, 2.4 + 0.62 * n)  # inches: room for the title with few methods too
    fig, ax = plt.subplots(figsize=(width, 1.9 + 0.55 * n), dpi=120)
    im = ax.imshow(mat.to_numpy(float), cmap="RdBu_r", vmin=-1, vmax=1)
    for (r, c), v in np.ndenumerate(mat.to_numpy(float)):
        text = "—" if not np.isfinite(v) else f"{v:.2f}"
        ax.text(
            c,
            r,
            text,
            ha="center",
            va="center",
            fontsize=7,
            color="white" if np.isfinite(v) and abs(v) > 0.6 else "black",
        )
    ax.set_xticks(range(n), [str(m) for m in mat.columns], rotation=60, ha="right")
    ax.set_yticks(range(n), [str(m) for m in mat.index])
    lines = ["Agreement between importance methods (Kendall τ-b of layer scores)"]
    if len(w) and np.isfinite(w.iloc[0]):
        lines.append(f"Kendall's W over all {n} methods = {w.iloc[0]:.3f}")
    # wrapped to the figure: about 0.6 em per character of a 10-point title, 72 points an inch
    chars = int(width * 72 / (10 * 0.6))
    fig.suptitle("\n".join(textwrap.fill(line, chars) for line in lines), fontsize=10)
    fig.colorbar(im, ax=ax, label="Kendall τ-b", shrink=0.8)
    fig.tight_layout()
    save_figure(fig, path)
    return path


@PLOTS.register("pareto")
def _pareto(run: RunData, out_dir: Path) -> Path | None:
    if run.quality_metric not in run.results or run.cost_metric not in run.results:
        return None
    return pareto_plot(
        run.results,
        out_dir / "pareto.png",
        run.quality_metric,
        run.cost_metric,
        seq_len=run.seq_len,
        title=f"{run.name}: quality vs cost",
        quality_direction=run.quality_direction,
    )


@PLOTS.register("importance")
def _importance(run: RunData, out_dir: Path) -> Path | None:
    if run.importance is None or run.importance.empty:
        return None
    return importance_heatmap(run.importance, out_dir / "importance.png")


@PLOTS.register("agreement")
def _agreement(run: RunData, out_dir: Path) -> Path | None:
    path = Path(run.run_dir) / "agreement.parquet"
    if not path.is_file():
        return None
    df = pd.read_parquet(path)
    if not (df["statistic"] == "kendall_tau").any():
        return None
    return agreement_heatmap(df, out_dir / "agreement.png")
