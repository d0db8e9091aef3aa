"""One training loop for every place the engine trains a classifier.

Teacher fine-tuning (labels only) and student distillation (teacher logits + labels) differ
only in the loss, so both call :func:`train_classifier` with a ``loss_fn``.

:func:`progress_hook` turns a stage context's ``report`` callable into an ``on_step`` hook, so
a training stage reports intermediate results (for early-stopping schedulers) in one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

__all__ = ["ProgressReport", "TrainStats", "progress_hook", "train_classifier"]

# loss_fn(student_logits, labels, teacher_logits_or_None) -> scalar loss
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class TrainStats:
    steps: int
    examples_seen: int
    final_loss: float
    mean_loss_last_10: float


@runtime_checkable
class ProgressReport(Protocol):
    """A ``report`` callable that also says how often to report and what to measure.

    ``every``: report every N optimizer steps; ``measure(model)``: metrics of the model being
    trained (e.g. validation accuracy, GFLOPs), merged into the report.
    """

    every: int

    def measure(self, model: nn.Module) -> dict[str, float]: ...

    def __call__(self, metrics: dict[str, Any]) -> None: ...


def progress_hook(
    model: nn.Module, report: Callable[[dict[str, Any]], None]
) -> Callable[[int, float], None]:
    """An ``on_step`` hook that reports ``{"step", "train_loss", **measure(model)}``.

    A plain callable is called on every step with step and loss only; a
    :class:`ProgressReport` every ``report.every`` steps, with its measurements. The model is
    put back in training mode after measuring.
    """
    every = report.every if isinstance(report, ProgressReport) else 1

    def on_step(step: int, loss: float) -> None:
        if step % every:
            return
        metrics: dict[str, Any] = {"step": step, "train_loss": loss}
        if isinstance(report, ProgressReport):
            metrics.update(report.measure(model))
            model.train()
        report(metrics)

    return on_step


def _freeze_embeddings(model: nn.Module) -> None:
    emb = model.get_input_embeddings()
    for p in emb.parameters():
        p.requires_grad_(False)


def train_classifier(
    model: PreTrainedModel,
    train: dict[str, torch.Tensor],
    *,
    loss_fn: LossFn,
    epochs: float,
    lr: float,
    batch_size: int,
    seed: int,
    max_steps: int | None = None,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.1,
    freeze_embeddings: bool = True,
    teacher_logits: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, float], None] | None = None,
    on_optimizer: Callable[[torch.optim.Optimizer], None] | None = None,
    aux_loss: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
    forward_kwargs: dict[str, Any] | None = None,
) -> TrainStats:
    """Train ``model`` in place with AdamW and a linear warm-up/decay schedule.

    The example order is a permutation drawn from ``seed`` each epoch, so a run is
    reproducible. ``epochs`` may be fractional; ``max_steps`` caps the step count.
    ``on_optimizer`` sees the optimizer once it is built; ``on_step(step, loss)`` runs after
    every optimizer step (e.g. to re-apply pruning masks). ``aux_loss(outputs, idx)`` adds a
    term computed from the model's full outputs (run with ``forward_kwargs``, e.g.
    ``output_hidden_states=True``) and the batch's row indices into ``train``.
    """
    device = torch.device(device)
    n = int(train["labels"].shape[0])
    if n == 0:
        raise ValueError("cannot train on an empty training set")
    steps_per_epoch = math.ceil(n / batch_size)
    total = max(1, math.ceil(epochs * steps_per_epoch))
    if max_steps is not None:
        total = min(total, max_steps)
    if freeze_embeddings:
        _freeze_embeddings(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = get_linear_schedule_with_warmup(opt, int(warmup_ratio * total), total)
    if on_optimizer is not None:
        on_optimizer(opt)
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    losses: list[float] = []
    step = 0
    seen = 0
    while step < total:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            if step >= total:
                break
            idx = order[start : start + batch_size]
            ids = train["input_ids"][idx].to(device)
            mask = train["attention_mask"][idx].to(device)
            labels = train["labels"][idx].to(device)
            t_logits = teacher_logits[idx].to(device) if teacher_logits is not None else None
            outputs = model(input_ids=ids, attention_mask=mask, **(forward_kwargs or {}))
            loss = loss_fn(outputs.logits, labels, t_logits)
            if aux_loss is not None:
                loss = loss + aux_loss(outputs, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            seen += len(idx)
            step += 1
            if on_step is not None:
                on_step(step, losses[-1])
    model.eval()
    last = losses[-10:]
    return TrainStats(step, seen, losses[-1], sum(last) / len(last))
