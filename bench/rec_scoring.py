"""Catalogue scoring speed of the next-item models: users per second.

For each preset (``scratch:gpt2``, ``scratch:llama``) on the MovieLens-100K catalogue
(1,682 items + padding) and a batch of left-padded histories, times in turns:

* ``plain forward`` — the transformer body alone (``model.transformer`` / ``model.model``,
  same position ids, no KV cache), the hidden states of every position, no item scoring;
* ``item model`` — the engine's :class:`engine.tasks.item_models.GPT2ItemRanker` /
  ``LlamaItemRanker`` forward: body + the catalogue head on the pooled position (what every
  evaluation and every trial's latency runs);
* ``stock HF head`` — the stock ``*ForSequenceClassification`` with the same weights, which
  applies the catalogue head at every position and then pools;
* ``+ ranking`` — the item model's forward followed by the full-catalogue rank of each
  target with the user's earlier items excluded (:func:`engine.tasks.ranking.target_ranks`).

For the ``text`` family (``text:embedded:all-MiniLM-L6-v2``, MiniLM over ``--text-tokens``
tokens of user text) the same MovieLens-sized catalogue of title vectors:

* ``plain forward`` — the encoder alone (``model.bert``), no item scoring;
* ``text model`` — :class:`engine.tasks.text_ranker.TextItemRanker`: encoder, mean pooling,
  projection and the scaled cosine with every title vector;
* ``+ ranking`` — as above;
* ``catalogue encoding`` — encoding every title once (``--title-tokens`` tokens each) with the
  pretrained encoder, the one-time cost of a catalogue (per catalogue, not per user).

Median of ``--repeats`` timed rounds after ``--warmup``, each round one forward of the whole
batch, rounds of the variants interleaved; one process, ``--threads`` torch threads. GFLOPs per
user are fvcore's count on each model (:func:`engine.measure.count_gflops`). Writes a markdown
table to stdout (and ``--out``).

Usage::

    python -m bench.rec_scoring --out reports/benchmarks/rec_scoring.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2ForSequenceClassification, LlamaForSequenceClassification

from engine.measure import count_gflops
from engine.tasks.item_models import build_item_model
from engine.tasks.ranking import target_ranks

__all__ = ["main"]

STOCK = {
    "scratch:gpt2": GPT2ForSequenceClassification,
    "scratch:llama": LlamaForSequenceClassification,
}


def _timed(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():  # interleaved: drift hits every variant alike
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def run(preset: str, items: int, users: int, length: int, repeats: int, warmup: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    model = build_item_model(preset, items + 1, seed=0).eval()
    stock = STOCK[preset](model.config).eval()
    stock.load_state_dict(model.state_dict())
    body = model.transformer if hasattr(model, "transformer") else model.model
    ids = torch.randint(1, items + 1, (users, length), generator=g)
    lengths = torch.randint(3, length + 1, (users,), generator=g)
    ids[torch.arange(length).unsqueeze(0) < (length - lengths).unsqueeze(1)] = 0  # left padding
    mask = (ids != 0).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as the item models count them
    seen = torch.randint(1, items + 1, (users, 60), generator=g)
    targets = torch.randint(1, items + 1, (users,), generator=g)

    def ranked() -> object:
        scores = model(input_ids=ids, attention_mask=mask).logits
        return target_ranks(scores, targets, seen, padding_id=0)

    with torch.inference_mode():
        fns = {
            "plain forward (body only)": lambda: body(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
            ),
            "item model (body + catalogue head at the pooled position)": lambda: model(
                input_ids=ids, attention_mask=mask
            ),
            "stock HF head (catalogue head at every position)": lambda: stock(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
            ),
            "item model + full-catalogue ranking (seen excluded)": ranked,
        }
        med = _timed(fns, repeats, warmup)
    gflops = {
        "item model (body + catalogue head at the pooled position)": count_gflops(model, length),
        "stock HF head (catalogue head at every position)": count_gflops(stock, length),
    }
    return [
        {
            "preset": preset,
            "variant": name,
            "median_ms": 1000 * t,
            "users_per_s": users / t,
            "gflops_per_user": gflops.get(name),
        }
        for name, t in med.items()
    ]


def run_text(
    items: int, users: int, tokens: int, title_tokens: int, repeats: int, warmup: int
) -> list[dict]:
    from engine.tasks.text_ranker import build_text_ranker

    name = "text:embedded:all-MiniLM-L6-v2"
    g = torch.Generator().manual_seed(0)
    model = build_text_ranker(name, items + 1, seed=0).eval()
    model.set_items(torch.randn(items + 1, model.config.hidden_size, generator=g))
    vocab = model.config.vocab_size
    ids = torch.randint(1000, vocab, (users, tokens), generator=g)
    lengths = torch.randint(tokens // 2, tokens + 1, (users,), generator=g)
    mask = (torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(1)).long()  # right padding
    ids = ids * mask
    titles = torch.randint(1000, vocab, (items, title_tokens), generator=g)
    title_mask = torch.ones_like(titles)
    seen = torch.randint(1, items + 1, (users, 60), generator=g)
    targets = torch.randint(1, items + 1, (users,), generator=g)

    def ranked() -> object:
        scores = model(input_ids=ids, attention_mask=mask).logits
        return target_ranks(scores, targets, seen, padding_id=0)

    def catalogue() -> object:
        return [
            model.bert(input_ids=titles[i : i + 256], attention_mask=title_mask[i : i + 256])
            for i in range(0, items, 256)
        ]

    with torch.inference_mode():
        fns = {
            "plain forward (encoder only)": lambda: model.bert(input_ids=ids, attention_mask=mask),
            "text model (encoder + projection + cosine with every title)": lambda: model(
                input_ids=ids, attention_mask=mask
            ),
            "text model + full-catalogue ranking (seen excluded)": ranked,
        }
        med = _timed(fns, repeats, warmup)
        t0 = time.perf_counter()
        catalogue()
        once = time.perf_counter() - t0
    gflops = {
        "text model (encoder + projection + cosine with every title)": count_gflops(model, tokens)
    }
    rows = [
        {
            "preset": name,
            "variant": k,
            "median_ms": 1000 * t,
            "users_per_s": users / t,
            "gflops_per_user": gflops.get(k),
        }
        for k, t in med.items()
    ]
    rows.append(
        {
            "preset": name,
            "variant": f"catalogue encoding, once per catalogue ({items} titles, 1 round)",
            "median_ms": 1000 * once,
            "users_per_s": float("nan"),
            "gflops_per_user": None,
        }
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1682)
    ap.add_argument("--users", type=int, default=256)
    ap.add_argument("--length", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--text-users", type=int, default=64)
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--title-tokens", type=int, default=16)
    ap.add_argument("--skip-text", action="store_true", help="the sequence models only")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for preset in STOCK:
        rows += run(preset, args.items, args.users, args.length, args.repeats, args.warmup)
    if not args.skip_text:
        rows += run_text(
            args.items, args.text_users, args.text_tokens, args.title_tokens,
            args.repeats, args.warmup,
        )  # fmt: skip
    lines = [
        f"Device: CPU ({platform.processor() or platform.machine()}), {args.threads} torch "
        f"thread(s), torch {torch.__version__}; catalogue {args.items} items, batch "
        f"{args.users} users × {args.length} items (text family: {args.text_users} users × "
        f"{args.text_tokens} tokens); median of {args.repeats} interleaved rounds after "
        f"{args.warmup} warm-up.",
        "",
        "| preset | variant | median ms / batch | users / s | fvcore GFLOPs / user |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        gf = "—" if r["gflops_per_user"] is None else f"{r['gflops_per_user']:.4f}"
        ups = "—" if np.isnan(r["users_per_s"]) else f"{r['users_per_s']:,.0f}"
        lines.append(f"| {r['preset']} | {r['variant']} | {r['median_ms']:.2f} | {ups} | {gf} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
