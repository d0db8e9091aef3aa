"""Peers side by side: this engine's compression against Torch-Pruning and ShortGPT at matched
measured GFLOPs, on one fine-tuned teacher, one data split and one training budget (run by hand).

Every arm starts from the same fine-tuned teacher (the base study's, from the engine's teacher
cache), sees the same training split and is given the same number of optimizer steps
(``--steps``, default 85) with the same KD loss (the study's temperature and α weights):

* ``engine-oneshot`` — the engine's prune stage as a study runs it (:func:`engine.trial.
  build_student`): Taylor mask-gradient scores on ``--score-batches`` batches, heads removed
  evenly per layer (``head_ranking: per_layer``), then all steps as recovery (warm-up/decay);
* ``engine-gradual`` — the prune recipe of issue 18 (gradual over 45 steps, prune every 10,
  global head ranking, then 40 recovery steps at 3e-5), the best of ``sweeps/prune-recipe``;
* ``engine-gradual-wt`` / ``engine-oneshot-wt`` — the same two recipes scored by the engine's
  ``weight_taylor`` criterion (Σ |w · ∂L/∂w| per unit, Torch-Pruning's Taylor definition);
  ``engine-oneshot-wt-global`` ranks the heads of all layers together instead, and
  ``engine-oneshot-wt-gnorm`` on each score ÷ its layer's mean head score;
  ``engine-oneshot-wt-hkd`` trains through the distill stage with hidden-state distillation
  (``--alpha-hidden`` × the MSE of each block's output against the teacher's) besides the KD;
  ``engine-oneshot-wt-rec`` refits each pruned layer's output projections by least squares
  on the score batches before recovery (``pipeline.prune.reconstruct``);
  ``engine-oneshot-wt-lr3e-4`` recovers at 3e-4 whatever ``--recovery-lr`` is (the
  recovery rate measured best for one-shot pruning in 85 steps; 1e-4 and 1e-3 did worse);
  ``-gffn`` / ``-nffn`` after it rank the FFN neurons across layers (``neuron_ranking:
  global`` / ``global_normalized``: the same neuron count, hence the same GFLOPs, with
  per-layer widths that differ), and ``-nall`` ranks heads and neurons across layers on
  layer-normalized scores; ``-kd9`` weights the KD loss 0.9 / the task loss 0.1 (instead of
  0.5 / 0.5), ``-t1`` / ``-t4`` distil at temperature 1 / 4 (instead of 2), ``-sb16`` scores
  on 16 batches (instead of ``--score-batches``); ``engine-oneshot-wt-lr5e-4`` recovers at 5e-4;
  ``-bias`` after ``-t1`` adds the removed units' mean output to the output projection's bias
  (``reconstruct: bias``, FLAP's compensation), and ``engine-oneshot-fl-lr3e-4-t1`` /
  ``-bias`` score by FLAP's ``fluctuation`` (token variance × squared output column norm)
  instead of weight-Taylor, without / with that compensation;
* ``tp-taylor`` / ``tp-magnitude`` — Torch-Pruning's Hugging Face BERT recipe (``MetaPruner``,
  ``num_heads`` with ``prune_num_heads``, uniform per-layer ratios, hidden size kept by
  ignoring the layers that write it), its ``GroupTaylorImportance`` (gradients of the task
  loss summed over the same score batches) or ``GroupMagnitudeImportance``; then the same
  recovery training as ``engine-oneshot`` (the engine's trainer, same seed offset, lr and
  schedule), so the arms differ only in what they remove;
  ``tp-taylor-lr3e-4`` is ``tp-taylor`` recovering at 3e-4 (Torch-Pruning given the
  engine's recovery rate, to tell the rate's gain from the selection's);
* ``truncate-kd`` — the engine's depth compression: keep the level's layer count by the Fisher
  ranking, then distil for the same steps;
* ``shortgpt`` — one-shot layer removal by block influence (1 − cosine of a block's input and
  output), no training.

A level fixes what stays: heads per layer, FFN width per layer, and layers for the depth arms
(whose GFLOPs cannot match the width arms' exactly: the table shows each arm's own count).
GFLOPs are fvcore's count on the model actually built; latency is the engine's
``measure_latency`` on the trial's device, with ``--workers`` runs going at once (all arms
measured under the same load). Results go to ``--json`` after every run, and a rerun skips
what is there (resumable). The Markdown report gives per arm and level the mean over seeds
with a 95 % t interval, and the paired difference against ``--reference`` (per seed, the same
teacher and split) with its 95 % t interval.

Usage::

    python -m bench.peers --json reports/benchmarks/peers.json --md reports/benchmarks/peers.md
    python -m bench.peers --levels 2.7x --seeds 0 1 2 --arms engine-oneshot tp-taylor
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["ARMS", "LEVELS", "Level", "arm_options", "main", "paired", "summarize", "tp_prune"]


@dataclass(frozen=True)
class Level:
    """What stays of the teacher (MiniLM-L6: 12 heads, FFN 1536, 6 layers)."""

    name: str
    heads_kept: int  # per layer
    ffn_kept: int  # per layer
    layers_kept: int  # for the depth arms

    def sparsity(self, heads: int, ffn: int) -> tuple[float, float]:
        """(head, neuron) sparsity that leaves this level's widths from ``heads``/``ffn``."""
        return 1 - self.heads_kept / heads, 1 - self.ffn_kept / ffn


