"""Benchmark the data path: Ray Data vs one process, rows/s and the driver's peak RSS.

Generates an Amazon-2023-schema corpus (gzipped JSON Lines, ``--files`` files of
``--rows-per-file`` rows each; 1 % planted malformed lines) in a temp dir, then measures, each
in a fresh subprocess so peak RSS is the run's own:

* ``ray``: the engine's path — :func:`engine.data.read.parse_files` (one task per file: read,
  gunzip, parse, validate) → ``_annotate`` (keys, hash split, labels) → the ``Tokenise``
  callable class under an ``ActorPoolStrategy`` sized by ``_pool_size`` — streamed with
  ``iter_batches`` (the driver only counts rows);
* ``loop``: the same reader, annotation and tokenizer, called in a single-process loop over
  the files in batches of 4096 rows (no Ray).

Both read + normalise + tokenise every valid row. Driver memory is reported for the first
``--small-files`` files and for all files, to show whether it grows with the corpus.
(The dedup/cap decisions of ``prepare_data`` are not in this path: see
``bench/data_driver_memory.py``; ``--keys`` measures the per-row key table a driver-side
dedup would hold, in bytes per row.)

Usage::

    python bench/data_throughput.py --files 8 --rows-per-file 250000 --small-files 2
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main"]

# the per-row key table the former driver-side dedup held (see data_driver_memory.py)
KEY_COLUMNS = ["uid", "timestamp", "reason", "row_key", "content_key", "hash", "split"]

WORDS = [
    "great",
    "fine",
    "poor",
    "soft",
    "sturdy",
    "cheap",
    "broke",
    "love",
    "works",
    "battery",
    "colour",
    "size",
    "fits",
    "small",
    "large",
    "quality",
    "price",
    "delivery",
    "returned",
    "recommend",
    "again",
    "would",
    "never",
    "always",
    "daughter",
    "gift",
]


def generate(path: Path, rows: int, seed: int, dup_every: int = 0) -> int:
    """Write ``rows`` 2023-schema reviews (1 % malformed) to ``path``; return bad lines.

    ``dup_every`` > 0 makes every ``dup_every``-th line an exact copy of the line before."""
    rng = random.Random(seed)
    bad = 0
    last = ""
    with gzip.open(path, "wt", compresslevel=1) as fh:
        for i in range(rows):
            if i % 100 == 99:
                fh.write('{"rating": 5.0, "title": "cut off\n')
                bad += 1
                continue
            if dup_every and i % dup_every == dup_every - 1 and last:
                fh.write(last)
                continue
            n = rng.randint(8, 60)
            obj = {
                "rating": float(rng.randint(1, 5)),
                "title": " ".join(rng.choices(WORDS, k=3)),
                "text": " ".join(rng.choices(WORDS, k=n)),
                "images": [],
                "asin": f"B{rng.randrange(10**8):08d}",
                "parent_asin": f"P{rng.randrange(200_000):07d}",
                "user_id": f"A{seed:02d}{rng.randrange(10**9):09d}",
                "timestamp": 1_600_000_000_000 + rng.randrange(10**11),
                "helpful_vote": rng.randint(0, 9),
                "verified_purchase": rng.random() < 0.9,
            }
            last = json.dumps(obj) + "\n"
            fh.write(last)
    return bad


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def private_mib() -> float:
    """Private (unshared) resident memory of this process: RSS less the shared pages, such
    as Ray's object store mapped into the driver while it reads blocks zero-copy."""
    total = 0
    with open("/proc/self/smaps_rollup") as fh:
        for line in fh:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total / 1024


class PeakPrivate:
    """Samples :func:`private_mib` every 0.2 s in a thread; ``peak`` is the largest seen."""

    def __init__(self) -> None:
        import threading

        self.peak = private_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, private_mib())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, private_mib())
        return self.peak


def run_ray(files: list[str], tokenizer: str, max_length: int) -> dict:
    import ray
    from ray.data.expressions import col

    from engine.data.pipeline import TOKENIZER_CPUS, Tokenise, _annotate, _pool_size
    from engine.data.read import get_corpus, parse_files

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rss_after_init = peak_rss_mib()
    t0 = time.perf_counter()
    corpus = get_corpus("amazon-2023")
    index = {f: i for i, f in enumerate(files)}
    ds = (
        parse_files(corpus, [Path(f) for f in files])
        .map_batches(
            _annotate,
            batch_format="pyarrow",
            fn_kwargs={
                "file_index": index,
                "seed": 0,
                "train_fraction": 0.8,
                "valid_fraction": 0.1,
            },
            num_cpus=0.5,
        )
        .filter(expr=col("reason") == "")
        .map_batches(
            Tokenise,
            fn_constructor_kwargs={"tokenizer_path": tokenizer, "max_length": max_length},
            compute=ray.data.ActorPoolStrategy(size=_pool_size()),
            num_cpus=TOKENIZER_CPUS,
            batch_size=512,
            batch_format="numpy",
        )
    )
    rows = 0
    tokens = 0
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        rows += len(batch["labels"])
        tokens += int(batch["attention_mask"].sum())
    wall = time.perf_counter() - t0
    ray.shutdown()
    return {"rows": rows, "tokens": tokens, "wall_s": wall, "rss_after_init_mib": rss_after_init}


