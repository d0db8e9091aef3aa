"""Inference cost of compressed models: float vs bitsandbytes int8 / NF4 vs structural pruning.

One randomly initialised classifier (``--model bert-base``: BERT-base's shape; ``tiny`` for a
CPU dry run) is measured at ``--batch`` × ``--seq`` in these variants, each with the engine's
own :func:`engine.measure.latency.measure_latency` (p50/p95 latency after warm-up, peak memory =
weight bytes + the forward's activation peak, ``torch.cuda.max_memory_allocated`` on CUDA):

* ``fp32``  — the float model as built;
* ``bf16``  — its weights cast to bfloat16 (the baseline a GPU deployment would use);
* ``bnb_int8`` — bitsandbytes LLM.int8 (``Linear8bitLt``, outlier threshold 6) through
  :func:`engine.compress.quantize.quantize_model`;
* ``bnb_nf4`` — bitsandbytes NF4 (``Linear4bit``, bf16 compute);
* ``pruned_bf16`` — 25 % of attention heads and 50 % of FFN neurons removed by magnitude
  (:func:`engine.compress.prune.prune_structured_to`: smaller dense matrices), then bf16.

Random weights are fine here: latency and memory do not depend on the values (LLM.int8's
outlier path does, a little: random weights have few outliers, so int8 is if anything
flattered). A variant that cannot run on the device (bitsandbytes on a CPU without its
kernels) is reported as ``skipped`` with the reason; the others still run. The table shows
what quantization buys — memory, and speed only where it is measured.

Usage::

    python bench/inference.py --model bert-base --batch 64 --seq 128 --device cuda --json out.json
    python bench/inference.py --model tiny --batch 8 --seq 16 --device cpu --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.compress.prune import prune_structured_to
from engine.compress.quantize import QuantizeConfig, choose_backend, quantize_model
from engine.compress.structure import ffn_width
from engine.measure import count_params, measure_latency, weights_bytes
from engine.models import layer_list

__all__ = ["VARIANTS", "build_model", "main", "measure_variants"]

VARIANTS = ("fp32", "bf16", "bnb_int8", "bnb_nf4", "pruned_bf16")


def build_model(name: str, num_labels: int = 5, seed: int = 0) -> nn.Module:
    """A randomly initialised BERT classifier: BERT-base's shape, or a tiny one."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    if name == "bert-base":
        cfg = BertConfig(num_labels=num_labels)
    else:
        cfg = BertConfig(
            vocab_size=2000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=128, num_labels=num_labels,
        )  # fmt: skip
    cfg._attn_implementation = "sdpa"
    return BertForSequenceClassification(cfg).eval()


def _pruned(model: nn.Module, device: torch.device) -> nn.Module:
    m = copy.deepcopy(model).to(device)
    blocks = list(layer_list(m))
    heads = m.config.num_attention_heads * len(blocks)
    prune_structured_to(
        m,
        heads_removed=heads // 4,
        neurons_removed=[ffn_width(b) // 2 for b in blocks],
        criterion="magnitude",
        device=device,
    )
    return m.to(torch.bfloat16)


def _variant(name: str, model: nn.Module, device: torch.device) -> nn.Module:
    """Build one variant on ``device``; raises ValueError when it cannot run there."""
    if name == "fp32":
        return copy.deepcopy(model).to(device)
    if name == "bf16":
        return copy.deepcopy(model).to(device, torch.bfloat16)
    if name == "pruned_bf16":
        return _pruned(model, device)
    # the layers bitsandbytes leaves alone (embeddings, LayerNorm, head) run in the dtype its
    # matmul computes in, as in its Hugging Face integration: fp16 for LLM.int8, bf16 for NF4
    if name == "bnb_int8":
        cfg, dtype = QuantizeConfig(backend="bnb_int8"), torch.float16
    else:
        cfg = QuantizeConfig(backend="bnb_4bit", quant_type="nf4", compute_dtype="bfloat16")
        dtype = torch.bfloat16
    choice = choose_backend(cfg, device)  # raises when bitsandbytes cannot run here
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*inputs will be cast.*")
        return quantize_model(copy.deepcopy(model).to(dtype), cfg, choice.backend, choice.device)


def measure_variants(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    device: torch.device,
    *,
    repeats: int,
    warmup: int,
    variants: tuple[str, ...] = VARIANTS,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """One row per variant: ``variant, status`` and, when it ran, latency, memory and size."""
    rows: list[dict[str, Any]] = []
    for name in variants:
        row: dict[str, Any] = {"variant": name}
        t0 = time.perf_counter()
        try:
            m = _variant(name, model, device)
            inputs = {k: v.to(next(m.parameters()).device) for k, v in batch.items()}
            with warnings.catch_warnings():  # LLM.int8 casts each input to fp16, once a call
                warnings.filterwarnings("ignore", message=".*inputs will be cast.*")
                row.update(measure_latency(m, inputs, repeats=repeats, warmup=warmup))
            row.update(
                status="ok",
                params=int(count_params(m)),
                weights_bytes=int(weights_bytes(m)),
                device=str(next(m.parameters()).device),
            )
            del m
        except (ValueError, ImportError, RuntimeError) as e:
            row.update(status="skipped", reason=f"{type(e).__name__}: {str(e).splitlines()[0]}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        row["build_and_measure_s"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        log(_line(row))
    base = next((r for r in rows if r["variant"] == "bf16" and r["status"] == "ok"), None)
    for r in rows:
        if base is not None and r["status"] == "ok":
            r["latency_vs_bf16"] = r["latency_ms_p50"] / base["latency_ms_p50"]
            r["peak_mem_vs_bf16"] = r["peak_mem_bytes"] / base["peak_mem_bytes"]
    return rows


def _line(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return f"{r['variant']:<12} skipped: {r['reason']}"
    return (
        f"{r['variant']:<12} p50 {r['latency_ms_p50']:8.2f} ms  p95 {r['latency_ms_p95']:8.2f} ms  "
        f"peak {r['peak_mem_bytes'] / 2**20:8.1f} MiB  weights {r['weights_bytes'] / 2**20:7.1f} MiB"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", choices=("bert-base", "tiny"), default="bert-base")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", type=Path, help="write the rows (and the settings) here")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    model = build_model(args.model)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000 % vocab, vocab, (args.batch, args.seq), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"model={args.model} device={device} ({name}) batch={args.batch} seq={args.seq}")
    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    rows = measure_variants(
        model, batch, device, repeats=args.repeats, warmup=args.warmup, variants=variants
    )
    if args.json:
        settings = {k: getattr(args, k) for k in ("model", "batch", "seq", "repeats", "warmup")}
        out = {"settings": {**settings, "device": str(device), "device_name": name}, "rows": rows}
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
