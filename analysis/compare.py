"""Two runs side by side, for "did my change help": ``python -m analysis.compare RUN_A RUN_B``.

Configurations are matched across the runs by their config columns (``pipeline.…`` and the
searched keys), not by ``config_id``: that id hashes the searched values, so two studies with
different search spaces give the same student different ids. The columns matched on are the
config columns both runs have that vary in either; settings that are constant in each run but
differ between them (the change under test) and columns only one run has are listed, and a
configuration that has no partner (or several) is listed too, never dropped.

For each matched configuration, the teacher and the task's reference rows: the metric in A and
in B (mean over the ``ok`` seeds) and Δ = B − A with a 95 % interval:

* **paired over test examples** when both runs kept per-example tables (``rankings/``,
  ``predictions/``) for the same test examples, in the same order or keyed uniquely, and the
  tables reproduce ``results.parquet``'s figures: each resample draws the test examples once
  and applies the draw to every seed's table of both runs (the metric of each seed, averaged
  over the configuration's seeds, B minus A), a percentile bootstrap. The interval reflects
  which examples were tested, not training-seed noise;
* else **unpaired over seeds**: Welch's Student-t interval of the two sets of per-seed
  figures (needs ≥ 2 seeds on each side; ``—`` otherwise).

"within noise" = the interval covers 0. Cost deltas (GFLOPs, p50 latency) use the seed
interval. Both intervals come from :mod:`analysis.examples`; at nominal 95 % they cover
93.8 % (paired, 300 test examples), 94.75 % and 94.0 % with 3 and 10 seeds a side
(tests/analysis/test_examples.py).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.examples import EXAMPLE_TABLES, aligned, paired_bootstrap, read_tables, seed_interval
from analysis.frontier import config_key
from analysis.paired import column_form
from analysis.render import (
    Block,
    Heading,
    Para,
    Table,
    format_table,
    interval_cells,
    short_name,
    to_html,
    to_markdown,
)
from analysis.rundir import (
    TEACHER_ID,
    RunData,
    config_columns,
    load_run,
    students,
    varying_config_columns,
)
from analysis.stats import n_stopped
from sweepcore.atomic import write_atomic

__all__ = [
    "COSTS",
    "CompareError",
    "Comparison",
    "compare_blocks",
    "compare_runs",
    "main",
    "verdict",
]

COSTS = ("gflops", "latency_ms_p50")  # cost deltas shown beside the quality metric


class CompareError(ValueError):
    """Runs that cannot be compared; :func:`main` prints the message and exits 2."""


# ----------------------------------------------------------------------------- one side


@dataclass(frozen=True)
class Side:
    """One configuration (or the teacher) in one run: its ``ok`` trial rows."""

    run: RunData
    trials: pd.DataFrame
    n_failed: int = 0
    config: dict[str, Any] = field(default_factory=dict)  # values on the matched columns

    def values(self, metric: str) -> np.ndarray:
        if metric not in self.trials:
            return np.array([])
        x = pd.to_numeric(self.trials[metric], errors="coerce").to_numpy(float)
        return x[np.isfinite(x)]

    def mean(self, metric: str) -> float:
        x = self.values(metric)
        return float(x.mean()) if len(x) else float("nan")


def _delta(a: Side, b: Side, metric: str, *, paired: bool, seed: int) -> dict[str, Any]:
    """Means, Δ = B − A, its interval and which interval it is (``d_<metric>_interval``)."""
    out: dict[str, Any] = {f"{metric}_a": a.mean(metric), f"{metric}_b": b.mean(metric)}
    # rounded: equal metrics give 0, not the 1e-17 float residue of b - a
    out[f"d_{metric}"] = round(out[f"{metric}_b"] - out[f"{metric}_a"], 12)
    lo = hi = float("nan")
    why_not_paired = ""
    if paired:
        got = _paired_interval(a, b, metric, seed)
        if isinstance(got, str):
            why_not_paired = got
        else:
            (lo, hi), how = got
    if not np.isfinite(lo):
        lo, hi = seed_interval(a.values(metric), b.values(metric))
        n_a, n_b = len(a.values(metric)), len(b.values(metric))
        how = f"seeds, unpaired ({n_a} vs {n_b})" if np.isfinite(lo) else "— (< 2 seeds)"
        how += f"; not paired: {why_not_paired}" if why_not_paired else ""
    out.update({f"d_{metric}_low": lo, f"d_{metric}_high": hi, f"d_{metric}_interval": how})
    return out


def _paired_interval(
    a: Side, b: Side, metric: str, seed: int
) -> tuple[tuple[float, float], str] | str:
    """The paired bootstrap interval, or the reason there is none."""
    if a.trials.empty or b.trials.empty:
        return "no successful seed"
    got_a = read_tables(a.run.run_dir, a.trials["trial_id"].astype(str).tolist())
    got_b = read_tables(b.run.run_dir, b.trials["trial_id"].astype(str).tolist())
    if got_a is None or got_b is None or got_a[0] != got_b[0]:
        return "no per-example tables"
    spec = EXAMPLE_TABLES[got_a[0]]
    em = spec.metric(metric)
    if em is None:
        return f"{metric} not in the per-example tables"
    tables = aligned([*got_a[1], *got_b[1]], spec.key)
    if tables is None:
        return "different test examples"
    per = np.stack([np.asarray(em.values(t), float) for t in tables])
    ta, tb = per[: len(got_a[1])], per[len(got_a[1]) :]
    # tables that do not reproduce results.parquet describe other trials: do not trust them
    for side, table in ((a, ta), (b, tb)):
        recomputed = np.asarray(em.finish(table.mean(axis=1)), float)
        reported = pd.to_numeric(side.trials[metric], errors="coerce").to_numpy(float)
        if not np.allclose(recomputed, reported, rtol=1e-6, atol=1e-9):
            return "per-example tables disagree with results.parquet"
    return paired_bootstrap(ta, tb, em.finish, seed=seed), f"test examples, paired ({per.shape[1]})"


def verdict(d: float, lo: float, hi: float, direction: str) -> str:
    """``within noise`` (the interval covers 0), ``B better`` / ``B worse``, or ``—``."""
    if not np.isfinite(d):
        return "—"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "no interval"
    if lo <= 0 <= hi:
        return "within noise"
    return "B better" if (d > 0) == (direction == "max") else "B worse"


# ----------------------------------------------------------------------------- matching


def _canon(value: Any) -> str:
    """A config value in one comparable form across parquet/JSON types (numbers, bools, lists)."""
    value = column_form(value)
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return "∅"
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower()
    try:
        return f"{float(value):.12g}"
    except (TypeError, ValueError):
        return str(value)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _configurations(run: RunData, key: list[str]) -> list[tuple[tuple[str, ...], Side]]:
    """Each configuration of ``run`` (its seeds grouped by :func:`config_key`) with its values
    on ``key``."""
    rows = students(run.results)
    if rows.empty:
        return []
    ident = config_key(rows) or key
    out = []
    groups = rows.groupby(ident, dropna=False, sort=False) if ident else [((), rows)]
    for _, g in groups:
        ok = _ok(g)
        config = {c: g.iloc[0][c] for c in key}
        side = Side(run, ok, len(g) - len(ok) - n_stopped(g), config)
        out.append((tuple(_canon(v) for v in config.values()), side))
    return out


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_runs` found; :func:`compare_blocks` renders it."""

    a: RunData
    b: RunData
    metric: str
    direction: str
    key: list[str]  # config columns the configurations are matched on
    #: rows: ``model`` (teacher / reference name / ``configuration``), the ``key`` columns,
    #: ``seeds_a``/``seeds_b``, per metric ``<m>_a``, ``<m>_b``, ``d_<m>``, ``d_<m>_low``,
    #: ``d_<m>_high``, ``d_<m>_interval``, and ``verdict`` (on ``metric``)
    rows: pd.DataFrame
    unmatched: pd.DataFrame  # ``run``, the key columns, ``seeds``, ``reason``
    settings: list[tuple[str, Any, Any]] = field(default_factory=list)  # differ A → B
    only_a: list[str] = field(default_factory=list)  # config columns only run A has
    only_b: list[str] = field(default_factory=list)


