"""``distill`` stage: train the student from the teacher's logits and the labels.

Loss (Hinton et al. 2015)::

    L = α_distill · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + α_task · CE(z_s, y)

The T² factor keeps the soft-target gradients on the same scale as the hard-target ones
when T changes. ``kd: false`` is the no-distillation control (labels only, same steps).

Optional feature terms (TinyBERT, Jiao et al. 2020), each with its own weight:
``alpha_hidden`` · mean over mapped layers of MSE(h_s^i, h_t^{map(i)}) on non-padding tokens,
and ``alpha_attention`` · the same on head-averaged attention maps (so a head-pruned student
still compares with its teacher). An **ensemble teacher** replaces z_t by the weighted mean
Σ w_k z_t^k / Σ w_k of several teachers' logits (:func:`ensemble_logits`). The study file
names them under ``distill.teachers`` (``teacher`` = the study's teacher, else a local saved
model, loaded with :func:`engine.compress.save.load_compressed` so compressed students can
teach too); their train logits are computed once per trial (:func:`teacher_targets`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedModel

from engine.compress.base import StageContext, register_stage
from engine.config import DistillConfig
from engine.train import train_classifier

__all__ = [
    "apply",
    "attention_mse",
    "ensemble_logits",
    "hidden_mse",
    "layer_mapping",
    "saved_model_logits",
    "teacher_targets",
]


def ensemble_logits(logits: list[torch.Tensor], weights: tuple[float, ...] | list[float]):
    """Weighted average Σ w_k z_k / Σ w_k of several teachers' logits (same shape)."""
    if len(logits) != len(weights):
        raise ValueError(f"{len(weights)} teacher weights for {len(logits)} teachers")
    if len({tuple(z.shape) for z in logits}) != 1:
        raise ValueError("ensemble teachers' logits differ in shape")
    w = torch.as_tensor(weights, dtype=logits[0].dtype)
    return (torch.stack(logits) * w.view(-1, *([1] * logits[0].dim()))).sum(0) / w.sum()


def saved_model_logits(
    path: str, train: dict[str, torch.Tensor], device: torch.device, batch_size: int = 64
) -> torch.Tensor:
    """Logits [N, C] (float32, CPU) of the model saved at ``path`` on ``train``'s inputs."""
    from engine.compress.save import MANIFEST, load_compressed
    from engine.compress.structure import load_pruned

    manifest = Path(path) / MANIFEST
    model = load_compressed(path) if manifest.is_file() else load_pruned(path)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and int(train["input_ids"].max()) >= vocab:
        raise ValueError(f"teacher {path}: vocabulary of {vocab} does not cover the study's tokens")
    if not (manifest.is_file() and json.loads(manifest.read_text()).get("requantize")):
        model.to(device)  # a quantized teacher stays on the device it was quantized for
    where = next(model.parameters()).device
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(train["input_ids"]), batch_size):
            z = model(
                input_ids=train["input_ids"][i : i + batch_size].to(where),
                attention_mask=train["attention_mask"][i : i + batch_size].to(where),
            )
            out.append(getattr(z, "logits", z).float().cpu())
    return torch.cat(out)


def teacher_targets(cfg: DistillConfig, ctx: StageContext) -> torch.Tensor:
    """The logits the student is distilled towards: the study teacher's, or the weighted
    ensemble of ``cfg.teachers`` / (legacy) ``cfg.teacher_weights`` with the teachers in
    ``ctx.extras["extra_teacher_logits"]``."""
    if cfg.teachers is not None:
        logits = []
        for t in cfg.teachers:
            if t.path == "teacher":
                logits.append(ctx.teacher_logits)
                continue
            key = f"teacher_logits:{t.path}"
            if key not in ctx.extras:  # a later distill stage reuses them
                ctx.extras[key] = saved_model_logits(t.path, ctx.train, ctx.device)
            z = ctx.extras[key]
            if z.shape != ctx.teacher_logits.shape:
                raise ValueError(
                    f"teacher {t.path} gives logits {tuple(z.shape)}, the study's teacher "
                    f"{tuple(ctx.teacher_logits.shape)} (labels or training set differ)"
                )
            logits.append(z)
        return ensemble_logits(logits, [t.weight for t in cfg.teachers])
    if cfg.teacher_weights is not None:
        extra = list(ctx.extras.get("extra_teacher_logits", []))
        return ensemble_logits([ctx.teacher_logits, *extra], cfg.teacher_weights)
    return ctx.teacher_logits


def layer_mapping(student_layers: int, teacher_layers: int, kept: list[int] | None) -> list[int]:
    """Teacher layer (0-based) for each student layer: the kept ones after truncation, else
    evenly spaced ending at the last (layer ⌊(i+1)·L/k⌉ − 1)."""
    if kept is not None and len(kept) == student_layers:
        return list(kept)
    return [
        min(teacher_layers, int((i + 1) * teacher_layers / student_layers + 0.5)) - 1
        for i in range(student_layers)
    ]


