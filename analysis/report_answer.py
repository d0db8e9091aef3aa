"""The report's opening section: the study's answer before the tables.

Three facts, each from statistics the report already uses:

- the best student at each cost: the Pareto set of seed-averaged configurations on
  (quality, cost) (:func:`analysis.frontier.config_front`, as in the Pareto section);
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

import pandas as pd

from analysis.frontier import config_front, config_key
from analysis.paired import matches
from analysis.render import Block, Heading, Para, Table, format_table, format_value, short_name
from analysis.rundir import TEACHER_ID, RunData, applied, blank_unapplied, students
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


def answer_blocks(
    run: RunData, varying: list[str], quality: str, cost: str, *, users_resampled: bool = False
) -> list[Block]:
    """The opening section (module docstring); says so when the run cannot answer.
    ``users_resampled``: the report also has the ranking retention section (a paired
    interval over test users, :func:`analysis.ranking.retention_interval`); the lead names it."""
    df = run.results
    blocks: list[Block] = [Heading("Answer")]
    if quality not in df or cost not in df:
        return [*blocks, Para(f"Columns {quality!r} / {cost!r} are missing from the results.")]
    direction = run.quality_direction
    configs = config_front(df, [(quality, direction), (cost, "min")], [])
    front = configs[configs["on_front"]].sort_values(cost, kind="stable")
    if front.empty:
        return [*blocks, Para("No successful student with finite metrics: no answer.")]
    teacher = _teacher_value(df, quality)
    teacher_cost = _teacher_value(df, cost)
    ok = students(df)
    ok = ok[ok["status"] == "ok"] if "status" in ok else ok
    key = config_key(df)
    rows = []
    for i, c in front.iterrows():
        seeds = ok[matches(ok, c.to_dict(), key)] if key else ok.iloc[:0]
        low, high = t_interval(seeds[quality].to_numpy(float)) if len(seeds) else (math.nan,) * 2
        name = c.get("config_id", f"config {i}")
        row = {"config_id": name, **{k: c.get(k) for k in varying}}
        row[cost] = c[cost]
        if teacher_cost:
            row[f"{cost} / teacher"] = f"{c[cost] / teacher_cost:.0%}"
        row["seeds"] = int(c.get("n_seeds", len(seeds)))
        row[quality] = c[quality]
        row[f"{quality} 95% t interval"] = (
            "—"
            if math.isnan(low)
            else f"[{format_value(low, quality)}, {format_value(high, quality)}]"
        )
        if teacher is not None:
            row["of teacher"] = f"{c[quality] / teacher:.1%}"
            row["of teacher, interval"] = (
                "—" if math.isnan(low) else f"[{low / teacher:.1%}, {high / teacher:.1%}]"
            )
        rows.append(row)
    as_run = pd.DataFrame(rows)
    table = blank_unapplied(as_run, varying)
    blanked = bool(varying) and int(table[varying].isna().sum().sum()) > int(
        as_run[varying].isna().sum().sum()
    )
    pick = max if direction == "max" else min
    best = pick(rows, key=lambda r: r[quality])
    cheapest = rows[0]
    ref = "" if teacher is None else f" (teacher: {format_value(teacher, quality)})"
    lead = (
        f"Best student at each {cost} (the Pareto set on {quality} × {cost}, configurations "
        f"averaged over seeds, cheapest first){ref}: the cheapest, `{cheapest['config_id']}` at "
        f"{cost} {format_value(cheapest[cost], cost)}, reaches {quality} "
        f"{format_value(cheapest[quality], quality)}"
    )
    if teacher is not None:
        lead += f" ({cheapest['of teacher']} of the teacher, interval {cheapest['of teacher, interval']})"
    if best["config_id"] != cheapest["config_id"]:
        lead += (
            f"; the best, `{best['config_id']}` at {cost} {format_value(best[cost], cost)}, "
            f"reaches {format_value(best[quality], quality)}"
        )
        if teacher is not None:
            lead += f" ({best['of teacher']}, interval {best['of teacher, interval']})"
    lead += (
        ". Intervals: 95 % Student-t over each configuration's successful seeds (— with "
        "fewer than 2), divided by the teacher's value (one fine-tuned model, a fixed "
        "reference)."
    )
    if blanked:
        lead += " A stage's setting shows — where that stage did not run."
    if users_resampled:
        lead += (
            " Retention with an interval that resamples test users (paired BCa bootstrap, "
            "defined with one seed too) is in 'Retention of the teacher' below."
        )
    blocks += [Para(lead), Table(format_table(table, {k: short_name(k) for k in varying}))]
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
