"""``prune`` stage: gradual structured pruning with recovery, or weight masks.

``method: structured`` removes attention heads (ranked globally, at least one kept per layer)
and FFN neurons (the same number from every layer, so widths stay uniform) *physically* —
see :mod:`engine.compress.structure`. Units are scored by ``criterion``
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
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedModel

from engine.compress import masked
from engine.compress.base import StageContext, register_stage
from engine.compress.distill import kd_loss
from engine.compress.schedule import pruning_events
from engine.compress.scores import unit_scores
from engine.compress.structure import (
    block_parts,
    ffn_width,
    head_ids,
    remove_heads,
    remove_neurons,
    sync_config,
)
from engine.config import PruneConfig
from engine.models import layer_list
from engine.train import train_classifier

__all__ = ["apply", "prune_structured_to"]


class _Stream:
    """Mini-batch index stream: a fresh permutation of the training set per epoch (seeded)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n == 0:
            raise ValueError("cannot prune-train on an empty training set")
        self.n, self.bs = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.buf: list[torch.Tensor] = []

    def next(self) -> torch.Tensor:
        if not self.buf:
            order = torch.randperm(self.n, generator=self.gen)
            self.buf = list(order.split(self.bs))[::-1]
        return self.buf.pop()


def _loss(cfg: PruneConfig) -> Callable[..., torch.Tensor]:
    a_d, a_t = (cfg.alpha_distill, cfg.alpha_task) if cfg.kd else (0.0, 1.0)
    return lambda s, y, t: kd_loss(
        s, y, t, temperature=cfg.temperature, alpha_distill=a_d, alpha_task=a_t
    )


def _batch(ctx: StageContext, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: ctx.train[k][idx] for k in ("input_ids", "attention_mask", "labels")}


