"""Report section of ranking runs: which protocol the figures use, and full vs sampled side by
side.

A next-item run's metric columns say their protocol in ``ranking`` (``full``: every catalogue
item is a candidate except the user's earlier items; ``sampled-N``: the target among N drawn
negatives). With a full ranking the engine also reports the sampled figures (``sampled_*``
columns, protocol in ``sampled_ranking``); this section puts them beside the full ones for
the teacher, the reference rows and the best student (by the report's quality metric, one
seed's row), because sampled metrics overstate quality severalfold (Krichene & Rendle, KDD
2020).
"""

from __future__ import annotations

import pandas as pd

from analysis.render import Block, Heading, Para, column_table
from analysis.rundir import TEACHER_ID, RunData, better_first, students

__all__ = ["SHOWN", "ranking_blocks"]

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