def _check(a: RunData, b: RunData, metric: str | None) -> tuple[str, str]:
    """The metric compared and its direction; :class:`CompareError` for incomparable runs."""
    ta, tb = a.task.get("name"), b.task.get("name")
    if ta and tb and ta != tb:
        raise CompareError(f"the runs are of different tasks: A is {ta}, B is {tb}")
    if metric is None:
        if a.quality_metric != b.quality_metric:
            raise CompareError(
                f"the runs report different quality metrics (A: {a.quality_metric}, B: "
                f"{b.quality_metric}); choose one with --metric"
            )
        metric = a.quality_metric
    for name, run in (("A", a), ("B", b)):
        directions = run.metric_directions
        if metric not in directions or metric not in run.results:
            known = ", ".join(m for m in directions if m in run.results)
            raise CompareError(
                f"metric {metric!r} is not in run {name}'s results (it has: {known})"
            )
    if a.metric_directions[metric] != b.metric_directions[metric]:
        raise CompareError(f"{metric} is maximised in one run and minimised in the other")
    protocols = [set(r.results.get("ranking", pd.Series(dtype=str)).dropna()) for r in (a, b)]
    if all(protocols) and protocols[0] != protocols[1]:
        raise CompareError(
            f"the runs rank differently (A: {', '.join(sorted(protocols[0]))}; B: "
            f"{', '.join(sorted(protocols[1]))}): their metrics are not comparable"
        )
    return metric, a.metric_directions[metric]


