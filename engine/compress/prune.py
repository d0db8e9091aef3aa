"""``prune`` stage: gradual structured pruning with recovery, or weight masks.

``method: structured`` removes attention heads (ranked globally, at least one kept per layer)
and FFN neurons (the same number from every layer, so widths stay uniform) *physically* —
see :mod:`engine.compress.structure` (BERT-family encoders, GPT-2 and Llama-layout decoders;
under grouped-query attention heads go a whole key/value group at a time). Units are scored by ``criterion``
(:mod:`engine.compress.scores`) on the current model at every pruning step.

Schedule (:mod:`engine.compress.schedule`, Zhu & Gupta 2017): at t = 0, every, 2·every, …, n
the model is pruned to s_t; between pruning steps it trains with AdamW at ``lr`` on the KD
loss (``kd: true``, pruning-aware distillation from the teacher's logits) or on labels. The
optimizer is rebuilt after each structural change (its moments belong to removed shapes).
``steps: 0`` is one-shot pruning. Then ``recovery_steps`` of fine-tuning at ``recovery_lr``
(linear warm-up/decay, same loss).

``unstructured`` (per-matrix magnitude, same schedule) and ``semi_structured_2_4`` (2 of
every 4 weights, applied at t = 0) zero weights through masks that are re-applied after every
optimizer step; they do not lower dense FLOPs (see :mod:`engine.compress.masked`).

Every stretch of training is a :func:`engine.train.train_classifier` call (constant ``lr``,
one example order running through all of them), so the stage reports and checkpoints like
``distill``. Stage steps: 1 … ``steps`` are the pruning phase (the schedule's t), then
``steps`` + 1 … ``steps + recovery_steps`` recovery. With ``ctx.report`` a report every
``report.every`` stage steps carries the metrics of the model as it is then (fewer heads and
neurons after each event). A checkpoint's ``"stage"`` entry holds the phase's progress
(events applied, schedule record, masks, FFN widths before pruning; in recovery the learning
rates used), the model itself its current, physically pruned shape: a retried trial skips
what was done and continues the stretch in progress bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from transformers import PreTrainedModel

from engine.compress.base import (
    JSON_OFF,
    OMIT_NONE,
    StageContext,
    StageRecord,
    register_stage,
)
from engine.compress.masked import apply_masks, magnitude_masks, mask_sparsity, two_four_masks
from engine.compress.reconstruct import MODES, input_grams, input_moments, remove_refitted
from engine.compress.schedule import pruning_events
from engine.compress.scores import CRITERIA, unit_scores
from engine.compress.structure import (
    _span,
    block_parts,
    ffn_width,
    head_group,
    head_ids,
    head_size,
    remove_heads,
    remove_neurons,
    sync_config,
)
from engine.configbase import KDConfig, OptimConfig
from engine.models import layer_list
from engine.tasks import DEFAULT_TASK, Task
from engine.train import BatchOrder, train_classifier

__all__ = [
    "FFN_WIDTHS",
    "PruneConfig",
    "PruneRecord",
    "apply",
    "prune_structured_to",
    "stage_steps",
]

FFN_WIDTHS = "ffn_widths_before_pruning"  # model config key: FFN width per layer before pruning


class PruneConfig(OptimConfig, KDConfig):
    """Prune the student: structured (attention heads + FFN neurons, physically removed) or
    masked (``unstructured`` magnitude, ``semi_structured_2_4``: 2 of every 4 weights).

    Gradual schedule (Zhu & Gupta 2017): over ``steps`` training steps the sparsity follows
    s_t = s_f + (s_i − s_f)(1 − t/n)^``exponent``, pruned every ``prune_every`` steps, with
    s_f = ``head_sparsity`` / ``neuron_sparsity`` (structured) or ``weight_sparsity``
    (unstructured) and s_i = min(``initial_sparsity``, s_f). ``steps: 0`` prunes once.
    While pruning, training uses the KD loss when ``kd`` is true (pruning-aware
    distillation). Then ``recovery_steps`` of fine-tuning at ``recovery_lr``.

    ``head_ranking``: ``global`` ranks every layer's heads together (a layer may lose most
    of its heads, at least one is kept); ``global_normalized`` does so on each head's score
    divided by the mean score of its layer's heads (so layers whose scores run larger do not
    keep every head for that alone); ``per_layer`` removes the same number from every layer
    (Torch-Pruning's uniform recipe), each layer's lowest-scored. ``neuron_ranking``: the same
    three choices for FFN neurons (default ``per_layer``: every layer keeps the same width).
    Every neuron of a layer costs the same FLOPs in every layer (it reads and writes the
    hidden size), so ranking them across layers removes as many neurons, hence as many FLOPs,
    as the uniform cut — only where from differs; the per-layer widths go into the saved
    config (``ffn_widths``, :func:`engine.compress.structure.load_pruned`).

    Defaults are the best recipe measured for structured pruning (issue 18,
    ``reports/benchmarks/peers.md``): ``criterion: auto`` scores by ``weight_taylor``
    (Σ |w · ∂L/∂w| over a unit's weights: +1.9 to +2.4 accuracy points over the
    mask-gradient ``taylor`` and +1.4 to +6.2 over ``magnitude`` on MiniLM at 1.5-4x fewer
    GFLOPs), pruning is one shot (``steps: 0``) and recovery runs at ``recovery_lr`` 3e-4
    (of 3e-5, 1e-4, 3e-4 and 1e-3 over 85 recovery steps, 3e-4 scored best; at 3e-5 a
    one-shot-pruned 3-layer student stayed at the majority class in ``sensitivity``). For the
    masked methods ``auto`` is ``magnitude``, the one they support, so a sweep over ``method``
    needs no criterion per method.

    ``reconstruct``: at each pruning event, refit the output projection of every layer that
    lost heads or neurons on the event's score batches (:mod:`engine.compress.reconstruct`;
    one extra forward pass over those batches per event; magnitude pruning draws them too):
    ``least_squares`` refits the kept columns and bias so the output stays as close as
    possible to the unpruned layer's; ``bias`` only adds the removed units' mean contribution
    to the bias (FLAP's compensation); ``none`` (default) removes and refits nothing. ``true``
    / ``false`` are read as ``least_squares`` / ``none`` (the option was a flag before).
    Compensation needs a criterion that keeps token-specific units: on MiniLM, weight-Taylor
    removes layer-0 FFN neurons that fire almost only on [CLS] (43 % of their mean output
    comes from the top 1 % of tokens), so either refit spreads that onto every token and the
    prediction KL to the teacher rises (0.155 → 0.369 at 1.5x). ``fluctuation`` keeps them,
    and with ``bias`` the KL falls to 0.033 (``reports/benchmarks/peers.md``). After 85
    recovery steps that head start is gone: fluctuation + bias scored 0.9-2.6 accuracy points
    below weight-Taylor with no refit (10 seeds), so it suits pruning without training only.
    """

    method: Literal["structured", "unstructured", "semi_structured_2_4"] = "structured"
    criterion: str = "auto"  # "auto" or a registered criterion (engine.compress.scores)
    head_sparsity: float = Field(0.25, ge=0, lt=1)
    neuron_sparsity: float = Field(0.25, ge=0, lt=1)
    weight_sparsity: float = Field(0.5, ge=0, lt=1)
    initial_sparsity: float = Field(0.0, ge=0, lt=1)
    exponent: float = Field(3.0, gt=0)
    steps: int = Field(0, ge=0)
    prune_every: int = Field(1, ge=1)
    score_batches: int = Field(4, ge=1)
    head_ranking: Literal["global", "global_normalized", "per_layer"] = "global"
    neuron_ranking: Literal["global", "global_normalized", "per_layer"] = "per_layer"
    reconstruct: Literal["none", "bias", "least_squares"] = "none"
    recovery_steps: int = Field(0, ge=0)
    recovery_lr: float = Field(3e-4, gt=0, lt=1)
    recovery_warmup_ratio: float = Field(0.1, ge=0, lt=1)

    @field_validator("criterion")
    @classmethod
    def _criterion(cls, v: str) -> str:
        if v != "auto" and v not in CRITERIA:
            raise ValueError(f"{CRITERIA.unknown_message(v)}, or 'auto'")
        return v

    @field_validator("reconstruct", mode="before")
    @classmethod
    def _flag(cls, v: Any) -> Any:
        return {True: "least_squares", False: "none"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _check(self) -> PruneConfig:
        if self.method != "structured" and self.criterion not in ("auto", "magnitude"):
            raise ValueError(f"method {self.method!r} supports criterion 'magnitude' only")
        return self

    @property
    def criterion_used(self) -> str:
        """``criterion`` with ``auto`` resolved: ``weight_taylor`` for structured pruning,
        ``magnitude`` for the masked methods (the one they support)."""
        if self.criterion != "auto":
            return self.criterion
        return "weight_taylor" if self.method == "structured" else "magnitude"


@dataclass(frozen=True)
class PruneRecord(StageRecord):
    """How the student was pruned. Structured: heads kept per layer and FFN widths; masked:
    the final weight ``sparsity`` (saved beside ``prune``; the ``gflops_theoretical`` column)
    and the ``masks`` later steps re-apply (not saved)."""

    method: str
    criterion: str
    schedule: list[dict[str, Any]]
    prune_train_steps: int
    dense_flops_reduced: bool
    heads_total: int | None = field(default=None, metadata=OMIT_NONE)
    heads_kept_per_layer: list[int] | None = None
    ffn_width: int | None = field(default=None, metadata=OMIT_NONE)  # None: widths differ
    ffn_width_before: int | None = field(default=None, metadata=OMIT_NONE)
    ffn_widths: list[int] | None = field(default=None, metadata=OMIT_NONE)  # when they differ
    recovery: dict[str, Any] | None = field(default=None, metadata=OMIT_NONE)
    sparsity: float | None = field(default=None, metadata=JSON_OFF)
    masks: Any = field(default=None, metadata=JSON_OFF, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        payload = self.payload()
        if self.method != "structured":
            payload.pop("heads_kept_per_layer")
        order = ["method", "criterion", "heads_total", "heads_kept_per_layer", "ffn_width",
                 "ffn_widths", "ffn_width_before", "schedule", "prune_train_steps", "dense_flops_reduced",
                 "recovery"]  # fmt: skip
        out: dict[str, Any] = {self.key: {k: payload[k] for k in order if k in payload}}
        if self.sparsity is not None:
            out["sparsity"] = self.sparsity
        return out

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> PruneRecord | None:
        base = super().from_json(record)
        if base is None or "sparsity" not in record:
            return base  # type: ignore[return-value]
        return dataclasses.replace(base, sparsity=record["sparsity"])


def _columns(
    record: PruneRecord | None, model: Any, splits: Any, row: dict, task: Any
) -> dict[str, Any]:
    """``gflops_theoretical`` = ``gflops`` × (1 − mask sparsity): the estimate for masked
    pruning, which a dense kernel does not realise."""
    sparsity = record.sparsity if record is not None and record.sparsity is not None else 0.0
    return {"gflops_theoretical": row["gflops"] * (1.0 - float(sparsity))}


def _save(model: Any, record: PruneRecord, out_dir: Path) -> Any:
    sync_config(model)  # a later truncate may have renumbered the layers
    return model


def stage_steps(cfg: PruneConfig) -> int:
    """Optimizer steps on the stage's report axis: the gradual schedule's, then recovery's
    (a trial reports ``stage_steps // report_every_steps`` times in this stage)."""
    return cfg.steps + cfg.recovery_steps


def _loss(cfg: PruneConfig, ctx: StageContext) -> Callable[..., torch.Tensor]:
    a_d, a_t = (cfg.alpha_distill, cfg.alpha_task) if cfg.kd else (0.0, 1.0)
    return lambda s, y, t: ctx.task.kd_loss(
        s, y, t, temperature=cfg.temperature, alpha_distill=a_d, alpha_task=a_t
    )


def _batch(ctx: StageContext, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: ctx.train[k][idx] for k in ctx.task.view.arrays}


def _n_train(ctx: StageContext) -> int:
    n = int(ctx.train["labels"].shape[0])
    if n == 0:
        raise ValueError("cannot prune-train on an empty training set")
    return n


def _train(
    model: PreTrainedModel,
    cfg: PruneConfig,
    ctx: StageContext,
    order: BatchOrder,
    start: int,
    end: int,
    *,
    after_step: Callable[[], None] | None,
    stage_state: Callable[[], dict[str, Any]],
) -> None:
    """Train stage steps ``start`` + 1 … ``end`` at a constant ``lr`` with a fresh AdamW (the
    previous one's moments belong to removed shapes), reporting on the stage-step axis."""
    if end <= start:
        return

    def on_step(_step: int, _loss: float) -> None:
        if after_step is not None:
            after_step()  # re-apply masks before the model is measured or checkpointed

    use_teacher = cfg.kd and cfg.alpha_distill > 0
    train_classifier(
        model,
        ctx.train,
        loss_fn=_loss(cfg, ctx),
        epochs=float(end - start),
        max_steps=end - start,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=ctx.seed,
        weight_decay=cfg.weight_decay,
        freeze_embeddings=cfg.freeze_embeddings,
        teacher_logits=ctx.teacher_logits if use_teacher else None,
        device=ctx.device,
        autocast_dtype=ctx.autocast_dtype,
        oom=ctx.oom,
        on_step=on_step,
        report=ctx.report,
        resume=ctx.resume,
        lr_schedule="constant",
        batches=order,
        step_offset=start,
        stage_state=stage_state,
    )


def _gradual(
    model: PreTrainedModel,
    cfg: PruneConfig,
    ctx: StageContext,
    events: list[int],
    prune_at: Callable[[int], dict[str, Any]],
    st: dict[str, Any],
) -> None:
    """Prune at each of ``events`` (stage steps, ascending, from 0) with ``prune_at(i)``,
    training in between and after the last event up to ``cfg.steps``.

    ``st`` is the phase's progress, what a checkpoint's ``"stage"`` entry holds: ``next``
    (events before it are applied; the stretch before it is in progress), ``schedule`` (the
    record of applied events), ``masks`` (weight masks to re-apply, or None). Resumed from a
    checkpoint, the loop starts at ``next`` and its first training call takes the snapshot.
    One example order runs through all stretches (restored with the snapshot).
    """
    order = BatchOrder.seeded(_n_train(ctx), cfg.batch_size, ctx.seed)

    def reapply() -> None:
        apply_masks(model, st["masks"])

    def state() -> dict[str, Any]:
        return {**st, "schedule": [dict(e) for e in st["schedule"]]}

    bounds = [*events, max(events[-1], cfg.steps)]
    for i in range(int(st["next"]), len(bounds)):
        st["next"] = i
        start = bounds[i - 1] if i else 0
        after = reapply if st["masks"] is not None else None
        _train(model, cfg, ctx, order, start, bounds[i], after_step=after, stage_state=state)
        if i < len(events):
            st["schedule"].append(prune_at(i))


def _score_batches(ctx: StageContext, cfg: PruneConfig, seed: int) -> list[dict]:
    order = BatchOrder.seeded(_n_train(ctx), cfg.batch_size, seed)
    return [_batch(ctx, order.next()) for _ in range(cfg.score_batches)]


def prune_structured_to(
    model: PreTrainedModel,
    *,
    heads_removed: int,
    neurons_removed: list[int],
    criterion: str,
    batches: list[dict] | None = None,
    device: torch.device | str = "cpu",
    task: str | Task = DEFAULT_TASK,
    per_layer: bool = False,
    normalized: bool = False,
    neuron_ranking: str = "per_layer",
    reconstruct: str = "none",
) -> dict[str, int]:
    """Prune until ``heads_removed`` heads in total (global ranking, ≥ 1 kept per layer) and
    ``neurons_removed[l]`` neurons of layer l are gone, counting units removed before.

    ``per_layer``: the heads go evenly instead — every layer loses the same number of head
    units, its lowest-scored; when the total does not divide by the layer count, the
    remainder comes from the layers whose next candidate scores lowest. ``normalized``: the
    global ranking compares each head unit's score divided by the mean score of the units
    still present in its layer (a layer whose mean is 0 keeps its raw zeros).
    ``neuron_ranking``: ``per_layer`` (layer l loses ``neurons_removed[l]``), or ``global`` /
    ``global_normalized``: ``sum(neurons_removed)`` neurons in all, the lowest-scored across
    layers (scores ÷ their layer's mean for ``global_normalized``), ≥ 1 kept per layer.
    ``reconstruct``: refit each pruned layer's output projections on ``batches``, by
    ``least_squares`` to their outputs before this call or by ``bias`` compensation of the
    removed units' mean (:mod:`engine.compress.reconstruct`); ``none``: plain removal.

    Heads go by head unit (:func:`engine.compress.structure.head_group`): under grouped-query
    attention a whole key/value group at a time, so the count is rounded down to a multiple
    of the group size (and at least one group is kept per layer).

    Neuron counts are measured against the FFN widths before the first call (kept in
    ``model.config.ffn_widths_before_pruning``, so they travel with copies and saves).
    Returns how many heads and neurons this call removed.
    """
    blocks = list(layer_list(model))
    heads = heads_removed > 0
    if heads and block_parts(blocks[0]).attn is None:
        raise ValueError(f"head pruning is not supported for {type(model).__name__}")
    h_scores, n_scores = unit_scores(
        model, criterion, heads=heads, batches=batches or [], device=device, task=task
    )
    if reconstruct not in MODES:
        raise ValueError(f"unknown reconstruct mode {reconstruct!r} (known: {', '.join(MODES)})")
    # per block and projection, what remove_refitted needs: the input's Gram (least squares)
    # or its mean (bias); None: plain removal
    grams: list[dict[str, Any]] | None = None
    if reconstruct == "least_squares":
        grams = input_grams(model, batches or [], device)
    elif reconstruct == "bias":
        grams = [
            {k: v[0] for k, v in b.items()} for b in input_moments(model, batches or [], device)
        ]
    removed_h = removed_n = 0
    if heads and h_scores is not None:
        orig = model.config.num_attention_heads
        g = head_group(blocks[0])  # heads per unit: 1, or a key/value group's size
        present = [len(head_ids(b)) // g for b in blocks]  # units per layer
        need = heads_removed - (orig * len(blocks) - g * sum(present))
        if per_layer:
            drop = _even_drop(h_scores, present, heads_removed // g, orig // g)
        else:  # whole units only: at most heads_removed heads
            drop = _lowest_across(h_scores, max(need, 0) // g, normalized=normalized)
        for layer, units in drop.items():
            positions = [u * g + i for u in units for i in range(g)]
            remove = partial(remove_heads, blocks[layer], positions)
            if grams is None:
                remove()
            else:
                cols = set(_span(positions, head_size(blocks[layer])).tolist())
                remove_refitted(
                    blocks[layer], "attn_out", grams[layer]["attn_out"], cols, remove, reconstruct
                )
            removed_h += g * len(units)
    widths = getattr(model.config, FFN_WIDTHS, None) or [ffn_width(b) for b in blocks]
    setattr(model.config, FFN_WIDTHS, list(widths))
    if neuron_ranking == "per_layer":
        n_drop = {
            layer: torch.argsort(sc, stable=True)[:need].tolist()
            for layer, (b, sc) in enumerate(zip(blocks, n_scores, strict=True))
            if (need := neurons_removed[layer] - (widths[layer] - ffn_width(b))) > 0
        }
    else:
        need = sum(neurons_removed) - (sum(widths) - sum(ffn_width(b) for b in blocks))
        n_drop = _lowest_across(
            n_scores, max(need, 0), normalized=neuron_ranking == "global_normalized"
        )
    for layer, order in sorted(n_drop.items()):
        b = blocks[layer]
        if order:
            remove = partial(remove_neurons, b, order)
            if grams is None:
                remove()
            else:
                remove_refitted(
                    b, "ffn_out", grams[layer]["ffn_out"], set(order), remove, reconstruct
                )
            removed_n += len(order)
    sync_config(model)
    return {"heads": removed_h, "neurons": removed_n}


def _lowest_across(
    scores: list[torch.Tensor], total: int, *, normalized: bool
) -> dict[int, list[int]]:
    """Positions per layer of the ``total`` lowest-scored units across all layers (ties: the
    earlier layer, then position), each layer keeping at least one unit; ``normalized``
    compares each score divided by its layer's mean (:func:`_layer_normalized`)."""
    ranked = [_layer_normalized(sc) if normalized else sc for sc in scores]
    cands = sorted(
        (float(s), layer, pos)
        for layer, sc in enumerate(ranked)
        for pos, s in enumerate(sc.tolist())
    )
    drop: dict[int, list[int]] = {}
    for _, layer, pos in cands:
        if total <= 0:
            break
        if len(scores[layer]) - len(drop.get(layer, [])) <= 1:
            continue  # keep at least one unit per layer
        drop.setdefault(layer, []).append(pos)
        total -= 1
    return drop


def _layer_normalized(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` ÷ their mean (unchanged when the mean is 0)."""
    mean = scores.double().mean()
    return scores if mean == 0 else scores.double() / mean


def _even_drop(
    h_scores: list[torch.Tensor], present: list[int], total: int, orig: int
) -> dict[int, list[int]]:
    """Positions (among the heads still present) to remove so that ``total`` head units are
    gone in all, as evenly as the layers allow: each layer's quota is ``total // L`` units
    (one more for ``total % L`` layers — those already past the even share, then those
    whose next candidate scores lowest), at most all but one of its ``orig`` units."""
    n_layers = len(present)
    gone = [orig - p for p in present]
    base, extra = divmod(total, n_layers)
    ranked = [torch.argsort(sc, stable=True).tolist() for sc in h_scores]

    def next_score(layer: int) -> float:
        k = base - gone[layer]  # the candidate after this layer's even share
        if k < 0:
            return -math.inf  # past its share already
        if k >= present[layer] - 1:
            return math.inf  # nothing left to give (one unit stays)
        return float(h_scores[layer][ranked[layer][k]])

    favoured = sorted(range(n_layers), key=lambda i: (-(gone[i] > base), next_score(i), i))
    quota = [base + (i in favoured[:extra]) for i in range(n_layers)]
    drop: dict[int, list[int]] = {}
    for layer in range(n_layers):
        need = min(quota[layer], orig - 1) - gone[layer]
        if need > 0:
            drop[layer] = ranked[layer][:need]
    return drop


def _fresh(**kw: Any) -> dict[str, Any]:
    return {"phase": "schedule", "next": 0, "schedule": [], "masks": None, **kw}


def _structured(
    model: PreTrainedModel, cfg: PruneConfig, ctx: StageContext, saved: dict[str, Any] | None
) -> PreTrainedModel:
    blocks = list(layer_list(model))
    if cfg.head_sparsity > 0 and block_parts(blocks[0]).attn is None:
        raise ValueError(
            "head pruning supports BERT-family encoders and GPT-2 / Llama-layout decoders, "
            f"not {type(model).__name__}; set pipeline.prune.head_sparsity: 0 to prune FFN "
            "neurons only"
        )
    total_heads = model.config.num_attention_heads * len(blocks) if cfg.head_sparsity else 0
    st = saved or _fresh(widths=[ffn_width(b) for b in blocks])
    widths = st["widths"]  # before the first event (a resumed model is pruned already)
    setattr(model.config, FFN_WIDTHS, list(widths))
    kw = {"steps": cfg.steps, "every": cfg.prune_every, "exponent": cfg.exponent}
    ev_h = pruning_events(initial=min(cfg.initial_sparsity, cfg.head_sparsity),
                          final=cfg.head_sparsity, **kw)  # fmt: skip
    ev_n = pruning_events(initial=min(cfg.initial_sparsity, cfg.neuron_sparsity),
                          final=cfg.neuron_sparsity, **kw)  # fmt: skip

    def prune_at(i: int) -> dict[str, Any]:
        (t, s_h), (_, s_n) = ev_h[i], ev_n[i]
        draw = cfg.criterion_used != "magnitude" or cfg.reconstruct != "none"
        batches = _score_batches(ctx, cfg, ctx.seed + 1 + t) if draw else []
        done = prune_structured_to(
            model,
            heads_removed=round(s_h * total_heads),
            neurons_removed=[round(s_n * w) for w in widths],
            criterion=cfg.criterion_used,
            batches=batches,
            device=ctx.device,
            task=ctx.task,
            per_layer=cfg.head_ranking == "per_layer",
            normalized=cfg.head_ranking == "global_normalized",
            neuron_ranking=cfg.neuron_ranking,
            reconstruct=cfg.reconstruct,
        )
        return {"step": t, "head_sparsity": s_h, "neuron_sparsity": s_n, **done}

    _gradual(model, cfg, ctx, [t for t, _ in ev_h], prune_at, st)
    kept_heads = [len(head_ids(b)) for b in blocks] if total_heads else None
    kept_ffn = [ffn_width(b) for b in blocks]
    ctx.records["prune"] = PruneRecord(
        method="structured",
        criterion=cfg.criterion_used,
        heads_total=total_heads,
        heads_kept_per_layer=kept_heads,
        ffn_width=kept_ffn[0] if len(set(kept_ffn)) == 1 else None,
        ffn_widths=kept_ffn if len(set(kept_ffn)) > 1 else None,
        ffn_width_before=widths[0],
        schedule=st["schedule"],
        prune_train_steps=cfg.steps,
        dense_flops_reduced=True,
    )
    return model


def _masked(
    model: PreTrainedModel, cfg: PruneConfig, ctx: StageContext, saved: dict[str, Any] | None
) -> PreTrainedModel:
    st = saved or _fresh()
    if cfg.method == "semi_structured_2_4":  # 2:4 at t = 0, then train with it
        events = [(0, 0.5)]
    else:
        events = pruning_events(
            initial=min(cfg.initial_sparsity, cfg.weight_sparsity),
            final=cfg.weight_sparsity,
            steps=cfg.steps,
            every=cfg.prune_every,
            exponent=cfg.exponent,
        )

    def prune_at(i: int) -> dict[str, Any]:
        t, s = events[i]
        if cfg.method == "semi_structured_2_4":
            st["masks"] = two_four_masks(model)
        else:
            st["masks"] = magnitude_masks(model, s)
        apply_masks(model, st["masks"])
        return {"step": t, "sparsity": s}

    _gradual(model, cfg, ctx, [t for t, _ in events], prune_at, st)
    ctx.records["prune"] = PruneRecord(
        method=cfg.method,
        criterion="magnitude",
        schedule=st["schedule"],
        prune_train_steps=cfg.steps,
        dense_flops_reduced=False,
        sparsity=mask_sparsity(model),
        masks=st["masks"],
    )
    return model


def _recover(
    model: PreTrainedModel, cfg: PruneConfig, ctx: StageContext, saved: dict[str, Any] | None
) -> None:
    """Fine-tune at ``recovery_lr`` (warm-up/decay): stage steps ``cfg.steps`` + 1 … on."""
    seen: dict[str, float] = {}
    opt_box: list[torch.optim.Optimizer] = []
    # the learning rate of each step, read from the optimizer (kept in checkpoints)
    used_lrs: list[float] = list(saved["used_lrs"]) if saved else []
    masks = ctx.records["prune"].masks if cfg.method != "structured" else None

    def on_opt(opt: torch.optim.Optimizer) -> None:
        opt_box.append(opt)
        seen["optimizer_lr"] = float(opt.param_groups[0]["initial_lr"])
        if saved is None:  # resumed: the first step's lr is in used_lrs already
            used_lrs.append(float(opt.param_groups[0]["lr"]))

    def on_step(step: int, loss: float) -> None:
        if masks is not None:
            apply_masks(model, masks)
        used_lrs.append(float(opt_box[0].param_groups[0]["lr"]))  # for the next step

    use_teacher = cfg.kd and cfg.alpha_distill > 0
    stats = train_classifier(
        model,
        ctx.train,
        loss_fn=_loss(cfg, ctx),
        epochs=float(cfg.recovery_steps),
        max_steps=cfg.recovery_steps,
        lr=cfg.recovery_lr,
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.recovery_warmup_ratio,
        freeze_embeddings=cfg.freeze_embeddings,
        seed=ctx.seed + 7919,
        teacher_logits=ctx.teacher_logits if use_teacher else None,
        device=ctx.device,
        autocast_dtype=ctx.autocast_dtype,
        oom=ctx.oom,
        on_step=on_step,
        report=ctx.report,
        resume=ctx.resume,
        on_optimizer=on_opt,
        step_offset=cfg.steps,
        stage_state=lambda: {"phase": "recovery", "used_lrs": list(used_lrs)},
    )
    recovery = {
        "steps": stats.steps,
        "lr": cfg.recovery_lr,
        **seen,
        "peak_lr": max(used_lrs[: stats.steps]),
        "final_loss": stats.mean_loss_last_10,
    }
    sparsity = mask_sparsity(model) if masks is not None else ctx.records["prune"].sparsity
    ctx.records["prune"] = dataclasses.replace(
        ctx.records["prune"], recovery=recovery, sparsity=sparsity
    )


@register_stage(
    "prune",
    config=PruneConfig,
    record=PruneRecord,
    train_steps=lambda cfg, n_train: stage_steps(cfg),
    resumable=True,
    columns=_columns,
    save=_save,
)
def apply(model: PreTrainedModel, cfg: PruneConfig, ctx: StageContext) -> PreTrainedModel:
    model.to(ctx.device).eval()
    resume = ctx.resume  # a trial checkpoint taken inside this stage, if any
    saved = None if resume is None else resume.stage
    if resume is not None and saved is None:
        raise ValueError("the checkpoint holds no prune progress (taken in another stage?)")
    if saved is None or saved["phase"] == "schedule":
        run = _structured if cfg.method == "structured" else _masked
        model = run(model, cfg, ctx, saved)
    if cfg.recovery_steps > 0:
        _recover(model, cfg, ctx, saved if saved and saved["phase"] == "recovery" else None)
    return model