def _train_steps(
    model: PreTrainedModel,
    cfg: PruneConfig,
    ctx: StageContext,
    stream: _Stream,
    n: int,
    after_step: Callable[[], None] | None,
) -> list[float]:
    if n <= 0:
        return []
    if cfg.freeze_embeddings:
        for p in model.get_input_embeddings().parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = _loss(cfg)
    use_teacher = cfg.kd and cfg.alpha_distill > 0
    model.train()
    losses = []
    for _ in range(n):
        idx = stream.next()
        b = {k: v.to(ctx.device) for k, v in _batch(ctx, idx).items()}
        t = ctx.teacher_logits[idx].to(ctx.device) if use_teacher else None
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        loss = loss_fn(logits, b["labels"], t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def _score_batches(ctx: StageContext, cfg: PruneConfig, seed: int) -> list[dict]:
    stream = _Stream(int(ctx.train["labels"].shape[0]), cfg.batch_size, seed)
    return [_batch(ctx, stream.next()) for _ in range(cfg.score_batches)]


def prune_structured_to(
    model: PreTrainedModel,
    *,
    heads_removed: int,
    neurons_removed: list[int],
    criterion: str,
    batches: list[dict] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, int]:
    """Prune until ``heads_removed`` heads in total (global ranking, ≥ 1 kept per layer) and
    ``neurons_removed[l]`` neurons of layer l are gone, counting units removed before.

    Neuron counts are measured against the FFN widths at the first call (kept on the model).
    Returns how many heads and neurons this call removed.
    """
    blocks = list(layer_list(model))
    heads = heads_removed > 0
    if heads and block_parts(blocks[0]).attn is None:
        raise ValueError(f"head pruning is not supported for {type(model).__name__}")
    h_scores, n_scores = unit_scores(
        model, criterion, heads=heads, batches=batches or [], device=device
    )
    removed_h = removed_n = 0
    if heads and h_scores is not None:
        orig = model.config.num_attention_heads
        present = [len(head_ids(b)) for b in blocks]
        need = heads_removed - (orig * len(blocks) - sum(present))
        cands = sorted(
            (float(s), layer, pos)
            for layer, sc in enumerate(h_scores)
            for pos, s in enumerate(sc.tolist())
        )
        drop: dict[int, list[int]] = {}
        for _, layer, pos in cands:
            if need <= 0:
                break
            if present[layer] - len(drop.get(layer, [])) <= 1:
                continue  # keep at least one head per layer
            drop.setdefault(layer, []).append(pos)
            need -= 1
        for layer, pos in drop.items():
            remove_heads(blocks[layer], pos)
            removed_h += len(pos)
    widths = getattr(model, "_engine_ffn_widths", None) or [ffn_width(b) for b in blocks]
    model._engine_ffn_widths = widths  # type: ignore[attr-defined]
    for layer, (b, sc) in enumerate(zip(blocks, n_scores, strict=True)):
        need = neurons_removed[layer] - (widths[layer] - ffn_width(b))
        if need > 0:
            order = torch.argsort(sc, stable=True)[:need]
            remove_neurons(b, order.tolist())
            removed_n += need
    sync_config(model)
    return {"heads": removed_h, "neurons": removed_n}


def _structured(model: PreTrainedModel, cfg: PruneConfig, ctx: StageContext) -> PreTrainedModel:
    blocks = list(layer_list(model))
    if cfg.head_sparsity > 0 and block_parts(blocks[0]).attn is None:
        raise ValueError(
            f"head pruning supports BERT-family encoders, not {type(model).__name__}; "
            "set pipeline.prune.head_sparsity: 0 to prune FFN neurons only"
        )
    total_heads = model.config.num_attention_heads * len(blocks) if cfg.head_sparsity else 0
    widths = [ffn_width(b) for b in blocks]
    model._engine_ffn_widths = widths  # type: ignore[attr-defined]
    kw = {"steps": cfg.steps, "every": cfg.prune_every, "exponent": cfg.exponent}
    ev_h = pruning_events(initial=min(cfg.initial_sparsity, cfg.head_sparsity),
                          final=cfg.head_sparsity, **kw)  # fmt: skip
    ev_n = pruning_events(initial=min(cfg.initial_sparsity, cfg.neuron_sparsity),
                          final=cfg.neuron_sparsity, **kw)  # fmt: skip
    stream = _Stream(int(ctx.train["labels"].shape[0]), cfg.batch_size, ctx.seed)
    schedule, losses, prev_t = [], [], 0
    for (t, s_h), (_, s_n) in zip(ev_h, ev_n, strict=True):
        losses += _train_steps(model, cfg, ctx, stream, t - prev_t, None)
        prev_t = t
        batches = _score_batches(ctx, cfg, ctx.seed + 1 + t) if cfg.criterion != "magnitude" else []
        done = prune_structured_to(
            model,
            heads_removed=round(s_h * total_heads),
            neurons_removed=[round(s_n * w) for w in widths],
            criterion=cfg.criterion,
            batches=batches,
            device=ctx.device,
        )
        schedule.append({"step": t, "head_sparsity": s_h, "neuron_sparsity": s_n, **done})
    kept_heads = [len(head_ids(b)) for b in blocks] if total_heads else None
    ctx.record["prune"] = {
        "method": "structured",
        "criterion": cfg.criterion,
        "heads_total": total_heads,
        "heads_kept_per_layer": kept_heads,
        "ffn_width": ffn_width(blocks[0]),
        "ffn_width_before": widths[0],
        "schedule": schedule,
        "prune_train_steps": len(losses),
        "dense_flops_reduced": True,
    }
    return model


def _masked(model: PreTrainedModel, cfg: PruneConfig, ctx: StageContext) -> PreTrainedModel:
    stream = _Stream(int(ctx.train["labels"].shape[0]), cfg.batch_size, ctx.seed)
    state: dict[str, list[torch.Tensor]] = {}

    def reapply() -> None:
        masked.apply_masks(model, state["masks"])

    schedule, losses = [], []
    if cfg.method == "semi_structured_2_4":
        state["masks"] = masked.two_four_masks(model)
        reapply()
        schedule.append({"step": 0, "sparsity": 0.5})
        losses += _train_steps(model, cfg, ctx, stream, cfg.steps, reapply)
    else:
        prev_t = 0
        for t, s in pruning_events(
            initial=min(cfg.initial_sparsity, cfg.weight_sparsity),
            final=cfg.weight_sparsity,
            steps=cfg.steps,
            every=cfg.prune_every,
            exponent=cfg.exponent,
        ):
            if "masks" in state:
                losses += _train_steps(model, cfg, ctx, stream, t - prev_t, reapply)
            prev_t = t
            state["masks"] = masked.magnitude_masks(model, s)
            reapply()
            schedule.append({"step": t, "sparsity": s})
    ctx.record["prune"] = {
        "method": cfg.method,
        "criterion": "magnitude",
        "schedule": schedule,
        "prune_train_steps": len(losses),
        "dense_flops_reduced": False,
    }
    ctx.record["sparsity"] = masked.mask_sparsity(model)
    ctx.extras["masks"] = state["masks"]
    return model


def _recover(model: PreTrainedModel, cfg: PruneConfig, ctx: StageContext) -> None:
    seen: dict[str, float] = {}
    opt_box: list[torch.optim.Optimizer] = []
    used_lrs: list[float] = []  # the learning rate of each step, read from the optimizer
    masks = ctx.extras.get("masks") if cfg.method != "structured" else None

    def on_opt(opt: torch.optim.Optimizer) -> None:
        opt_box.append(opt)
        seen["optimizer_lr"] = float(opt.param_groups[0]["initial_lr"])
        used_lrs.append(float(opt.param_groups[0]["lr"]))

    def on_step(_step: int, _loss: float) -> None:
        if masks is not None:
            masked.apply_masks(model, masks)
        used_lrs.append(float(opt_box[0].param_groups[0]["lr"]))  # for the next step

    use_teacher = cfg.kd and cfg.alpha_distill > 0
    stats = train_classifier(
        model,
        ctx.train,
        loss_fn=_loss(cfg),
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
        on_step=on_step,
        on_optimizer=on_opt,
    )
    ctx.record["prune"]["recovery"] = {
        "steps": stats.steps,
        "lr": cfg.recovery_lr,
        **seen,
        "peak_lr": max(used_lrs[: stats.steps]),
        "final_loss": stats.mean_loss_last_10,
    }
    if masks is not None:
        ctx.record["sparsity"] = masked.mask_sparsity(model)


@register_stage("prune")
def apply(model: PreTrainedModel, cfg: PruneConfig, ctx: StageContext) -> PreTrainedModel:
    model.to(ctx.device).eval()
    model = _structured(model, cfg, ctx) if cfg.method == "structured" else _masked(model, cfg, ctx)
    if cfg.recovery_steps > 0:
        _recover(model, cfg, ctx)
    return model
