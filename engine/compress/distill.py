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

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator
from transformers import PreTrainedModel

from engine.compress.base import JSON_OFF, OMIT_NONE, StageContext, StageRecord, register_stage
from engine.configbase import KDConfig, OptimConfig, Section
from engine.train import planned_steps, train_classifier

__all__ = [
    "DistillConfig",
    "DistillRecord",
    "EnsembleTeacher",
    "apply",
    "attention_mse",
    "ensemble_logits",
    "hidden_mse",
    "layer_mapping",
    "saved_model_logits",
    "teacher_targets",
    "train_steps",
]


class EnsembleTeacher(Section):
    """One member of an ensemble teacher: ``path`` is ``teacher`` (the study's fine-tuned
    teacher) or a local directory holding a saved sequence classifier with the study's labels
    and tokenizer (e.g. a run's ``models/<trial_id>/``); ``weight`` > 0."""

    path: str = Field(min_length=1)
    weight: float = Field(gt=0)

    @model_validator(mode="after")
    def _exists(self) -> EnsembleTeacher:
        if self.path != "teacher" and not (Path(self.path) / "config.json").is_file():
            raise ValueError(
                f"teacher path {self.path!r} is neither 'teacher' nor a directory with a "
                "saved model (config.json); nothing is downloaded"
            )
        return self


class DistillConfig(OptimConfig, KDConfig):
    """Train the student: ``alpha_distill`` · T² · KL(teacher_T ‖ student_T) + ``alpha_task`` · CE.

    ``kd: false`` is the no-distillation control: same steps and learning rate, labels only
    (α_distill = 0, α_task = 1).
    """

    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    # Feature distillation (TinyBERT-style), each with its own weight; 0 = off. Student layer i
    # is matched to teacher layer ``layer_map[i]`` (0-based); default: the layers truncate kept,
    # else evenly spaced. Attention terms compare head-averaged attention maps (any head count).
    alpha_hidden: float = Field(0.0, ge=0)
    alpha_attention: float = Field(0.0, ge=0)
    layer_map: tuple[int, ...] | None = None
    # Ensemble teacher: weights of the study's teacher followed by the extra teachers whose
    # train logits a caller puts in ctx.extra_teacher_logits; None = single teacher.
    teacher_weights: tuple[float, ...] | None = None
    # Ensemble teacher from the study file: the target is Σ w_k z_k / Σ w_k over these
    # teachers' logits (weights are normalised, so any positive weights will do).
    teachers: tuple[EnsembleTeacher, ...] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _weights(self) -> DistillConfig:
        if self.teachers is not None:
            if self.teacher_weights is not None:
                raise ValueError("set teachers or teacher_weights, not both")
            paths = [t.path for t in self.teachers]
            if len(set(paths)) != len(paths):
                raise ValueError(f"teachers lists a path twice: {paths}")
        if self.teacher_weights is not None and (
            not self.teacher_weights
            or min(self.teacher_weights) < 0
            or sum(self.teacher_weights) <= 0
        ):
            raise ValueError("teacher_weights must be non-negative with a positive sum")
        return self


@dataclass(frozen=True)
class DistillRecord(StageRecord):
    """The loss weights used, the steps trained and the last 10 steps' mean loss; with
    feature terms the layer map (saved as ``distill_features``), with a study-file ensemble
    its normalised members."""

    kd: bool
    alpha_distill: float
    alpha_task: float
    alpha_hidden: float
    alpha_attention: float
    teachers: int
    temperature: float
    steps: int
    final_loss: float
    ensemble: list[dict[str, Any]] | None = field(default=None, metadata=OMIT_NONE)
    layer_map: list[int] | None = field(default=None, metadata=JSON_OFF)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {self.key: self.payload()}
        if self.layer_map is not None:
            out["distill_features"] = {"layer_map": self.layer_map}
        return out

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> DistillRecord | None:
        base = super().from_json(record)
        if base is None or "distill_features" not in record:
            return base  # type: ignore[return-value]
        return dataclasses.replace(base, layer_map=record["distill_features"]["layer_map"])


def train_steps(cfg: DistillConfig, n_train: int) -> int:
    """Optimizer steps of a full run: ``epochs`` passes of ⌈n / batch_size⌉ batches (at least
    one), capped at ``max_steps``."""
    return planned_steps(n_train, cfg.batch_size, cfg.epochs, cfg.max_steps)


def _row_columns(record: DistillRecord | None) -> dict[str, Any]:
    return {"step": record.steps if record else None}


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
    ``ctx.extra_teacher_logits``."""
    if cfg.teachers is not None:
        logits = []
        for t in cfg.teachers:
            if t.path == "teacher":
                logits.append(ctx.teacher_logits)
                continue
            if t.path not in ctx.teacher_cache:  # a later distill stage reuses them
                ctx.teacher_cache[t.path] = saved_model_logits(t.path, ctx.train, ctx.device)
            z = ctx.teacher_cache[t.path]
            if z.shape != ctx.teacher_logits.shape:
                raise ValueError(
                    f"teacher {t.path} gives logits {tuple(z.shape)}, the study's teacher "
                    f"{tuple(ctx.teacher_logits.shape)} (labels or training set differ)"
                )
            logits.append(z)
        return ensemble_logits(logits, [t.weight for t in cfg.teachers])
    if cfg.teacher_weights is not None:
        extra = list(ctx.extra_teacher_logits)
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
    """(aux_loss, forward_kwargs, layer_map) for the hidden/attention terms, or Nones."""
    if cfg.alpha_hidden == 0 and cfg.alpha_attention == 0:
        return None, None, None
    from engine.models import num_layers

    k, big_l = num_layers(model), num_layers(ctx.teacher)
    kept = ctx.kept_teacher_layers()
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

    return aux, kwargs, mapping


@register_stage(
    "distill",
    config=DistillConfig,
    record=DistillRecord,
    default_on=True,
    train_steps=train_steps,
    resumable=True,
    row_columns=_row_columns,
)
def apply(model: PreTrainedModel, cfg: DistillConfig, ctx: StageContext) -> PreTrainedModel:
    alpha_d, alpha_t = (cfg.alpha_distill, cfg.alpha_task) if cfg.kd else (0.0, 1.0)

    def loss_fn(s: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        return ctx.task.kd_loss(
            s, y, t, temperature=cfg.temperature, alpha_distill=alpha_d, alpha_task=alpha_t
        )

    teacher_logits = teacher_targets(cfg, ctx) if alpha_d > 0 else None
    aux, fwd, mapping = _features_aux(model, cfg, ctx)
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
    ensemble = None
    if cfg.teachers is not None:
        total = sum(t.weight for t in cfg.teachers)
        ensemble = [{"path": t.path, "weight": t.weight / total} for t in cfg.teachers]
    ctx.records["distill"] = DistillRecord(
        kd=cfg.kd,
        alpha_distill=alpha_d,
        alpha_task=alpha_t,
        alpha_hidden=cfg.alpha_hidden,
        alpha_attention=cfg.alpha_attention,
        teachers=len(cfg.teachers or cfg.teacher_weights or (1,)),
        temperature=cfg.temperature,
        steps=stats.steps,
        final_loss=stats.mean_loss_last_10,
        ensemble=ensemble,
        layer_map=mapping,
    )
    return model