def _row(a: Side, b: Side, metrics: list[str], direction: str, paired: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"seeds_a": len(a.trials), "seeds_b": len(b.trials)}
    for i, m in enumerate(metrics):
        row.update(_delta(a, b, m, paired=paired and i == 0, seed=i))
    m = metrics[0]
    row["verdict"] = verdict(row[f"d_{m}"], row[f"d_{m}_low"], row[f"d_{m}_high"], direction)
    return row


def _references(run: RunData) -> dict[str, pd.DataFrame]:
    refs = run.references
    if refs.empty:  # runs written before reference rows: the manifest's baselines
        base = run.manifest.get("baselines") or {}
        refs = pd.DataFrame([{"trial_id": k, **(v or {})} for k, v in base.items()])
    if refs.empty:
        return {}
    return {str(t): g for t, g in refs.groupby("trial_id", sort=False)}


def _ok(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["status"] == "ok"] if "status" in rows else rows


def _teacher(run: RunData) -> pd.DataFrame:
    df = run.results
    return _ok(df[df["trial_id"] == TEACHER_ID]) if "trial_id" in df else df.iloc[:0]


def _settings(a: RunData, b: RunData) -> list[tuple[str, Any, Any]]:
    """The study settings (manifest config, dotted) whose values differ between the runs."""
    fa, fb = _flatten(a.config), _flatten(b.config)
    return [
        (k, column_form(fa.get(k)), column_form(fb.get(k)))
        for k in dict.fromkeys([*fa, *fb])
        if k != "description" and _canon(fa.get(k)) != _canon(fb.get(k))
    ]


