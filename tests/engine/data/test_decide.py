"""Distributed dedup / counts / caps (engine.data.decide) against an independent driver-side
reference: the pandas implementation ``prepare_data`` used before the decisions moved into
Ray (every row's keys collected to the driver, then sorted, de-duplicated and capped).

Both read rows through the same readers and ``_annotate``; everything after that (which
copy survives, which rows fill a cap, counts, the bad-row list, cross-domain overlap) is
computed twice, independently, and must agree exactly, for several block counts.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import ray

from engine.data import DataConfig, PreparedData, prepare_data
from engine.data.config import EvalDataConfig
from engine.data.decide import cap_policy, choose, mark_block
from engine.data.pipeline import SPLITS, _annotate
from engine.data.read import bad_rows_of, collect, open_source
from tests.engine.data.conftest import tokenizer

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "data"

# --- the reference: the former driver-side implementation, in pandas ---------------------


def ref_dedup(keys: pd.DataFrame) -> pd.DataFrame:
    keys = keys.sort_values(["row_key", "timestamp", "uid"], kind="stable")
    valid = keys["reason"] == ""
    v = keys[valid]
    later = v.duplicated("row_key")
    copy = v.duplicated(["row_key", "content_key"])
    keys.loc[v.index[later & copy], "reason"] = "duplicate"
    keys.loc[v.index[later & ~copy], "reason"] = "repeated_user_item"
    return keys


def ref_cap(kept: pd.DataFrame, caps: dict[str, int | None]) -> pd.DataFrame:
    parts = []
    for split in SPLITS:
        part = kept[kept["split"] == split].sort_values(["hash", "row_key"])
        cap = caps[split]
        parts.append(part if cap is None else part.head(cap))
    return pd.concat(parts)


def ref_part(spec: DataConfig | EvalDataConfig, cfg: DataConfig, all_test: bool):
    src = open_source(spec, cfg.max_bad_fraction)
    rows = collect(src.rows)
    table = _annotate(
        rows,
        {f: i for i, f in enumerate(src.files)},
        cfg.seed,
        cfg.train_fraction,
        cfg.valid_fraction,
        spec.sample_fraction,
        all_test,
    )
    keys = table.select(["uid", "timestamp", "reason", "row_key", "content_key", "hash", "split"])
    keys = keys.to_pandas()
    keys["file"] = np.asarray(src.files, dtype=object)[keys["uid"].to_numpy() >> 32]
    return src, ref_dedup(keys), bad_rows_of(table)


def ref_counts(keys: pd.DataFrame, files: list[str]) -> list[tuple[str, dict[str, int]]]:
    counts: dict[str, Counter[str]] = {str(f): Counter() for f in files}
    for (file, reason), n in keys.groupby(["file", "reason"]).size().items():
        counts[file][reason] = int(n)
    return [(f, dict(c)) for f, c in counts.items()]


def reference(cfg: DataConfig) -> dict:
    """What the former implementation decided: row keys per split, counts, bad rows."""
    src, keys, bad = ref_part(cfg, cfg, all_test=False)
    kept = keys[keys["reason"] == ""]
    caps = {"train": cfg.train_size, "valid": cfg.valid_size, "test": cfg.test_size}
    reasons = Counter(keys["reason"])
    out = {
        "read": len(keys),
        "kept": len(kept),
        "reasons": {r or "kept": n for r, n in sorted(reasons.items())},
        "before_caps": {s: int((kept["split"] == s).sum()) for s in SPLITS},
        "files": ref_counts(keys, src.files),
        "bad": bad + src.item_bad_rows,
    }
    if cfg.eval is None:
        chosen = ref_cap(kept, caps)
    else:
        esrc, ekeys, ebad = ref_part(cfg.eval, cfg, all_test=True)
        out["in_domain_test"] = int((kept["split"] == "test").sum())
        kept = kept[kept["split"] != "test"]
        overlap = (ekeys["reason"] == "") & ekeys["row_key"].isin(set(kept["row_key"]))
        ekeys.loc[overlap, "reason"] = "in_train_corpus"
        ekept = ekeys[ekeys["reason"] == ""]
        chosen = pd.concat(
            [
                ref_cap(kept, {**caps, "test": None}),
                ref_cap(ekept, {"train": None, "valid": None, "test": cfg.test_size}),
            ]
        )
        out["eval_reasons"] = {r or "kept": n for r, n in sorted(Counter(ekeys["reason"]).items())}
        out["eval_overlap"] = int(overlap.sum())
        out["files"] = out["files"] + ref_counts(ekeys, esrc.files)
        out["bad"] = out["bad"] + ebad + esrc.item_bad_rows
    out["splits"] = {
        s: chosen[chosen["split"] == s].sort_values(["hash", "row_key"])["row_key"].tolist()
        for s in SPLITS
    }
    return out


def observed(got: PreparedData) -> dict:
    stats = got.stats
    reasons = {"kept": stats["kept"]}
    for name, key in [
        ("empty_text", "empty_text"),
        ("duplicate", "duplicates_removed"),
        ("repeated_user_item", "repeated_pairs_removed"),
        ("sampled_out", "sampled_out"),
    ]:
        if stats[key]:
            reasons[name] = stats[key]
    reasons.update(stats["bad_reasons"])
    out = {
        "read": stats["read"],
        "kept": stats["kept"],
        "reasons": reasons,
        "before_caps": stats["split_sizes_before_caps"],
        "files": [
            (r.path, {**({"": r.rows_kept} if r.rows_kept else {}), **r.skip_reasons})
            for r in got.files
            if not Path(r.path).name.startswith("meta_")
        ],
        "bad": got.bad_rows,
        "splits": {s: getattr(got, s)["row_key"].tolist() for s in SPLITS},
    }
    cross = stats.get("cross_domain")
    if cross:
        out["in_domain_test"] = cross["in_domain_test_rows_unused"]
        out["eval_reasons"] = cross["eval_reasons"]
        out["eval_overlap"] = cross["eval_pairs_dropped_as_in_train_corpus"]
    return out


CASES = {
    "womens-fixture-capped": dict(
        path=str(ASSETS / "womens" / "reviews.csv"),
        max_bad_fraction=0.5,
        train_size=12,
        valid_size=2,
        test_size=3,
    ),
    "amazon-fixture": dict(corpus="amazon-2018", path=str(ASSETS / "amazon"), max_bad_fraction=0.5),
    "amazon2023-sampled-capped": dict(
        corpus="amazon-2023",
        path=str(ASSETS / "amazon2023"),
        max_bad_fraction=0.5,
        sample_fraction=0.7,
        seed=5,
        train_size=4,
    ),
    "embedded-amazon-cross-domain": dict(
        corpus="amazon-2018",
        path="datasets/amazon-2018/All_Beauty_5.json.gz",
        train_size=300,
        valid_size=40,
        test_size=70,
        seed=2,
        eval={"corpus": "amazon-2018", "path": "datasets/amazon-2018"},
    ),
    "embedded-womens-capped": dict(train_size=400, valid_size=60, test_size=60, max_length=16),
}


# block (= hash partition) counts to run each case with; 1 puts every row in one partition
BLOCKS = {
    "womens-fixture-capped": (1, 7),
    "amazon-fixture": (3,),
    "amazon2023-sampled-capped": (2,),
    "embedded-amazon-cross-domain": (5,),
    "embedded-womens-capped": (3,),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_prepare_data_matches_the_driver_side_reference(ray_local, case: str) -> None:
    cfg = DataConfig(**CASES[case])
    exp = reference(cfg)
    assert exp["kept"] > 0 and sum(len(v) for v in exp["splits"].values()) > 0
    for num_blocks in BLOCKS[case]:
        got = observed(prepare_data(cfg, tokenizer(), num_blocks=num_blocks))
        for key in exp:
            assert got[key] == exp[key], (case, num_blocks, key)


def test_cross_domain_case_really_drops_seen_pairs_and_caps_bind(ray_local) -> None:
    """The comparison above would be weak if nothing were dropped or capped: check it is not."""
    exp = reference(DataConfig(**CASES["embedded-amazon-cross-domain"]))
    assert exp["eval_overlap"] > 50
    assert [len(exp["splits"][s]) for s in SPLITS] == [300, 40, 70]
    assert exp["before_caps"]["train"] > 300
    womens = reference(DataConfig(**CASES["embedded-womens-capped"]))
    assert womens["reasons"]["duplicate"] > 0 and womens["reasons"]["empty_text"] > 0
    amazon = reference(DataConfig(**CASES["amazon-fixture"]))
    assert (amazon["reasons"]["duplicate"], amazon["reasons"]["repeated_user_item"]) == (2, 3)
    assert len(amazon["bad"]) > 0


# --- the per-block pieces on planted tables ---------------------------------------------


def planted(n_pairs: int, seed: int) -> pa.Table:
    """Rows with repeated pairs, exact copies, equal timestamps and a few invalid rows."""
    rng = random.Random(seed)
    rows = []
    for p in range(n_pairs):
        for _copy in range(rng.choice([1, 1, 2, 3, 5])):
            rows.append(
                {
                    "row_key": f"k{p:04d}",
                    "content_key": f"c{p}-{rng.randrange(2)}",
                    "timestamp": rng.randrange(3),
                    "uid": len(rows) * 7919 % 100_003,
                    "reason": "" if rng.random() > 0.1 else "malformed_json",
                    "hash": p * 31 % 97,
                    "split": rng.choice(SPLITS),
                }
            )
    rng.shuffle(rows)
    return pa.Table.from_pylist(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mark_block_on_any_partition_of_pairs_equals_the_reference(seed: int) -> None:
    t = planted(300, seed)
    exp = ref_dedup(t.to_pandas()).set_index("uid")["reason"].to_dict()
    assert Counter(exp.values())["duplicate"] > 10
    assert Counter(exp.values())["repeated_user_item"] > 10
    # split the pairs over random partitions, in scrambled row order
    rng = random.Random(seed)
    owner = {k: rng.randrange(4) for k in set(t["row_key"].to_pylist())}
    got = {}
    for part in range(4):
        mask = pa.array([owner[k] == part for k in t["row_key"].to_pylist()])
        out = mark_block(t.filter(mask))
        got.update(zip(out["uid"].to_pylist(), out["reason"].to_pylist(), strict=True))
    assert got == exp


def test_mark_block_side_rows_mark_in_train_corpus_and_are_dropped() -> None:
    rows = [
        # eval side: pair a twice (the later one a repeat), b once, c invalid
        ("a", "x", 1, 10, "", 0),
        ("a", "y", 2, 11, "", 0),
        ("b", "z", 1, 12, "", 0),
        ("c", "w", 1, 13, "empty_text", 0),
        # training side: a and c seen
        ("a", "q", 0, 1, "", 1),
        ("c", "q", 0, 2, "", 1),
    ]
    names = ["row_key", "content_key", "timestamp", "uid", "reason", "_side"]
    t = pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})
    t = t.set_column(5, "_side", pa.array([r[5] for r in rows], pa.int8()))
    out = mark_block(t)
    assert "_side" not in out.column_names
    assert dict(zip(out["uid"].to_pylist(), out["reason"].to_pylist(), strict=True)) == {
        10: "in_train_corpus",
        11: "repeated_user_item",
        12: "",
        13: "empty_text",
    }


@pytest.mark.parametrize("num_blocks", [1, 4, 9])
def test_cap_policy_and_choose_keep_the_reference_rows(ray_local, num_blocks: int) -> None:
    t = planted(400, 7)
    t = t.set_column(
        t.schema.get_field_index("hash"),
        "hash",
        pa.array([random.Random(i).randrange(50) for i in range(t.num_rows)], pa.int64()),
    )
    t = t.set_column(
        t.schema.get_field_index("row_key"),
        "row_key",
        pa.array([f"r{i:05d}" for i in range(t.num_rows)]),
    )
    kept = t.to_pandas()
    kept = kept[kept["reason"] == ""]
    for caps in [
        {"train": 25, "valid": None, "test": 3},
        {"train": 10_000, "valid": 1, "test": None},
        {"train": None, "valid": None, "test": None},
    ]:
        exp = ref_cap(kept, caps)
        ds = ray.data.from_arrow(t).repartition(num_blocks).materialize()
        policy = cap_policy(ds, caps, SPLITS)
        got = pa.concat_tables(
            [choose(b, policy, ["uid", "split"]) for b in ray.get(ds.to_arrow_refs())]
        )
        assert sorted(got["uid"].to_pylist()) == sorted(exp["uid"].tolist())
    # a capped split needs its threshold; an uncapped one passes through by a rule
    assert policy == {"train": "all", "valid": "all", "test": "all"}
