"""Benchmark the importance engine against a plain PyTorch loop (run by hand, not a test).

Measures, on one calibration set (``--batches`` × ``--batch`` random token sequences):

1. samples/s of a plain fwd+bwd loop (the floor: what one backward pass costs);
2. ``fisher`` alone (the empirical Fisher from per-example gradient norms, ghost norms in
   one backward) and the four gradient-sharing methods together (fisher, fisher_mask,
   gradient, taylor — one shared backward per batch), each as a ratio to (1); goal for
   fisher ≤ 2×;
3. peak tensor memory of one batch: plain fwd+bwd vs fisher, and what materialising
   per-example weight gradients of the largest block would take (``batch × block
   parameters × 4 bytes``), so the reader sees fisher's memory does not grow with it;
4. wall time of the ten base methods together, as a multiple of one plain fwd+bwd pass over
   the calibration set.

Usage::

    python bench/importance.py --model minilm --batch 32 --seq 64 --device cpu
    python bench/importance.py --model minilm --batch 16 --seq 64 --threads 1 --clock cpu
    python bench/importance.py --model bert-base --batch 64 --seq 128 --device cuda --ray
    python bench/importance.py --model tiny --batch 8 --seq 16 --repeats 2 --json out.json

``--json OUT`` also writes the figures printed (samples/s, ratios, peaks, per-method times) to
``OUT``; ``--model tiny`` (2 BERT layers, hidden 64) is for CPU dry runs of the script.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.importance.compute import score_methods
from engine.importance.config import ImportanceConfig
from engine.models import EMBEDDED_TEACHER, build_classifier, layer_list

__all__ = ["main"]

GRADIENT_METHODS = ("fisher", "fisher_mask", "gradient", "taylor")
TEN_METHODS = (
    "fisher",
    "gradient",
    "taylor",
    "ablation",
    "block_influence",
    "attention",
    "mutual_info",
    "conductance",
    "mc_dropout",
    "activation_patching",
)


def build_model(name: str, num_labels: int = 5) -> torch.nn.Module:
    if name == "minilm":
        return build_classifier(EMBEDDED_TEACHER, num_labels)
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    if name == "tiny":
        cfg = BertConfig(
            vocab_size=2000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=128, num_labels=num_labels,
        )  # fmt: skip
        return BertForSequenceClassification(cfg)
    return BertForSequenceClassification(BertConfig(num_labels=num_labels))  # BERT-base shape


def make_data(n: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab, (n, seq))
    mask = np.ones_like(ids)
    mask[::2, (3 * seq) // 4 :] = 0  # half the rows padded in their last quarter
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": rng.integers(0, 5, n)}


CLOCK: Callable[[], float] = time.perf_counter


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn`` takes on ``CLOCK``: wall time, or with ``--clock cpu`` the process's CPU
    time (all threads), which other jobs on a shared machine barely disturb."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = CLOCK()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return CLOCK() - t


def peak_bytes(fn: Callable[[], object], device: torch.device) -> float:
    """Peak tensor bytes ``fn`` holds above what was allocated before it: CUDA's
    ``max_memory_allocated``, or on CPU the running sum of the profiler's allocation events
    (the same method as ``engine.measure.latency``)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - before)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        running += int(e.nbytes())
        peak = max(peak, running)
    return float(peak)