LEVELS = {
    lv.name: lv
    for lv in (
        Level("1.5x", heads_kept=8, ffn_kept=1024, layers_kept=4),
        Level("2.7x", heads_kept=4, ffn_kept=599, layers_kept=2),
        Level("4x", heads_kept=3, ffn_kept=384, layers_kept=1),
    )
}


# --------------------------------------------------------------------------- Torch-Pruning arm
def tp_prune(
    model: Any,
    *,
    heads_kept: int,
    ffn_kept: int,
    importance: str,
    batches: list[dict[str, torch.Tensor]],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Any:
    """Torch-Pruning's HF BERT recipe on a ``BertForSequenceClassification``: whole heads and
    FFN channels, the same count in every layer, hidden size kept. ``importance``: ``taylor``
    (gradients of ``loss`` summed over ``batches``) or ``magnitude`` (L2)."""
    import torch_pruning as tp
    from transformers.models.bert.modeling_bert import BertSelfAttention

    bert = model.bert
    layers = list(bert.encoder.layer)
    heads = layers[0].attention.self.num_attention_heads
    ffn = layers[0].intermediate.dense.out_features
    num_heads = {}
    for m in model.modules():
        if isinstance(m, BertSelfAttention):
            for lin in (m.query, m.key, m.value):
                num_heads[lin] = m.num_attention_heads
    # the hidden size is one channel group through every residual: ignoring what writes it
    # keeps it (the recipe's hidden pruning would change the embedding width)
    ignored = [model.classifier, bert.embeddings]
    ignored += [bert.pooler] if bert.pooler is not None else []
    for layer in layers:
        ignored += [layer.attention.output.dense, layer.output.dense]
    imp = (
        tp.importance.GroupTaylorImportance()
        if importance == "taylor"
        else tp.importance.GroupMagnitudeImportance(p=2)
    )
    example = {k: batches[0][k][:2] for k in ("input_ids", "attention_mask")}
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=imp,
        global_pruning=False,
        pruning_ratio=1 - (ffn_kept + 0.5) / ffn,  # TP keeps int(n × (1 − ratio))
        ignored_layers=ignored,
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=1 - (heads_kept + 0.5) / heads,
        output_transform=lambda out: out.logits.sum(),
    )
    if importance == "taylor":
        model.zero_grad()
        model.eval()
        for b in batches:
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            loss(out.logits, b["labels"]).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    for m in model.modules():
        if isinstance(m, BertSelfAttention):
            m.num_attention_heads = pruner.num_heads[m.query]
            m.all_head_size = m.query.out_features
            m.attention_head_size = m.all_head_size // m.num_attention_heads
    model.config.num_attention_heads = heads_kept  # what the config says matches the model
    model.config.intermediate_size = ffn_kept
    got = [
        (x.attention.self.num_attention_heads, x.intermediate.dense.out_features) for x in layers
    ]
    if set(got) != {(heads_kept, ffn_kept)}:
        raise RuntimeError(f"Torch-Pruning left (heads, ffn) per layer {got}")
    return model