def compare_runs(a: RunData, b: RunData, metric: str | None = None) -> Comparison:
    """Match the two runs' configurations and compute the deltas (see the module docstring).

    Raises:
        CompareError: different tasks or ranking protocols, a metric one run lacks, or no
            configuration in common.
    """
    metric, direction = _check(a, b, metric)
    metrics = [metric, *(c for c in COSTS if c != metric and c in a.results and c in b.results)]
    cols_a, cols_b = config_columns(a.results), config_columns(b.results)
    varying = {*varying_config_columns(a.results), *varying_config_columns(b.results)}
    key = [c for c in cols_a if c in cols_b and c in varying]

    rows: list[dict[str, Any]] = []
    ta, tb = _teacher(a), _teacher(b)
    if len(ta) or len(tb):
        rows.append(
            {"model": "teacher", **_row(Side(a, ta), Side(b, tb), metrics, direction, True)}
        )
    refs_a, refs_b = _references(a), _references(b)
    for name in dict.fromkeys([*refs_a, *refs_b]):
        side_a = Side(a, refs_a.get(name, pd.DataFrame()))
        side_b = Side(b, refs_b.get(name, pd.DataFrame()))
        row = _row(side_a, side_b, metrics, direction, False)
        row.update({f"d_{m}_interval": "— (reference)" for m in metrics})
        row.update(seeds_a=None, seeds_b=None)
        rows.append({"model": f"{name} (reference)", **row})

    confs_a, confs_b = _configurations(a, key), _configurations(b, key)
    index: dict[tuple[str, ...], tuple[list[Side], list[Side]]] = {}
    for which, confs in ((0, confs_a), (1, confs_b)):
        for match, side in confs:
            index.setdefault(match, ([], []))[which].append(side)
    unmatched: list[dict[str, Any]] = []
    n_matched = 0
    for in_a, in_b in index.values():
        values = [*in_a, *in_b][0].config
        if len(in_a) == 1 and len(in_b) == 1:
            n_matched += 1
            row = _row(in_a[0], in_b[0], metrics, direction, True)
            rows.append({"model": "configuration", **values, **row})
            continue
        for name, sides, others in (("A", in_a, in_b), ("B", in_b, in_a)):
            if len(sides) > 1:
                reason = f"{len(sides)} configurations of run {name} share these values"
            elif len(others) > 1:
                reason = f"{len(others)} candidates in the other run"
            else:
                reason = f"not in run {'B' if name == 'A' else 'A'}"
            for side in sides:
                unmatched.append(
                    {
                        "run": name,
                        **values,
                        "seeds": len(side.trials),
                        metric: side.mean(metric),
                        "reason": reason,
                    }
                )
    if n_matched == 0:
        shown = ", ".join(key) or "no config column varies"
        raise CompareError(
            f"no configuration in common (matched on: {shown}; A has {len(confs_a)} "
            f"configuration(s), B has {len(confs_b)})"
        )
    return Comparison(
        a=a,
        b=b,
        metric=metric,
        direction=direction,
        key=key,
        rows=pd.DataFrame(rows),
        unmatched=pd.DataFrame(unmatched),
        settings=_settings(a, b),
        only_a=[c for c in cols_a if c not in cols_b],
        only_b=[c for c in cols_b if c not in cols_a],
    )


# ----------------------------------------------------------------------------- rendering


def _run_line(label: str, run: RunData) -> str:
    man = run.manifest
    seeds = man.get("seeds") or sorted(
        students(run.results).get("seed", pd.Series()).dropna().unique()
    )
    commit = str(man.get("git_commit", "?"))[:12]
    return f"{label} = `{run.run_dir}` ({run.name}, commit `{commit}`, seeds {list(seeds)})"


def _delta_table(cmp: Comparison, rows: pd.DataFrame, lead: list[str]) -> Table:
    m = cmp.metric
    show = rows[lead].copy()
    show["seeds A"], show["seeds B"] = rows["seeds_a"], rows["seeds_b"]
    show[f"{m} A"], show[f"{m} B"] = rows[f"{m}_a"], rows[f"{m}_b"]
    show[f"Δ {m}"] = rows[f"d_{m}"]
    show[f"Δ {m} ci95"] = interval_cells(
        rows[f"d_{m}_low"].rename(m), rows[f"d_{m}_high"].rename(m)
    )
    show["interval over"] = rows[f"d_{m}_interval"]
    show["verdict"] = rows["verdict"]
    for c in COSTS:
        if c != m and f"d_{c}" in rows:
            show[f"Δ {c}"] = rows[f"d_{c}"]
            show[f"Δ {c} ci95"] = interval_cells(
                rows[f"d_{c}_low"].rename(c), rows[f"d_{c}_high"].rename(c)
            )
    return Table(format_table(show, {c: short_name(c) for c in lead}))