def plain_fwd_bwd(model: torch.nn.Module, batches: list[dict], device: torch.device) -> None:
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    )
    for b in batches:
        model.zero_grad(set_to_none=True)
        with autocast:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        F.cross_entropy(logits.float(), b["labels"]).backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", choices=("minilm", "bert-base", "tiny"), default="minilm")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or process CPU time (robust to other jobs on a shared CPU machine)",
    )
    ap.add_argument("--repeats", type=int, default=5, help="alternating timing repeats")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--conductance-steps", type=int, default=16)
    ap.add_argument("--skip-ten", action="store_true", help="skip the 10-method wall time")
    ap.add_argument("--ray", action="store_true", help="also time compute_importance on 1 actor")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args()
    out: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "json"}}

    def dump() -> None:
        """Write what is measured so far (a caller that stops this run keeps it)."""
        if args.json:
            tmp = args.json.with_suffix(".tmp")
            tmp.write_text(json.dumps(out, indent=2))
            tmp.replace(args.json)

    device = torch.device(args.device)
    global CLOCK
    if args.clock == "cpu":
        if device.type == "cuda":
            ap.error("--clock cpu measures CPU work; use wall time on CUDA")
        CLOCK = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args.model).to(device).eval()
    out["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    vocab = int(model.get_input_embeddings().num_embeddings)
    data = make_data(args.batches * args.batch, args.seq, vocab)
    batches = [
        {
            k: torch.from_numpy(v[i * args.batch : (i + 1) * args.batch]).to(device)
            for k, v in data.items()
        }
        for i in range(args.batches)
    ]
    n = args.batches * args.batch
    cfg = ImportanceConfig(
        num_batches=args.batches,
        batch_size=args.batch,
        conductance_steps=args.conductance_steps,
        gpus_per_actor=1.0 if device.type == "cuda" else 0.0,
    )
    print(
        f"model={args.model} device={device} batch={args.batch} seq={args.seq} n={n} "
        f"threads={torch.get_num_threads()} clock={args.clock}"
    )

    # warm up both paths (kernels, allocator, autograd graph caches), then alternate them
    # --repeats times: on a shared machine the median ratio of adjacent runs is the stable
    # figure, single timings are not
    plain_fwd_bwd(model, batches[:1], device)
    score_methods(model, batches[:1], GRADIENT_METHODS, cfg)
    score_methods(model, batches[:1], ("fisher",), cfg)
    runs: dict[str, list[float]] = {"plain": [], "fisher": [], "four": []}
    for _ in range(args.repeats):
        runs["plain"].append(timed(lambda: plain_fwd_bwd(model, batches, device), device))
        runs["fisher"].append(
            timed(lambda: score_methods(model, batches, ("fisher",), cfg), device)
        )
        runs["four"].append(
            timed(lambda: score_methods(model, batches, GRADIENT_METHODS, cfg), device)
        )
    t_plain = float(np.median(runs["plain"]))
    out["plain"] = {"samples_per_s": n / t_plain, "median_s": t_plain, "runs_s": runs["plain"]}
    print(f"plain fwd+bwd:           {n / t_plain:10.1f} samples/s  (median {t_plain:.2f} s)")
    for key, label in (("fisher", "fisher"), ("four", "+".join(GRADIENT_METHODS))):
        ratios = [g / p for g, p in zip(runs[key], runs["plain"], strict=True)]
        t = float(np.median(runs[key]))
        out[key] = {
            "methods": list(GRADIENT_METHODS) if key == "four" else ["fisher"],
            "samples_per_s": n / t,
            "median_s": t,
            "ratio_to_plain_median": float(np.median(ratios)),
            "ratio_to_plain_min": min(ratios),
            "ratio_to_plain_max": max(ratios),
            "runs_s": runs[key],
        }
        print(
            f"engine {label}: {n / t:10.1f} samples/s (median {t:.2f} s); ratio to plain: "
            f"median {np.median(ratios):.2f}×, min {min(ratios):.2f}×, max {max(ratios):.2f}× "
            f"over {args.repeats} alternating repeats"
        )

    one = batches[:1]
    plain_peak = peak_bytes(lambda: plain_fwd_bwd(model, one, device), device)
    fisher_peak = peak_bytes(lambda: score_methods(model, one, ("fisher",), cfg), device)
    block_params = max(sum(p.numel() for p in blk.parameters()) for blk in layer_list(model))
    out["peak_bytes"] = {
        "plain_fwd_bwd": plain_peak,
        "fisher": fisher_peak,
        "per_example_block_grads": float(args.batch * block_params * 4),
    }
    dump()
    print(
        f"peak tensor memory of one batch: plain fwd+bwd {plain_peak / 2**20:.1f} MiB, "
        f"fisher {fisher_peak / 2**20:.1f} MiB ({fisher_peak / plain_peak:.2f}×); per-example "
        f"weight gradients of one block would take {args.batch * block_params * 4 / 2**20:.1f} MiB "
        f"(batch {args.batch} × {block_params / 1e6:.2f} M parameters × 4 B)"
    )

    if not args.skip_ten:
        t_ten = timed(lambda: score_methods(model, batches, TEN_METHODS, cfg), device)
        print(f"10 methods:              {t_ten:.2f} s = {t_ten / t_plain:.1f}× one fwd+bwd pass")
        out["ten_methods"] = {"s": t_ten, "ratio_to_plain": t_ten / t_plain, "per_method": {}}
        for m in TEN_METHODS:
            t_m = timed(lambda m=m: score_methods(model, batches, (m,), cfg), device)
            print(f"  {m:<20} {t_m:7.2f} s  {t_m / t_plain:6.1f}×")
            out["ten_methods"]["per_method"][m] = {"s": t_m, "ratio_to_plain": t_m / t_plain}
            dump()

    if args.ray:
        import ray

        from engine.importance.runner import compute_importance

        ray.init(include_dashboard=False, log_to_driver=False)
        ray_cfg = cfg.model_copy(update={"methods": GRADIENT_METHODS})
        t_ray = timed(lambda: compute_importance(model, data, ray_cfg), device)
        print(f"compute_importance (1 actor, incl. start-up): {t_ray:.2f} s")
        out["ray_one_actor_s"] = t_ray
        ray.shutdown()
    out["complete"] = True
    dump()


if __name__ == "__main__":
    main()