# --------------------------------------------------------------------------- the arms
def _prune_values(level: Level, heads: int, ffn: int, **kw: Any) -> dict[str, Any]:
    s_h, s_n = level.sparsity(heads, ffn)
    vals = {"pipeline.order": ["prune"], "pipeline.prune.method": "structured"}
    vals.update({"pipeline.prune.head_sparsity": s_h, "pipeline.prune.neuron_sparsity": s_n})
    vals.update({f"pipeline.prune.{k}": v for k, v in kw.items()})
    return vals


def _study_arm(values: Callable[[Level, dict[str, Any]], dict[str, Any]]) -> Callable[..., Any]:
    """An arm that is a study configuration: run through :func:`engine.trial.build_student`."""

    def run(study: Any, shared: Any, level: Level, seed: int, opts: dict[str, Any]) -> Any:
        from engine.config import with_values
        from engine.trial import build_student

        cfg = with_values(study, values(level, opts))
        model, record = build_student(cfg, shared, seed, torch.device("cpu"))
        return model, record, cfg

    run.values = values  # type: ignore[attr-defined]  # the arm's study settings, for tests
    return run


def _oneshot(level: Level, o: dict[str, Any]) -> dict[str, Any]:
    return _prune_values(
        level, o["heads"], o["ffn"], criterion="taylor", steps=0, head_ranking="per_layer",
        score_batches=o["score_batches"], recovery_steps=o["steps"], recovery_lr=o["recovery_lr"],
    )  # fmt: skip


def _gradual(level: Level, o: dict[str, Any], criterion: str = "taylor") -> dict[str, Any]:
    return _prune_values(
        level, o["heads"], o["ffn"], criterion=criterion, steps=45, prune_every=10,
        head_ranking="global", score_batches=2, recovery_steps=o["steps"] - 45,
        recovery_lr=3e-5, lr=1e-4,
    )  # fmt: skip


def _gradual_wt(level: Level, o: dict[str, Any]) -> dict[str, Any]:
    return _gradual(level, o, criterion="weight_taylor")


def _oneshot_wt(level: Level, o: dict[str, Any]) -> dict[str, Any]:
    return {**_oneshot(level, o), "pipeline.prune.criterion": "weight_taylor"}


NORM = "global_normalized"


def _with(
    values: Callable[[Level, dict[str, Any]], dict[str, Any]], **prune: Any
) -> Callable[[Level, dict[str, Any]], dict[str, Any]]:
    """``values`` with ``pipeline.prune.<key>`` set as given (rankings, KD weights, …)."""

    def settled(level: Level, o: dict[str, Any]) -> dict[str, Any]:
        return {**values(level, o), **{f"pipeline.prune.{k}": v for k, v in prune.items()}}

    return settled


def _oneshot_wt_lr(lr: float) -> Callable[[Level, dict[str, Any]], dict[str, Any]]:
    """``engine-oneshot-wt`` whose recovery runs at ``lr`` whatever ``--recovery-lr`` says."""
    return _with(_oneshot_wt, recovery_lr=lr)


def _oneshot_wt_rec(level: Level, o: dict[str, Any]) -> dict[str, Any]:
    """``engine-oneshot-wt`` whose pruned layers' output projections are refitted by least
    squares on the score batches before recovery (``pipeline.prune.reconstruct``)."""
    return {**_oneshot_wt(level, o), "pipeline.prune.reconstruct": "least_squares"}


def _oneshot_wt_hkd(level: Level, o: dict[str, Any]) -> dict[str, Any]:
    """``engine-oneshot-wt`` whose training is the distill stage's instead of the prune
    stage's recovery: the same steps, lr and warm-up, the logit KD plus ``alpha_hidden`` × the
    MSE of each block's output against the teacher's same block (width pruning keeps the
    hidden size and every layer, so block i matches teacher block i)."""
    vals = {**_oneshot_wt(level, o), "pipeline.prune.recovery_steps": 0}
    vals.update({
        "pipeline.order": ["prune", "distill"], "pipeline.distill.max_steps": o["steps"],
        "pipeline.distill.epochs": 1000.0, "pipeline.distill.lr": o["recovery_lr"],
        "pipeline.distill.warmup_ratio": 0.1, "pipeline.distill.alpha_hidden": o["alpha_hidden"],
    })  # fmt: skip
    return vals


