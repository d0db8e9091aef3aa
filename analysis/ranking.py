"""Report section of ranking runs: which protocol the figures use, and full vs sampled side by
side.

A next-item run's metric columns say their protocol in ``ranking`` (``full``: every catalogue
item is a candidate except the user's earlier items; ``sampled-N``: the target among N drawn
negatives). With a full ranking the engine also reports the sampled figures (``sampled_*``
columns, protocol in ``sampled_ranking``); this section puts them beside the full ones for
the teacher, the reference rows and the best student (by the report's quality metric, one
seed's row), because sampled metrics overstate quality severalfold (Krichene & Rendle, KDD
2020).

:func:`retention_blocks` answers "how much of the teacher does each depth keep": for the best
configuration at each depth (by mean validation NDCG@10 over its seeds), its test NDCG@10 and
its ratio to the teacher's, with paired BCa bootstrap intervals that resample the **test
users** (each user's NDCG@10 averaged over the configuration's seeds first), read from
``rankings/<trial_id>.parquet``. Coverage (tests/analysis/test_ranking.py, 200 simulated
studies of 300 users, nominal 95 %): 93.5 %.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.render import Block, Heading, Para, column_table
from analysis.rundir import TEACHER_ID, RunData, better_first, students

__all__ = [
    "SHOWN",
    "per_user_ndcg",
    "ranking_blocks",
    "retention_blocks",
    "retention_interval",
    "transfer_blocks",
]

SHOWN = ("hr_at_10", "ndcg_at_10", "mrr")  # the figures compared across protocols


def _protocol_text(label: str, n_users: int | None) -> str:
    users = f" over {n_users} test users" if n_users else ""
    if label == "full":
        return (
            f"Ranking protocol: **full**{users} — every catalogue item is a candidate except "
            "padding and the items the user interacted with before the target (excluded); a "
            "candidate scored equal to the target ranks ahead of it (pessimistic ties). "
            "Per-user ranks are in `rankings/<trial_id>.parquet`."
        )
    return (
        f"Ranking protocol: **{label}**{users} — the target among randomly drawn items the "
        "user never interacted with. Sampled metrics overstate quality and can reorder "
        "models (Krichene & Rendle, KDD 2020); they are not comparable with full-ranking "
        "figures."
    )


def ranking_blocks(run: RunData) -> list[Block]:
    """Nothing for runs without a ``ranking`` column (classification, regression)."""
    df = run.results
    if "ranking" not in df or df["ranking"].dropna().empty:
        return []
    label = str(df["ranking"].dropna().iloc[0])
    n_users = (run.manifest.get("data") or {}).get("stats", {}).get("split_sizes", {}).get("test")
    blocks: list[Block] = [Heading("Ranking protocol"), Para(_protocol_text(label, n_users))]
    stats = (run.manifest.get("data") or {}).get("stats", {})
    blocks += [Para(f"Data warning: {w}.") for w in stats.get("warnings") or []]
    side = [f"sampled_{m}" for m in SHOWN]
    if not all(c in df for c in side) or df[side[0]].dropna().empty:
        return blocks
    sampled = str(df["sampled_ranking"].dropna().iloc[0]) if "sampled_ranking" in df else "sampled"
    rows: list[dict[str, object]] = []

    def add(name: str, values: pd.Series | dict) -> None:
        row: dict[str, object] = {"model": name}
        for m in SHOWN:
            full, samp = values.get(m), values.get(f"sampled_{m}")
            row[f"{m} ({label})"] = full
            row[f"{m} ({sampled})"] = samp
            if full is not None and samp is not None and pd.notna(full) and float(full) > 0:
                row[f"{m} ratio"] = float(samp) / float(full)
        rows.append(row)

    teacher = df[df["trial_id"] == TEACHER_ID] if "trial_id" in df else df.iloc[:0]
    for _, t in teacher.iterrows():
        add("teacher", t)
    refs = run.references
    for _, r in refs.iterrows() if not refs.empty else []:
        add(f"{r['trial_id']} (reference)", r)
    ok = students(df)
    ok = ok[ok["status"] == "ok"] if "status" in ok else ok
    quality = run.quality_metric
    if quality in ok and not ok[quality].dropna().empty:
        best = ok.sort_values(quality, ascending=better_first(run.quality_direction)).iloc[0]
        seed = best.get("seed")
        seed = int(seed) if seed is not None and pd.notna(seed) else "?"
        add(f"best student ({best['trial_id']}, seed {seed})", best)
    table = pd.DataFrame(rows)
    cols = ["model", *[c for c in table.columns if c != "model"]]
    blocks += [
        Para(
            f"The same models under both protocols (test split; {sampled} draws are seeded per "
            "user). The ratio column is sampled ÷ full."
        ),
        column_table(table, cols),
    ]
    return blocks


def per_user_ndcg(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """Each user's NDCG@k from the target's 0-based rank (one relevant item)."""
    r = np.asarray(ranks, dtype=np.float64)
    return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)


def retention_interval(
    student: np.ndarray,
    teacher: np.ndarray,
    *,
    level: float = 0.95,
    samples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``mean(student) / mean(teacher)`` over the same users, and its paired BCa bootstrap
    interval (users resampled with their pair of values kept together)."""
    from scipy.stats import bootstrap

    s, t = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
    if s.shape != t.shape or s.size < 2 or t.mean() == 0:
        return (float("nan"),) * 3
    ratio = float(s.mean() / t.mean())

    def stat(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return a.mean(axis=axis) / b.mean(axis=axis)

    res = bootstrap(
        (s, t), stat, paired=True, vectorized=True, n_resamples=samples,
        confidence_level=level, method="BCa", rng=np.random.default_rng(seed),
    )  # fmt: skip
    return ratio, float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean_interval(x: np.ndarray, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    from scipy.stats import bootstrap

    res = bootstrap(
        (np.asarray(x, np.float64),), np.mean, vectorized=True, n_resamples=2000,
        confidence_level=level, method="BCa", rng=np.random.default_rng(seed),
    )  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _user_ndcg(run_dir: Path, trial_ids: list[str], split: str = "test") -> pd.Series | None:
    """Per-user NDCG@10 averaged over these trials' rankings of ``split`` (``test``:
    ``rankings/<id>.parquet``; another: ``rankings/<split>/<id>.parquet``); None if any file
    is missing."""
    parts = []
    for tid in trial_ids:
        sub = run_dir / "rankings" if split == "test" else run_dir / "rankings" / split
        path = sub / f"{tid}.parquet"
        if not path.is_file():
            return None
        r = pd.read_parquet(path)
        parts.append(pd.Series(per_user_ndcg(r["rank"].to_numpy()), index=r["user_id"].astype(str)))
    return pd.concat(parts, axis=1).mean(axis=1)


def retention_blocks(run: RunData) -> list[Block]:
    """Best configuration per depth: NDCG@10 and retention of the teacher, users resampled."""
    df = run.results
    if "ranking" not in df or "ndcg_at_10" not in df or "student_layers" not in df:
        return []
    teacher_ids = df.loc[df["trial_id"] == TEACHER_ID, "trial_id"].tolist()
    teacher = _user_ndcg(run.run_dir, teacher_ids) if teacher_ids else None
    ok = students(df)
    ok = ok[ok["status"] == "ok"] if "status" in ok else ok
    if teacher is None or ok.empty or "config_id" not in ok:
        return []
    if "valid_ndcg_at_10" not in ok:
        return []
    means = ok.groupby("config_id").agg(
        ndcg=("ndcg_at_10", "mean"), valid=("valid_ndcg_at_10", "mean"),
        layers=("student_layers", "first"),
        gflops=("gflops", "mean"), seeds=("seed", "nunique"),
    )  # fmt: skip
    rows = []
    t_lo, t_hi = _mean_interval(teacher.to_numpy())
    t_row = df[df["trial_id"] == TEACHER_ID].iloc[0]
    rows.append({
        "model": "teacher", "layers": int(t_row["student_layers"]), "gflops": t_row["gflops"],
        "ndcg_at_10": teacher.mean(), "ndcg 95% CI": f"[{t_lo:.4f}, {t_hi:.4f}]",
        "retention": 1.0, "retention 95% CI": "—", "beyond noise": "—",
    })  # fmt: skip
    for layers, group in means.groupby("layers"):
        best = group["valid"].idxmax()  # chosen on validation, reported on test
        ids = ok.loc[ok["config_id"] == best, "trial_id"].tolist()
        user = _user_ndcg(run.run_dir, ids)
        if user is None:
            continue
        user = user.reindex(teacher.index)
        if user.isna().any():
            continue
        lo, hi = _mean_interval(user.to_numpy())
        ratio, r_lo, r_hi = retention_interval(user.to_numpy(), teacher.to_numpy())
        rows.append({
            "model": f"best {int(layers)}-block config {best} ({group.loc[best, 'seeds']} seed(s))",
            "layers": int(layers), "gflops": group.loc[best, "gflops"],
            "ndcg_at_10": user.mean(), "ndcg 95% CI": f"[{lo:.4f}, {hi:.4f}]",
            "retention": ratio, "retention 95% CI": f"[{r_lo:.3f}, {r_hi:.3f}]",
            "beyond noise": "yes" if not (r_lo <= 1.0 <= r_hi) else "no (CI holds 1)",
        })  # fmt: skip
    if len(rows) < 2:
        return []
    table = pd.DataFrame(rows)
    return [
        Heading("Retention of the teacher (test users resampled)"),
        Para(
            "For each depth, the configuration with the best mean validation NDCG@10 over its "
            "seeds, scored on test; each user's NDCG@10 "
            "is averaged over the configuration's seeds, then users are resampled (paired BCa "
            f"bootstrap, 2000 resamples, {len(teacher)} users). Retention = the student's mean "
            "NDCG@10 ÷ the teacher's on the same users; 'beyond noise' = its interval excludes "
            "1. Intervals reflect which users were tested, not training seeds."
        ),
        column_table(table, list(table.columns)),
    ]


def _best_per_depth(ok: pd.DataFrame) -> list[tuple[int, str, pd.Series]]:
    """(layers, config_id, its mean row) of the best configuration per depth by mean
    validation NDCG@10 over its seeds."""
    means = ok.groupby("config_id").agg(
        valid=("valid_ndcg_at_10", "mean"), layers=("student_layers", "first"),
        gflops=("gflops", "mean"), seeds=("seed", "nunique"),
    )  # fmt: skip
    return [
        (int(layers), str(g["valid"].idxmax()), g.loc[g["valid"].idxmax()])
        for layers, g in means.groupby("layers")
    ]


def transfer_blocks(run: RunData) -> list[Block]:
    """In-domain and cross-domain figures of the same models, side by side (runs with a
    ``transfer`` split: ``transfer_*`` columns, ``rankings/transfer/``)."""
    df = run.results
    if "transfer_ndcg_at_10" not in df or df["transfer_ndcg_at_10"].dropna().empty:
        return []
    stats = (run.manifest.get("data") or {}).get("stats", {})
    other = stats.get("transfer") or {}
    source = (run.manifest.get("data") or {}).get("corpus", "the study's corpus")
    blocks: list[Block] = [
        Heading("In-domain and cross-domain"),
        Para(
            f"Every model is trained on **{source}** ({stats.get('split_sizes', {}).get('test')}"
            f" test users) and also scored on **{other.get('corpus', 'another domain')}** "
            f"({other.get('users')} users, full ranking over its {other.get('items')} items, "
            "whose title vectors replace the training catalogue's), which no model saw in "
            "training. References: `zero_shot` = the untrained pretrained encoder (cosine of "
            "the user's text and each title); `popularity` = each domain's own most frequent "
            "training targets (knowledge of the target domain that the models do not have)."
        ),
    ]
    rows: list[dict[str, object]] = []
    teacher = df[df["trial_id"] == TEACHER_ID]
    for _, t in teacher.iterrows():
        rows.append({"model": "teacher", "gflops": t.get("gflops"),
                     "in-domain ndcg_at_10": t["ndcg_at_10"],
                     "cross-domain ndcg_at_10": t["transfer_ndcg_at_10"]})  # fmt: skip
    refs = run.references
    for _, r in refs.iterrows() if not refs.empty else []:
        rows.append({"model": f"{r['trial_id']} (reference)", "gflops": None,
                     "in-domain ndcg_at_10": r.get("ndcg_at_10"),
                     "cross-domain ndcg_at_10": r.get("transfer_ndcg_at_10")})  # fmt: skip
    ok = students(df)
    ok = ok[ok["status"] == "ok"] if "status" in ok else ok
    t_in = _user_ndcg(run.run_dir, teacher["trial_id"].tolist()) if len(teacher) else None
    t_x = (
        _user_ndcg(run.run_dir, teacher["trial_id"].tolist(), "transfer") if len(teacher) else None
    )
    if not ok.empty and {"config_id", "valid_ndcg_at_10", "student_layers"} <= set(ok.columns):
        for layers, best, agg in _best_per_depth(ok):
            ids = ok.loc[ok["config_id"] == best, "trial_id"].tolist()
            group = ok[ok["config_id"] == best]
            row: dict[str, object] = {
                "model": f"best {layers}-block config {best} ({int(agg['seeds'])} seed(s))",
                "gflops": agg["gflops"],
                "in-domain ndcg_at_10": group["ndcg_at_10"].mean(),
                "cross-domain ndcg_at_10": group["transfer_ndcg_at_10"].mean(),
            }
            for label, split, ref in (
                ("in-domain", "test", t_in),
                ("cross-domain", "transfer", t_x),
            ):
                user = _user_ndcg(run.run_dir, ids, split)
                if user is None or ref is None:
                    continue
                user = user.reindex(ref.index)
                if user.isna().any():
                    continue
                ratio, lo, hi = retention_interval(user.to_numpy(), ref.to_numpy())
                row[f"{label} retention"] = ratio
                row[f"{label} 95% CI"] = f"[{lo:.3f}, {hi:.3f}]"
            rows.append(row)
    table = pd.DataFrame(rows)
    blocks += [
        Para(
            "Students: the best configuration per depth by mean validation NDCG@10 (chosen "
            "in-domain), each figure the mean over its seeds. Retention = the student's mean "
            "NDCG@10 ÷ the teacher's on the same users of that domain, with a paired BCa "
            "bootstrap interval over those users (an interval holding 1: within noise)."
        ),
        column_table(table, list(table.columns)),
    ]
    return blocks
