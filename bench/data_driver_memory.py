"""Benchmark ``prepare_data`` as the corpus grows: the driver's peak memory and rows/s.

Generates Amazon-2023-schema corpora (gzipped JSON Lines, files of ``--rows-per-file`` rows;
1 % malformed lines and 2 % exact duplicate lines planted) and prepares each prefix of
``--sizes`` files with fixed split caps, each run in a fresh subprocess so its peak RSS is its
own:

* ``ray``: :func:`engine.data.prepare_data` — read, validate, annotate, de-duplicate (hash
  partitions), count, cap (per-block top-k) and tokenise the capped rows, on Ray;
* ``loop``: the same work in one process without Ray, the way a careful single-process
  script would do it: parse each file, keep a pandas key table of every row (uid, timestamp,
  reason, row_key, content_key, hash, split), de-duplicate and cap it, then read the files
  again and tokenise the chosen rows.

Both arms must choose the same rows (the script checks the row keys of every split).

Usage::

    python bench/data_driver_memory.py --rows-per-file 250000 --sizes 1,2,4,8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from data_throughput import PeakPrivate, generate, peak_rss_mib

__all__ = ["main"]

CAPS = {"train_size": 2000, "valid_size": 500, "test_size": 500}
KEYS = ["uid", "timestamp", "reason", "row_key", "content_key", "hash", "split"]


def run_ray(folder: str, tokenizer: str) -> dict:
    import ray

    from engine.data import DataConfig, prepare_data

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rss_after_init = peak_rss_mib()
    t0 = time.perf_counter()
    cfg = DataConfig(corpus="amazon-2023", path=folder, max_bad_fraction=0.05, **CAPS)
    data = prepare_data(cfg, tokenizer)
    wall = time.perf_counter() - t0
    ray.shutdown()
    return {
        "rows": data.stats["read"],
        "wall_s": wall,
        "rss_after_init_mib": rss_after_init,
        "duplicates": data.stats["duplicates_removed"],
        "bad": data.stats["bad"],
        "splits": {s: getattr(data, s)["row_key"].tolist() for s in ("train", "valid", "test")},
    }


def run_loop(folder: str, tokenizer: str) -> dict:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    from engine.data.pipeline import Tokenise, _annotate
    from engine.data.read import get_corpus, read_bytes
    from engine.data.registry import ROW_SCHEMA

    t0 = time.perf_counter()
    corpus = get_corpus("amazon-2023")
    files = sorted(str(p.resolve()) for p in Path(folder).iterdir())
    index = {f: i for i, f in enumerate(files)}
    schema = ROW_SCHEMA.append(pa.field("record", pa.int64()))

    def annotated(f: str) -> pa.Table:
        rows = list(corpus(f, read_bytes(f), {}))
        for i, row in enumerate(rows):
            row["record"] = i
        return _annotate(pa.Table.from_pylist(rows, schema=schema), index, 0, 0.8, 0.1)

    keys = pd.concat([annotated(f).select(KEYS).to_pandas() for f in files], ignore_index=True)
    keys = keys.sort_values(["row_key", "timestamp", "uid"], kind="stable")
    v = keys[keys["reason"] == ""]
    later, copy = v.duplicated("row_key"), v.duplicated(["row_key", "content_key"])
    keys.loc[v.index[later & copy], "reason"] = "duplicate"
    keys.loc[v.index[later & ~copy], "reason"] = "repeated_user_item"
    kept = keys[keys["reason"] == ""]
    caps = {"train": CAPS["train_size"], "valid": CAPS["valid_size"], "test": CAPS["test_size"]}
    chosen = pd.concat(
        [kept[kept["split"] == s].sort_values(["hash", "row_key"]).head(c) for s, c in caps.items()]
    )
    wanted = pa.array(chosen["uid"].to_numpy())
    tok = Tokenise(tokenizer, 64)
    splits: dict[str, list[tuple[int, str]]] = {s: [] for s in caps}
    for f in files:
        t = annotated(f)
        t = t.filter(pc.is_in(t["uid"], wanted))
        if t.num_rows == 0:
            continue
        batch = {c: t[c].to_numpy(zero_copy_only=False) for c in t.column_names}
        out = tok(batch)
        for h, key, split in zip(out["hash"], out["row_key"], out["split"], strict=True):
            splits[str(split)].append((int(h), str(key)))
    return {
        "rows": len(keys),
        "wall_s": time.perf_counter() - t0,
        "key_table_mib": keys.memory_usage(deep=True).sum() / 2**20,
        "duplicates": int((keys["reason"] == "duplicate").sum()),
        "splits": {s: [k for _, k in sorted(v)] for s, v in splits.items()},
    }


def child(args: argparse.Namespace) -> None:
    sampler = PeakPrivate()
    out = {"ray": run_ray, "loop": run_loop}[args.mode](args.folder, args.tokenizer)
    out["peak_rss_mib"] = peak_rss_mib()
    out["peak_private_mib"] = sampler.stop()
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    from engine.models import embedded_model_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows-per-file", type=int, default=250_000)
    p.add_argument("--sizes", default="1,2,4,8", help="files per corpus, comma-separated")
    p.add_argument("--modes", default="ray,loop")
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", default=str(embedded_model_path()), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        child(args)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="data-mem-") as tmp:
        t0 = time.perf_counter()
        files = []
        for i in range(max(sizes)):
            f = Path(tmp) / "all" / f"Cat{i:02d}.jsonl.gz"
            f.parent.mkdir(exist_ok=True)
            generate(f, args.rows_per_file, seed=i, dup_every=50)
            files.append(f)
        print(
            f"generated {len(files)} x {args.rows_per_file} rows in "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        for n in sizes:
            folder = Path(tmp) / f"n{n}"
            folder.mkdir()
            for f in files[:n]:
                (folder / f.name).symlink_to(f)
            chosen = {}
            for mode in args.modes.split(","):
                cmd = [sys.executable, __file__, "--mode", mode, "--folder", str(folder)]
                cmd += ["--tokenizer", args.tokenizer]
                load = os.getloadavg()
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                line = next(
                    (ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None
                )
                if line is None:
                    print(f"{n} files {mode}: FAILED\n{out.stderr[-3000:]}", flush=True)
                    continue
                res = json.loads(line[7:])
                chosen[mode] = res.pop("splits")
                res["rows_per_s"] = res["rows"] / res["wall_s"]
                res["load_before"] = load[0]
                res["load_after"] = os.getloadavg()[0]
                print(
                    f"{n * args.rows_per_file:>9,} rows {mode:4s} "
                    + " ".join(
                        f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in res.items()
                    ),
                    flush=True,
                )
            if len(chosen) == 2:
                print(f"  same rows chosen by both: {chosen['ray'] == chosen['loop']}", flush=True)


if __name__ == "__main__":
    main()