def _truncate_kd(level: Level, o: dict[str, Any]) -> dict[str, Any]:
    return {
        "pipeline.order": ["truncate", "distill"],
        "pipeline.truncate.keep_layers": level.layers_kept,
        "pipeline.truncate.keep_ratio": None,
        "pipeline.truncate.strategy": "fisher",
        "pipeline.distill.max_steps": o["steps"],
        "pipeline.distill.epochs": 1000.0,  # max_steps decides
    }


def _shortgpt(level: Level, o: dict[str, Any]) -> dict[str, Any]:
    return {
        "pipeline.order": ["truncate"],
        "pipeline.truncate.keep_layers": level.layers_kept,
        "pipeline.truncate.keep_ratio": None,
        "pipeline.truncate.strategy": "block_influence",
    }


def _tp_arm(importance: str, lr: float | None = None) -> Callable[..., Any]:
    """Torch-Pruning's pruner, then the engine's recovery at ``--recovery-lr`` (or ``lr``)."""

    def run(study: Any, shared: Any, level: Level, seed: int, opts: dict[str, Any]) -> Any:
        from engine.compress.base import StageContext
        from engine.compress.prune import PruneConfig, PruneRecord, _recover
        from engine.tasks import get_task
        from engine.teacher import load_model
        from engine.train import BatchOrder

        task = get_task(study.task)
        torch.manual_seed(seed)
        model = load_model(shared.teacher_config, shared.teacher_state, study.task)
        train = {k: torch.as_tensor(shared.splits["train"][k]) for k in task.view.arrays}
        # the engine's score batches for this seed (engine.compress.prune._score_batches)
        order = BatchOrder.seeded(len(train["labels"]), study.pipeline.prune.batch_size, seed + 1)
        batches = [
            {k: v[idx] for k, v in train.items()}
            for idx in (order.next() for _ in range(opts["score_batches"]))
        ]
        tp_prune(
            model, heads_kept=level.heads_kept, ffn_kept=level.ffn_kept,
            importance=importance, batches=batches, loss=task.loss,
        )  # fmt: skip
        # the same recovery as engine-oneshot: the prune stage's own trainer and settings
        cfg = study.pipeline.prune.model_copy(
            update={
                "steps": 0,
                "recovery_steps": opts["steps"],
                "recovery_lr": lr if lr is not None else opts["recovery_lr"],
            }
        )
        ctx = StageContext(
            teacher=None, train=train, teacher_logits=torch.as_tensor(shared.teacher_train_logits),
            importance=shared.importance, seed=seed, device=torch.device("cpu"), task=task,
        )  # fmt: skip
        ctx.records["prune"] = PruneRecord(
            method="structured", criterion=f"torch-pruning {importance}", schedule=[],
            prune_train_steps=0, dense_flops_reduced=True,
        )  # fmt: skip
        _recover(model, PruneConfig.model_validate(cfg.model_dump()), ctx, None)
        return model, ctx.record, study

    return run