def compare_blocks(cmp: Comparison) -> list[Block]:
    """The comparison as report blocks (Markdown / HTML via :mod:`analysis.render`)."""
    m = cmp.metric
    better = "higher" if cmp.direction == "max" else "lower"
    blocks: list[Block] = [
        Heading(f"Run comparison: {cmp.a.name} (A) vs {cmp.b.name} (B)", 1),
        Para(_run_line("A", cmp.a) + "; " + _run_line("B", cmp.b) + "."),
    ]
    what = [
        f"Δ = B − A on `{m}` ({better} is better) and on {', '.join(c for c in COSTS if c != m)}."
    ]
    key = ", ".join(f"`{short_name(c)}`" for c in cmp.key) or "nothing (one configuration each)"
    what.append(f"Configurations matched on {key}.")
    if cmp.settings:
        shown = "; ".join(f"`{k}`: {a} → {b}" for k, a, b in cmp.settings[:20])
        more = f" (and {len(cmp.settings) - 20} more)" if len(cmp.settings) > 20 else ""
        what.append(f"Settings that differ between the runs: {shown}{more}.")
    else:
        what.append("The two studies have the same settings.")
    for label, cols in (("A", cmp.only_a), ("B", cmp.only_b)):
        if cols:
            what.append(f"Config columns only in {label} (not matched on): {', '.join(cols)}.")
    blocks.append(Para(" ".join(what)))
    blocks.append(
        Para(
            "95 % percentile bootstrap intervals (2000 resamples): *test examples, paired* "
            "resamples the same test examples in both runs' per-example tables (every seed's), "
            "so it reflects which examples were tested, not training-seed noise; *seeds, "
            "unpaired* resamples each run's seeds independently (too narrow with 3 seeds a side: "
            "about 81 % coverage). 'within noise' = the interval covers 0."
        )
    )
    rows = cmp.rows
    fixed = rows[rows["model"] != "configuration"]
    if not fixed.empty:
        blocks += [Heading("Teacher and reference rows"), _delta_table(cmp, fixed, ["model"])]
    confs = rows[rows["model"] == "configuration"]
    blocks += [Heading(f"Matched configurations ({len(confs)})"), _delta_table(cmp, confs, cmp.key)]
    blocks.append(Heading("Unmatched configurations"))
    if cmp.unmatched.empty:
        blocks.append(Para("None: every configuration of either run has its partner."))
    else:
        un = cmp.unmatched
        blocks.append(Table(format_table(un, {c: short_name(c) for c in cmp.key})))
    lat = [(r.manifest.get("latency") or {}).get("node") for r in (cmp.a, cmp.b)]
    if lat[0] and lat[1] and lat[0] != lat[1]:
        blocks.append(Para(f"Latency was timed on different nodes (A: {lat[0]}, B: {lat[1]})."))
    return blocks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.compare",
        description="Put two run directories side by side: matched configurations, B − A "
        "with 95 % intervals.",
    )
    parser.add_argument("run_a", type=Path, help="the run before the change (A)")
    parser.add_argument("run_b", type=Path, help="the run after the change (B)")
    parser.add_argument(
        "--metric", help="quality metric (default: the runs' report.quality_metric)"
    )
    parser.add_argument("--out", type=Path, help="write the comparison here (.md or .html)")
    args = parser.parse_args(argv)
    try:
        if args.out is not None and args.out.suffix not in (".md", ".html"):
            raise CompareError(f"--out must end in .md or .html, got {args.out}")
        runs = []
        for label, path in (("A", args.run_a), ("B", args.run_b)):
            try:
                runs.append(load_run(path))
            except FileNotFoundError:
                raise CompareError(
                    f"run {label}: {path} is not a run directory (no results.parquet)"
                ) from None
            except (OSError, ValueError) as e:  # a damaged parquet or manifest
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise CompareError(f"run {label}: cannot read {path}: {first}") from None
        cmp = compare_runs(*runs, metric=args.metric)
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    blocks = compare_blocks(cmp)
    if args.out is None:
        print(to_markdown(blocks), end="")
        return 0
    text = (
        to_html(blocks, f"{cmp.a.name} vs {cmp.b.name}")
        if args.out.suffix == ".html"
        else to_markdown(blocks)
    )
    try:
        write_atomic(args.out, text)
    except OSError as e:
        print(f"error: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
