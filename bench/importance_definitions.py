"""Old vs new definitions of ``fisher`` and ``gradient`` on a study's fine-tuned teacher.

Until issue 12, ``fisher`` was the squared norm of the *batch-mean* gradient of each block's
parameters, ``Σ_θ (∂L_b/∂θ)²`` averaged over batches, and ``gradient`` its square root —
so ``gradient`` ranked layers exactly as ``fisher`` did. Now ``fisher`` is the empirical Fisher
trace ``(1/N) Σ_i ‖∂ℓ_i/∂θ_l‖²`` and ``gradient`` the output-representation saliency
``(1/N) Σ_i ‖∂ℓ_i/∂h_l‖``. This script computes all four on the same calibration batches of
the study's cached fine-tuned teacher (run the study once first) and prints the layer ranks,
the Kendall τ between each pair, and which layers each keeps at the study's keep sizes.
The old formulas are written out here from their definition (autograd of the batch loss), not
taken from old code.

Usage::

    python bench/importance_definitions.py importance
    python bench/importance_definitions.py ablation --keep 2 3
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import kendalltau

from engine.config import load_study
from engine.importance import IMPORTANCE
from engine.importance.runner import calibration_batches
from engine.models import layer_list, resolve_model_path
from engine.teacher import load_cache, load_model, teacher_key

__all__ = ["main", "old_definitions"]


def old_definitions(model: torch.nn.Module, batches: list[dict]) -> dict[str, np.ndarray]:
    """The pre-issue-12 ``fisher`` (batch-mean gradient, squared norm) and ``gradient`` (its
    square root), example-weighted over batches."""
    rows, sizes = [], []
    for b in batches:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        loss = F.cross_entropy(logits.float(), b["labels"])
        row = []
        for block in layer_list(model):
            gs = torch.autograd.grad(loss, list(block.parameters()), retain_graph=True)
            row.append(sum(float(g.double().pow(2).sum()) for g in gs))
        rows.append(row)
        sizes.append(len(b["labels"]))
    mat, w = np.array(rows), np.array(sizes, dtype=float)[:, None]
    return {
        "fisher (old: batch-mean)": (mat * w).sum(0) / w.sum(),
        "gradient (old: sqrt of it)": (np.sqrt(mat) * w).sum(0) / w.sum(),
    }


def ranks(v: np.ndarray) -> list[int]:
    order = sorted(range(len(v)), key=lambda i: (-v[i], i))
    out = [0] * len(v)
    for r, i in enumerate(order):
        out[i] = r
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("study")
    ap.add_argument("--keep", type=int, nargs="+", default=[2, 3])
    args = ap.parse_args()

    import ray

    from engine.data import prepare_data

    cfg = load_study(args.study)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    data = prepare_data(cfg.data, resolve_model_path(cfg.teacher.model))
    art = load_cache(teacher_key(cfg.teacher, data.train, data.num_labels))
    if art is None:
        raise SystemExit(f"no cached teacher for {args.study}: run the study once first")
    model = load_model(art.config, art.state_dict).eval()
    batches = [
        {k: torch.from_numpy(v) for k, v in b.items()}
        for b in calibration_batches(data.train, cfg.importance)
    ]
    ray.shutdown()
    scores = old_definitions(model, batches)
    for m in ("fisher", "gradient"):
        scores[f"{m} (new)"] = np.array(
            IMPORTANCE.get(m)(model, batches, cfg=cfg.importance).scores
        )
    n = sum(len(b["labels"]) for b in batches)
    print(f"{args.study}: {len(batches)} calibration batches, {n} examples\n")
    print(
        "| definition | scores by layer | ranks (0 = most important) | "
        + " | ".join(f"keeps {k}" for k in args.keep)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(args.keep))
    for name, v in scores.items():
        r = ranks(v)
        keeps = [sorted(i for i in range(len(r)) if r[i] < k) for k in args.keep]
        print(
            f"| {name} | {', '.join(f'{x:.4g}' for x in v)} | {r} | "
            + " | ".join(str(k) for k in keeps)
            + " |"
        )
    print("\n| pair | Kendall τ |\n|---|---|")
    for a, b in itertools.combinations(scores, 2):
        print(f"| {a} vs {b} | {kendalltau(scores[a], scores[b])[0]:.3f} |")
    old, new = scores["fisher (old: batch-mean)"], scores["fisher (new)"]
    print(f"\nnew / old fisher per layer: {', '.join(f'{x:.1f}' for x in new / old)}")


if __name__ == "__main__":
    main()