ARMS: dict[str, Callable[..., Any]] = {
    "engine-oneshot": _study_arm(_oneshot),
    "engine-gradual": _study_arm(_gradual),
    "engine-gradual-wt": _study_arm(_gradual_wt),
    "engine-oneshot-wt": _study_arm(_oneshot_wt),
    "engine-oneshot-wt-global": _study_arm(_with(_oneshot_wt, head_ranking="global")),
    "engine-oneshot-wt-hkd": _study_arm(_oneshot_wt_hkd),
    "engine-oneshot-wt-gnorm": _study_arm(_with(_oneshot_wt, head_ranking=NORM)),
    "engine-oneshot-wt-rec": _study_arm(_oneshot_wt_rec),
    "engine-oneshot-wt-lr3e-4": _study_arm(_oneshot_wt_lr(3e-4)),
    "engine-oneshot-wt-lr3e-4-gffn": _study_arm(
        _with(_oneshot_wt_lr(3e-4), neuron_ranking="global")
    ),
    "engine-oneshot-wt-lr3e-4-nffn": _study_arm(
        _with(_oneshot_wt_lr(3e-4), neuron_ranking="global_normalized")
    ),
    "engine-oneshot-wt-lr3e-4-nall": _study_arm(
        _with(_oneshot_wt_lr(3e-4), neuron_ranking=NORM, head_ranking=NORM)
    ),
    "engine-oneshot-wt-lr3e-4-kd9": _study_arm(
        _with(_oneshot_wt_lr(3e-4), alpha_distill=0.9, alpha_task=0.1)
    ),
    "engine-oneshot-wt-lr3e-4-t1": _study_arm(_with(_oneshot_wt_lr(3e-4), temperature=1.0)),
    "engine-oneshot-wt-lr3e-4-t4": _study_arm(_with(_oneshot_wt_lr(3e-4), temperature=4.0)),
    "engine-oneshot-wt-lr3e-4-sb16": _study_arm(_with(_oneshot_wt_lr(3e-4), score_batches=16)),
    "engine-oneshot-wt-lr5e-4": _study_arm(_oneshot_wt_lr(5e-4)),
    "engine-oneshot-wt-lr3e-4-t1-bias": _study_arm(
        _with(_oneshot_wt_lr(3e-4), temperature=1.0, reconstruct="bias")
    ),
    "engine-oneshot-fl-lr3e-4-t1": _study_arm(
        _with(_oneshot_wt_lr(3e-4), temperature=1.0, criterion="fluctuation")
    ),
    "engine-oneshot-fl-lr3e-4-t1-bias": _study_arm(
        _with(_oneshot_wt_lr(3e-4), temperature=1.0, criterion="fluctuation", reconstruct="bias")
    ),
    "tp-taylor": _tp_arm("taylor"),
    "tp-magnitude": _tp_arm("magnitude"),
    "tp-taylor-lr3e-4": _tp_arm("taylor", lr=3e-4),
    "truncate-kd": _study_arm(_truncate_kd),
    "shortgpt": _study_arm(_shortgpt),
}


# --------------------------------------------------------------------------- one run
def arm_options(
    shared: Any, steps: int, score_batches: int, recovery_lr: float, alpha_hidden: float
) -> dict[str, Any]:
    """The options every arm reads (``opts``): the bench's settings and the teacher's shape."""
    return {"steps": steps, "score_batches": score_batches, "recovery_lr": recovery_lr,
            "alpha_hidden": alpha_hidden,
            "heads": int(shared.teacher_config["num_attention_heads"]),
            "ffn": int(shared.teacher_config["intermediate_size"])}  # fmt: skip


_WORKER: dict[str, Any] = {}


def _study(name: str, overrides: list[str]) -> Any:
    from engine.config import load_study

    return load_study(name, [*overrides, "importance.methods=[fisher,block_influence]"])


def _init_worker(name: str, overrides: list[str], shared: Any, threads: int) -> None:
    torch.set_num_threads(threads)
    # the study's config classes are built at import (not picklable): each worker loads it
    _WORKER.update(study=_study(name, overrides), shared=shared)


def _one(arm: str, level: Level, seed: int, opts: dict[str, Any]) -> dict[str, Any]:
    from engine.assess import assess

    study, shared = _WORKER["study"], _WORKER["shared"]
    t0 = time.perf_counter()
    model, record, cfg = ARMS[arm](study, shared, level, seed, opts)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    splits = {k: shared.splits[k] for k in ("valid", "test")}
    row = assess(model, splits, cfg, torch.device("cpu"), record=record)
    assess_s = time.perf_counter() - t0
    blocks = list(_layers(model))
    return {
        "arm": arm, "level": level.name, "seed": seed, "build_s": build_s, "assess_s": assess_s,
        "heads_per_layer": [b.attention.self.num_attention_heads for b in blocks],
        "ffn_per_layer": [b.intermediate.dense.out_features for b in blocks],
        **{k: v for k, v in row.items() if isinstance(v, (int, float, str))},
    }  # fmt: skip


def _layers(model: Any) -> Any:
    from engine.models import layer_list

    return layer_list(model)


# --------------------------------------------------------------------------- serial latency
def architecture(shared: Any, task: str, row: dict[str, Any]) -> Any:
    """The teacher cut to ``row``'s shape: its first layers, each with the row's head count
    and FFN width (which units stay does not change the time, only how many)."""
    from engine.compress.structure import ffn_width, head_ids, remove_heads, remove_neurons
    from engine.models import keep_layers, layer_list
    from engine.teacher import load_model

    model = load_model(shared.teacher_config, shared.teacher_state, task)
    n = len(row["heads_per_layer"])
    if n < len(layer_list(model)):
        model = keep_layers(model, list(range(n)))
    for block, h, f in zip(layer_list(model), row["heads_per_layer"], row["ffn_per_layer"],
                           strict=True):  # fmt: skip
        remove_heads(block, list(range(len(head_ids(block)) - h)))
        remove_neurons(block, list(range(ffn_width(block) - f)))
    return model.eval()


