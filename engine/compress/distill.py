"""``distill`` stage: train the student from the teacher's logits and the labels.

Loss (Hinton et al. 2015)::

    L = α_distill · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + α_task · CE(z_s, y)

The T² factor keeps the soft-target gradients on the same scale as the hard-target ones
when T changes. ``kd: false`` is the no-distillation control (labels only, same steps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from engine.compress.base import StageContext, register_stage
from engine.config import DistillConfig
from engine.train import progress_hook, train_classifier

__all__ = ["apply", "kd_loss"]


def kd_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    *,
    temperature: float,
    alpha_distill: float,
    alpha_task: float,
) -> torch.Tensor:
    """Knowledge-distillation loss; equals plain cross-entropy when ``alpha_distill == 0`` and
    ``alpha_task == 1``."""
    loss = alpha_task * F.cross_entropy(student_logits, labels)
    if alpha_distill > 0:
        if teacher_logits is None:
            raise ValueError("alpha_distill > 0 needs teacher logits")
        t = temperature
        log_p_s = F.log_softmax(student_logits / t, dim=-1)
        log_p_t = F.log_softmax(teacher_logits / t, dim=-1)
        kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")
        loss = loss + alpha_distill * t * t * kl
    return loss


@register_stage("distill")
def apply(model: PreTrainedModel, cfg: DistillConfig, ctx: StageContext) -> PreTrainedModel:
    alpha_d, alpha_t = (cfg.alpha_distill, cfg.alpha_task) if cfg.kd else (0.0, 1.0)

    def loss_fn(s: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        return kd_loss(
            s, y, t, temperature=cfg.temperature, alpha_distill=alpha_d, alpha_task=alpha_t
        )

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
        teacher_logits=ctx.teacher_logits if alpha_d > 0 else None,
        device=ctx.device,
        on_step=progress_hook(model, ctx.report) if ctx.report else None,
    )
    ctx.record["distill"] = {
        "kd": cfg.kd,
        "alpha_distill": alpha_d,
        "alpha_task": alpha_t,
        "temperature": cfg.temperature,
        "steps": stats.steps,
        "final_loss": stats.mean_loss_last_10,
    }
    return model