def run_loop(files: list[str], tokenizer: str, max_length: int) -> dict:
    import pyarrow as pa

    from engine.data.pipeline import Tokenise, _annotate
    from engine.data.read import get_corpus, read_bytes
    from engine.data.registry import ROW_SCHEMA

    t0 = time.perf_counter()
    corpus = get_corpus("amazon-2023")
    tok = Tokenise(tokenizer, max_length)
    index = {f: i for i, f in enumerate(files)}
    rows = 0
    tokens = 0
    for f in files:
        chunk: list[dict] = []
        for record, row in enumerate(corpus(f, read_bytes(f), {})):
            row["record"] = record
            chunk.append(row)
            if len(chunk) == 4096:
                rows, tokens = _loop_chunk(
                    chunk, tok, index, rows, tokens, pa, ROW_SCHEMA, _annotate
                )
                chunk = []
        if chunk:
            rows, tokens = _loop_chunk(chunk, tok, index, rows, tokens, pa, ROW_SCHEMA, _annotate)
    return {"rows": rows, "tokens": tokens, "wall_s": time.perf_counter() - t0}


def _loop_chunk(chunk, tok, index, rows, tokens, pa, schema, annotate):
    import pyarrow.compute as pc

    schema = schema.append(pa.field("record", pa.int64()))
    t = annotate(pa.Table.from_pylist(chunk, schema=schema), index, 0, 0.8, 0.1)
    t = t.filter(pc.equal(t["reason"], ""))
    batch = {c: t[c].to_numpy(zero_copy_only=False) for c in t.column_names}
    for start in range(0, t.num_rows, 512):
        out = tok({k: v[start : start + 512] for k, v in batch.items()})
        rows += len(out["labels"])
        tokens += int(out["attention_mask"].sum())
    return rows, tokens


def run_keys(files: list[str]) -> dict:
    """Driver memory of ``prepare_data``'s key table (dedup/caps), bytes per row."""
    import pyarrow as pa

    from engine.data.pipeline import _annotate
    from engine.data.read import get_corpus, read_bytes
    from engine.data.registry import ROW_SCHEMA

    corpus = get_corpus("amazon-2023")
    index = {f: i for i, f in enumerate(files)}
    parts = []
    for f in files:
        t = pa.Table.from_pylist(list(corpus(f, read_bytes(f), {})), schema=ROW_SCHEMA)
        t = t.append_column("record", pa.array(range(t.num_rows), pa.int64()))
        parts.append(_annotate(t, index, 0, 0.8, 0.1).select(KEY_COLUMNS))  # the former design
    keys = pa.concat_tables(parts).to_pandas()
    n = len(keys)
    return {"rows": n, "key_bytes_per_row": keys.memory_usage(deep=True).sum() / n}


def child(args: argparse.Namespace) -> None:
    files = args.child_files.split(",")
    sampler = PeakPrivate()
    fn = {"ray": run_ray, "loop": run_loop}.get(args.mode)
    if args.mode == "keys":
        out = run_keys(files)
    else:
        assert fn is not None
        out = fn(files, args.tokenizer, args.max_length)
    out["peak_rss_mib"] = peak_rss_mib()
    out["peak_private_mib"] = sampler.stop()
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    from engine.models import embedded_model_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--rows-per-file", type=int, default=250_000)
    p.add_argument("--small-files", type=int, default=2)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--modes", default="ray,loop")
    p.add_argument("--keys", action="store_true", help="also measure the dedup key table")
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--child-files", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", default=str(embedded_model_path()), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="data-bench-") as tmp:
        t0 = time.perf_counter()
        files, bad = [], 0
        for i in range(args.files):
            f = Path(tmp) / f"Cat{i:02d}.jsonl.gz"
            bad += generate(f, args.rows_per_file, seed=i)
            files.append(str(f))
        size = sum(os.path.getsize(f) for f in files)
        print(
            f"generated {args.files} x {args.rows_per_file} rows ({bad} malformed), "
            f"{size / 2**20:.0f} MiB gzipped, in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        sets = {"small": files[: args.small_files], "full": files}
        modes = args.modes.split(",") + (["keys"] if args.keys else [])
        for label, chosen in sets.items():
            for mode in modes:
                cmd = [sys.executable, __file__, "--mode", mode, "--child-files", ",".join(chosen)]
                cmd += ["--max-length", str(args.max_length), "--tokenizer", args.tokenizer]
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                line = next(
                    (ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None
                )
                if line is None:
                    print(f"{label} {mode}: FAILED\n{out.stderr[-3000:]}", flush=True)
                    continue
                res = json.loads(line[7:])
                rate = res["rows"] / res["wall_s"] if "wall_s" in res else float("nan")
                print(
                    f"{label:5s} {mode:4s} files={len(chosen)} "
                    + " ".join(
                        f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in res.items()
                    )
                    + (f" rows_per_s={rate:.0f}" if "wall_s" in res else ""),
                    flush=True,
                )


if __name__ == "__main__":
    main()