def serial_latency(study: Any, shared: Any, rows: list[dict], repeats: int) -> dict[str, Any]:
    """Latency of each arm's architecture at each level (its seed-0 shape, or its first),
    one model at a time in this process with nothing else running: the runs' own figures
    were taken two at a time. Batch = the study's ``measure.batch_size`` test examples."""
    from engine.measure import measure_latency

    test = shared.splits["test"]
    bs = study.measure.batch_size
    batch = {k: torch.as_tensor(test[k][:bs]) for k in ("input_ids", "attention_mask")}
    out: dict[str, Any] = {}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        for lv in LEVELS:
            sel = sorted((r for r in rows if r["arm"] == arm and r["level"] == lv),
                         key=lambda r: r["seed"])  # fmt: skip
            if not sel:
                continue
            model = architecture(shared, study.task, sel[0])
            lat = measure_latency(model, batch, repeats=repeats, warmup=3)
            out.setdefault(arm, {})[lv] = {
                "p50_ms": float(lat["latency_ms_p50"]), "p95_ms": float(lat["latency_ms_p95"]),
            }  # fmt: skip
            print(f"[peers] latency {arm} {lv}: p50 {lat['latency_ms_p50']:.1f} ms", flush=True)
    return out


# --------------------------------------------------------------------------- statistics
def t_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval of the mean of ``x`` (NaN bounds for n < 2)."""
    from scipy import stats

    x = np.asarray(x, dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, m - half, m + half


def paired(rows: list[dict], arm: str, ref: str, level: str, metric: str) -> dict[str, Any]:
    """``arm`` − ``ref`` on the seeds both have at ``level``: mean and 95 % t interval."""
    a = {r["seed"]: r[metric] for r in rows if r["arm"] == arm and r["level"] == level}
    b = {r["seed"]: r[metric] for r in rows if r["arm"] == ref and r["level"] == level}
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return {"n": 0}
    d = np.array([a[s] - b[s] for s in seeds])
    m, lo, hi = t_interval(d)
    return {"n": len(seeds), "mean": m, "lo": lo, "hi": hi, "seeds": seeds}


def summarize(
    rows: list[dict], metric: str, ref: str, latency: dict[str, Any] | None = None
) -> str:
    """The Markdown tables: per level and arm, mean over seeds [95 % t], GFLOPs, latency
    (the serial pass's p50 when given, else the runs' own mean), time; then each arm's
    paired difference against ``ref``."""
    out = []
    levels = [lv for lv in LEVELS if any(r["level"] == lv for r in rows)]
    arms = [a for a in ARMS if any(r["arm"] == a for r in rows)]
    for lv in levels:
        out += [
            f"\n### {lv}: {LEVELS[lv].heads_kept} heads and FFN {LEVELS[lv].ffn_kept} per layer "
            f"(depth arms: {LEVELS[lv].layers_kept} layers)\n",
            f"| arm | seeds | {metric} mean [95 % t] | per seed | GFLOPs | latency p50 ms "
            f"| build s | assess s | {metric} − {ref} [95 % t, paired] |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for arm in arms:
            sel = sorted((r for r in rows if r["arm"] == arm and r["level"] == lv),
                         key=lambda r: r["seed"])  # fmt: skip
            if not sel:
                continue
            m, lo, hi = t_interval(np.array([r[metric] for r in sel]))
            per = " / ".join(f"{r[metric]:.3f}" for r in sel)
            gf = np.mean([r["gflops"] for r in sel])
            serial = (latency or {}).get(arm, {}).get(lv)
            lat = serial["p50_ms"] if serial else np.mean([r["latency_ms_p50"] for r in sel])
            b = np.mean([r["build_s"] for r in sel])
            a = np.mean([r["assess_s"] for r in sel])
            if arm == ref:
                diff = "—"
            else:
                p = paired(rows, arm, ref, lv, metric)
                diff = (f"{p['mean']:+.4f} [{p['lo']:+.4f}, {p['hi']:+.4f}] (n={p['n']})"
                        if p["n"] else "no common seeds")  # fmt: skip
            out.append(
                f"| {arm} | {len(sel)} | {m:.4f} [{lo:.4f}, {hi:.4f}] | {per} | {gf:.3f} "
                f"| {lat:.1f} | {b:.0f} | {a:.0f} | {diff} |"
            )
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- driver
def _prepare(study_name: str, overrides: list[str]) -> tuple[Any, Any, float]:
    import ray

    from engine.prepare import prepare

    study = _study(study_name, overrides)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        _, art, shared = prepare(study, {})
    finally:
        ray.shutdown()
    return study, shared, float(art.metrics[f"test_{study.report.quality_metric}"])


def _save(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)  # a run killed mid-write leaves the previous file whole


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="prune-recipe", help="base study (data, teacher, KD)")
    p.add_argument("--set", nargs="*", default=[], help="study overrides key=value")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=85, help="training steps of every trained arm")
    p.add_argument("--score-batches", type=int, default=8)
    p.add_argument("--recovery-lr", type=float, default=1e-4)
    p.add_argument("--alpha-hidden", type=float, default=1.0,
                   help="hidden-state MSE weight of the *-hkd arms")  # fmt: skip
    p.add_argument("--reference", default="tp-taylor")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, default=Path("reports/benchmarks/peers.json"))
    p.add_argument("--md", type=Path, default=None, help="write the tables here")
    p.add_argument("--latency-repeats", type=int, default=0,
                   help="after the runs, time each architecture serially (0 = skip)")  # fmt: skip
    a = p.parse_args(argv)

    state = json.loads(a.json.read_text()) if a.json.exists() else {"rows": []}
    done = {(r["arm"], r["level"], r["seed"]) for r in state["rows"]}
    study, shared, teacher_q = _prepare(a.study, a.set)
    opts = arm_options(shared, a.steps, a.score_batches, a.recovery_lr, a.alpha_hidden)
    state["setup"] = {
        "study": a.study, "overrides": a.set, "corpus": study.data.corpus,
        "train": len(shared.splits["train"]["labels"]),
        "test": len(shared.splits["test"]["labels"]), "teacher_quality": teacher_q,
        "metric": study.report.quality_metric, "workers": a.workers,
        "threads_per_worker": max(1, (os.cpu_count() or 1) // a.workers),
        "levels": {k: asdict(v) for k, v in LEVELS.items()}, **opts,
    }  # fmt: skip
    # seed outermost: a run stopped early still has every arm and level on the first seeds
    todo = [(arm, LEVELS[lv], s) for s in a.seeds for lv in a.levels for arm in a.arms
            if (arm, lv, s) not in done]  # fmt: skip
    print(f"[peers] {len(todo)} runs to do ({len(done)} done), teacher {teacher_q:.4f}", flush=True)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    threads = state["setup"]["threads_per_worker"]
    with ProcessPoolExecutor(
        a.workers, initializer=_init_worker, initargs=(a.study, a.set, shared, threads),
        mp_context=torch.multiprocessing.get_context("spawn"),
    ) as pool:  # fmt: skip
        futs = {pool.submit(_one, arm, lv, s, opts): (arm, lv.name, s) for arm, lv, s in todo}
        for fut, key in futs.items():
            try:
                row = fut.result()
            except Exception as e:  # recorded; the others go on
                print(f"[peers] {key} failed: {type(e).__name__}: {e}", flush=True)
                state.setdefault("failed", []).append({"key": list(key), "error": repr(e)})
                _save(state, a.json)
                continue
            state["rows"].append(row)
            _save(state, a.json)
            print(f"[peers] {key}: {row[study.report.quality_metric]:.4f} "
                  f"gflops {row['gflops']:.3f} build {row['build_s']:.0f} s", flush=True)  # fmt: skip
    if a.latency_repeats:
        torch.set_num_threads(state["setup"]["threads_per_worker"])  # as each run had
        state["latency"] = serial_latency(study, shared, state["rows"], a.latency_repeats)
        state["latency_repeats"] = a.latency_repeats
        _save(state, a.json)
    table = summarize(state["rows"], study.report.quality_metric, a.reference, state.get("latency"))
    if a.md is not None:
        a.md.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