def hidden_mse(
    student: tuple[torch.Tensor, ...],
    teacher: tuple[torch.Tensor, ...],
    mapping: list[int],
    mask: torch.Tensor,
) -> torch.Tensor:
    """Mean over mapped layers of the MSE between block outputs on non-padding tokens.

    ``student``/``teacher`` are HF ``hidden_states`` (embeddings first, then each block)."""
    m = mask.unsqueeze(-1).to(student[0].dtype)
    denom = m.sum() * student[0].shape[-1]
    terms = [
        ((student[i + 1] - teacher[t + 1]).pow(2) * m).sum() / denom for i, t in enumerate(mapping)
    ]
    return torch.stack(terms).mean()


def attention_mse(
    student: tuple[torch.Tensor, ...],
    teacher: tuple[torch.Tensor, ...],
    mapping: list[int],
    mask: torch.Tensor,
) -> torch.Tensor:
    """Mean over mapped layers of the MSE between head-averaged attention maps [B, S, S],
    over query and key positions that are both real tokens."""
    pair = (mask.unsqueeze(2) * mask.unsqueeze(1)).to(student[0].dtype)
    terms = [
        ((student[i].mean(1) - teacher[t].mean(1)).pow(2) * pair).sum() / pair.sum()
        for i, t in enumerate(mapping)
    ]
    return torch.stack(terms).mean()


def _features_aux(model: PreTrainedModel, cfg: DistillConfig, ctx: StageContext):
    """(aux_loss, forward_kwargs) for the hidden/attention terms, or (None, None)."""
    if cfg.alpha_hidden == 0 and cfg.alpha_attention == 0:
        return None, None
    from engine.models import num_layers

    k, big_l = num_layers(model), num_layers(ctx.teacher)
    kept = ctx.record.get("truncate", {}).get("kept_layers")
    mapping = list(cfg.layer_map) if cfg.layer_map else layer_mapping(k, big_l, kept)
    if len(mapping) != k or min(mapping) < 0 or max(mapping) >= big_l:
        raise ValueError(
            f"layer_map {mapping} does not map {k} student onto {big_l} teacher layers"
        )
    if model.config.hidden_size != ctx.teacher.config.hidden_size:
        raise ValueError("hidden-state distillation needs equal hidden sizes")
    want_attn = cfg.alpha_attention > 0
    kwargs = {"output_hidden_states": True, "output_attentions": want_attn}

    def aux(out, idx: torch.Tensor) -> torch.Tensor:
        ids = ctx.train["input_ids"][idx].to(ctx.device)
        mask = ctx.train["attention_mask"][idx].to(ctx.device)
        with torch.no_grad():
            t_out = ctx.teacher(input_ids=ids, attention_mask=mask, **kwargs)
        loss = cfg.alpha_hidden * hidden_mse(out.hidden_states, t_out.hidden_states, mapping, mask)
        if want_attn:
            loss = loss + cfg.alpha_attention * attention_mse(
                out.attentions, t_out.attentions, mapping, mask
            )
        return loss

    ctx.record.setdefault("distill_features", {})["layer_map"] = mapping
    return aux, kwargs


@register_stage("distill")
def apply(model: PreTrainedModel, cfg: DistillConfig, ctx: StageContext) -> PreTrainedModel:
    alpha_d, alpha_t = (cfg.alpha_distill, cfg.alpha_task) if cfg.kd else (0.0, 1.0)

    def loss_fn(s: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        return ctx.task.kd_loss(
            s, y, t, temperature=cfg.temperature, alpha_distill=alpha_d, alpha_task=alpha_t
        )

    teacher_logits = teacher_targets(cfg, ctx) if alpha_d > 0 else None
    aux, fwd = _features_aux(model, cfg, ctx)
    attn_impls = []
    if cfg.alpha_attention > 0:  # SDPA cannot return attention maps: eager while training
        for m in (model, ctx.teacher):
            attn_impls.append(m.config._attn_implementation)
            m.set_attn_implementation("eager")
    try:
        stats = train_classifier(
            model,
            ctx.train,
            loss_fn=loss_fn,
            epochs=cfg.epochs,
            max_steps=cfg.max_steps,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            weight_decay=cfg.weight_decay,
            warmup_ratio=cfg.warmup_ratio,
            freeze_embeddings=cfg.freeze_embeddings,
            seed=ctx.seed,
            teacher_logits=teacher_logits,
            device=ctx.device,
            autocast_dtype=ctx.autocast_dtype,
            oom=ctx.oom,
            aux_loss=aux,
            forward_kwargs=fwd,
            report=ctx.report,
            resume=ctx.resume,
        )
    finally:
        for m, impl in zip((model, ctx.teacher), attn_impls, strict=False):
            m.set_attn_implementation(impl)
    ctx.record["distill"] = {
        "kd": cfg.kd,
        "alpha_distill": alpha_d,
        "alpha_task": alpha_t,
        "alpha_hidden": cfg.alpha_hidden,
        "alpha_attention": cfg.alpha_attention,
        "teachers": len(cfg.teachers or cfg.teacher_weights or (1,)),
        "temperature": cfg.temperature,
        "steps": stats.steps,
        "final_loss": stats.mean_loss_last_10,
    }
    if cfg.teachers is not None:
        total = sum(t.weight for t in cfg.teachers)
        ctx.record["distill"]["ensemble"] = [
            {"path": t.path, "weight": t.weight / total} for t in cfg.teachers
        ]
    return model
