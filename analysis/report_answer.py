"""The report's opening section: the study's answer before the tables.

The Pareto plot first, then three facts, each from statistics the report already uses:

- the best student at each cost: the Pareto set of seed-averaged configurations on
  (quality, cost) (:func:`analysis.frontier.config_front`, as in the Pareto section), each
  described by what it is (layers, heads, FFN width: ``student_shape``; quantization, early
  exit) with its cost, latency and quality, and flagged when it is no better than the task's
  reference baseline (e.g. predicting the majority class);
- its quality as a share of the teacher's, with an interval: the configuration's 95 %
  Student-t interval over its successful seeds (:func:`analysis.stats.t_interval`, the
  "Across seeds" table's interval) divided by the teacher's value, which is one fine-tuned
  model and enters as a fixed reference (its own seed-to-seed spread is not in the interval);
- which searched choices made a difference beyond noise: per searched knob, the trials
  where it took effect (its stage ran: :func:`analysis.rundir.applied`) grouped by its value
  (pooled over the other knobs) with the same t interval (:func:`analysis.stats.summarize`);
  two values whose intervals do not overlap differ beyond noise, all overlapping is within
  noise, and a value with fewer than 2 successful trials leaves it undecided. Tables show a
  stage's setting only where the stage ran.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis.frontier import config_front, config_key
from analysis.paired import matches
from analysis.plots import aggregation_caption
from analysis.render import (
    Block,
    Heading,
    Image,
    Para,
    Table,
    format_table,
    format_value,
    short_name,
)
from analysis.rundir import ORDER_COL, TEACHER_ID, RunData, applied, students
from analysis.stats import summarize, t_interval

__all__ = ["answer_blocks", "knob_verdicts"]


def _teacher_value(df: pd.DataFrame, metric: str) -> float | None:
    if "trial_id" not in df or metric not in df:
        return None
    t = df[(df["trial_id"] == TEACHER_ID) & (df.get("status", "ok") == "ok")][metric]
    t = t[pd.to_numeric(t, errors="coerce").notna()]
    return float(t.iloc[0]) if len(t) and float(t.iloc[0]) != 0 else None


def knob_verdicts(df: pd.DataFrame, knobs: list[str], metric: str) -> pd.DataFrame:
    """One row per knob: ``knob``, ``verdict`` ("beyond noise", "within noise" or "undecided")
    and ``evidence`` (the two most distant values' means and intervals, or why undecided),
    each from the trials where the knob took effect (:func:`analysis.rundir.applied`), n
    counted that way."""
    rows = []
    for knob in knobs:
        summ = summarize(df[applied(df, knob)], by=[knob], metrics=[metric])
        summ = summ[summ["n"] > 0] if not summ.empty else summ
        if len(summ) < 2:
            rows.append({"knob": knob, "verdict": "undecided", "evidence": "one value ran"})
            continue
        lo, hi = summ[f"{metric}_ci_low"], summ[f"{metric}_ci_high"]

        def cell(r: pd.Series, knob: str = knob) -> str:
            interval = (
                "no interval"
                if math.isnan(r[f"{metric}_ci_low"])
                else f"[{format_value(r[f'{metric}_ci_low'], metric)}, "
                f"{format_value(r[f'{metric}_ci_high'], metric)}]"
            )
            return (
                f"{format_value(r[knob])}: {format_value(r[f'{metric}_mean'], metric)} "
                f"{interval}, n={int(r['n'])}"
            )

        order = summ.sort_values(f"{metric}_mean")
        ends = f"{cell(order.iloc[-1])} vs {cell(order.iloc[0])}"
        if lo.isna().any():
            few = ", ".join(format_value(v) for v in summ.loc[lo.isna(), knob])
            rows.append(
                {
                    "knob": knob,
                    "verdict": "undecided",
                    "evidence": f"fewer than 2 successful trials for {few}; {ends}",
                }
            )
            continue
        disjoint = float(lo.max()) > float(hi.min())  # some pair of intervals does not overlap
        rows.append(
            {
                "knob": knob,
                "verdict": "beyond noise" if disjoint else "within noise",
                "evidence": ends,
            }
        )
    return pd.DataFrame(rows, columns=["knob", "verdict", "evidence"])


def _student(c: pd.Series) -> str:
    """A configuration's students described by what they are: layers, heads, FFN width
    (``student_shape``, else the layer count), quantization and early exit where they ran."""
    shape = c.get("student_shape")
    order = c.get(ORDER_COL)
    stages = order.split(",") if isinstance(order, str) else []
    if not isinstance(shape, str) or not shape:  # a run from before the column
        layers = c.get("student_layers")
        n = int(layers) if pd.notna(layers) else None
        shape = f"{n} layer{'s' if n != 1 else ''}" if n is not None else str(c.get("config_id"))
        if "prune" in stages:
            shape += ", pruned"
    quant = c.get("quant")
    if isinstance(quant, str) and quant not in ("", "none"):
        shape += f", {quant}"
    if "early_exit" in stages:
        shape += ", early exit"
    return shape


def _baseline(run: RunData, quality: str) -> tuple[str, float] | None:
    """The task's first reference baseline that reports ``quality`` (e.g. the majority class)."""
    for name, metrics in (run.manifest.get("baselines") or {}).items():
        value = (metrics or {}).get(quality)
        if value is not None and math.isfinite(float(value)):
            return str(name), float(value)
    return None


def answer_blocks(
    run: RunData,
    varying: list[str],
    quality: str,
    cost: str,
    *,
    users_resampled: bool = False,
    images: dict[str, Path] | None = None,
) -> list[Block]:
    """The opening section (module docstring); says so when the run cannot answer.
    ``users_resampled``: the report also has the ranking retention section (a paired
    interval over test users, :func:`analysis.ranking.retention_interval`); the lead names it.
    ``images``: the report's figures; the Pareto plot (``pareto``) leads the section."""
    df = run.results
    blocks: list[Block] = [Heading("Answer")]
    if quality not in df or cost not in df:
        return [*blocks, Para(f"Columns {quality!r} / {cost!r} are missing from the results.")]
    direction = run.quality_direction
    latency = "latency_ms_p50" if "latency_ms_p50" in df and cost != "latency_ms_p50" else None
    configs = config_front(df, [(quality, direction), (cost, "min")], [latency] if latency else [])
    front = configs[configs["on_front"]].sort_values(cost, kind="stable")
    if front.empty:
        return [*blocks, Para("No successful student with finite metrics: no answer.")]
    teacher = _teacher_value(df, quality)
    teacher_cost = _teacher_value(df, cost)
    baseline = _baseline(run, quality)
    ok = students(df)
    ok = ok[ok["status"] == "ok"] if "status" in ok else ok
    key = config_key(df)
    rows = []
    for i, c in front.iterrows():
        seeds = ok[matches(ok, c.to_dict(), key)] if key else ok.iloc[:0]
        low, high = t_interval(seeds[quality].to_numpy(float)) if len(seeds) else (math.nan,) * 2
        row = {"student": _student(c), "config_id": c.get("config_id", f"config {i}")}
        row[cost] = c[cost]
        if teacher_cost:
            row[f"{cost} / teacher"] = f"{c[cost] / teacher_cost:.0%}"
        if latency:
            row[latency] = c[latency]
        row[quality] = c[quality]
        if teacher is not None:
            row["of teacher"] = f"{c[quality] / teacher:.1%}"
            row["of teacher, 95% t interval"] = (
                "—" if math.isnan(low) else f"[{low / teacher:.1%}, {high / teacher:.1%}]"
            )
        else:
            row[f"{quality} 95% t interval"] = (
                "—"
                if math.isnan(low)
                else f"[{format_value(low, quality)}, {format_value(high, quality)}]"
            )
        row["seeds"] = int(c.get("n_seeds", len(seeds)))
        if baseline is not None:
            no_better = (
                c[quality] <= baseline[1] if direction == "max" else c[quality] >= baseline[1]
            )
            row["note"] = f"no better than the {baseline[0]} baseline" if no_better else ""
        rows.append(row)
    table = pd.DataFrame(rows)
    if "note" in table and not table["note"].astype(bool).any():
        table = table.drop(columns="note")
    pick = max if direction == "max" else min
    best = pick(rows, key=lambda r: r[quality])
    cheapest = rows[0]

    def who(r: dict) -> str:
        return f"{r['student']} (`{r['config_id']}`)"

    ref = "" if teacher is None else f" (teacher: {format_value(teacher, quality)})"
    lead = (
        f"Best student at each {cost} (the Pareto set on {quality} × {cost}, configurations "
        f"averaged over seeds, cheapest first){ref}: the cheapest, {who(cheapest)} at "
        f"{cost} {format_value(cheapest[cost], cost)}, reaches {quality} "
        f"{format_value(cheapest[quality], quality)}"
    )
    if teacher is not None:
        lead += (
            f" ({cheapest['of teacher']} of the teacher, interval "
            f"{cheapest['of teacher, 95% t interval']})"
        )
    if best["config_id"] != cheapest["config_id"]:
        lead += (
            f"; the best, {who(best)} at {cost} {format_value(best[cost], cost)}, "
            f"reaches {format_value(best[quality], quality)}"
        )
        if teacher is not None:
            lead += f" ({best['of teacher']}, interval {best['of teacher, 95% t interval']})"
    lead += (
        ". Intervals: 95 % Student-t over each configuration's successful seeds (— with "
        "fewer than 2), divided by the teacher's value (one fine-tuned model, a fixed "
        "reference)."
    )
    if "note" in table:
        lead += (
            f" A student no better than the {baseline[0]} baseline "  # type: ignore[index]
            f"({format_value(baseline[1], quality)}) has learnt nothing the baseline "  # type: ignore[index]
            "does not know: its row says so."
        )
    if users_resampled:
        lead += (
            " Retention with an interval that resamples test users (paired BCa bootstrap, "
            "defined with one seed too) is in 'Retention of the teacher' below."
        )
    blocks.append(Para(lead))
    if images and "pareto" in images:
        blocks.append(Image(images["pareto"].name, f"{quality} vs {cost}"))
        blocks.append(Para(f"Figure: {aggregation_caption(configs, figure=True)}"))
    settings = "; their settings are in 'Pareto set' below" if varying else ""
    blocks += [
        Para(f"The students on the front{settings}:"),
        Table(format_table(table)),
    ]
    if varying:
        verdicts = knob_verdicts(df, varying, quality)
        beyond = [
            short_name(k) for k in verdicts.loc[verdicts["verdict"] == "beyond noise", "knob"]
        ]
        blocks.append(
            Para(
                "Choices that made a difference beyond noise on "
                f"{quality}: {', '.join(f'`{b}`' for b in beyond) if beyond else 'none'}. Per "
                "searched knob, the trials where it took effect (its stage ran) grouped by value "
                "(pooled over the other knobs) with the same 95 % t interval; intervals that do "
                "not overlap = beyond noise."
            )
        )
        verdicts["knob"] = [short_name(k) for k in verdicts["knob"]]
        blocks.append(Table(format_table(verdicts)))
    return blocks
