"""One training loop for every place the engine trains a classifier.

Teacher fine-tuning (labels only) and student distillation (teacher logits + labels) differ
only in the loss, so both call :func:`train_classifier` with a ``loss_fn``.

:func:`progress_hook` turns a stage context's ``report`` callable into an ``on_step`` hook, so
a training stage reports intermediate results (for early-stopping schedulers) in one line.

Checkpoints: while :func:`train_classifier` runs, :func:`active_training` gives its live
:class:`TrainingState` (model, optimizer, LR schedule, example order, step, RNG), whose
:meth:`~TrainingState.snapshot` a trial saves with a report. Inside :func:`resuming`, the next
``train_classifier`` call continues from such a snapshot instead of step 0 — bit for bit, as
the example order, optimizer moments and the torch RNG (dropout) are restored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

__all__ = [
    "ProgressReport",
    "TrainStats",
    "TrainingState",
    "active_training",
    "progress_hook",
    "resuming",
    "train_classifier",
]

# loss_fn(student_logits, labels, teacher_logits_or_None) -> scalar loss
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class TrainStats:
    steps: int
    examples_seen: int
    final_loss: float
    mean_loss_last_10: float


@dataclass
class TrainingState:
    """The live state of a running :func:`train_classifier` call.

    ``order`` is the current epoch's example permutation and ``pos`` the next batch's start
    in it; ``losses`` keeps the last 10 step losses (what :class:`TrainStats` needs).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    total: int
    order: torch.Tensor | None = None
    pos: int = 0
    step: int = 0
    seen: int = 0
    losses: list[float] = field(default_factory=list)
    resumed_from: int | None = None

    def snapshot(self) -> dict[str, Any]:
        """Everything but the model needed to continue this run exactly (picklable)."""
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "total": self.total,
            "order": None if self.order is None else self.order.clone(),
            "pos": self.pos,
            "step": self.step,
            "seen": self.seen,
            "losses": list(self.losses[-10:]),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        if int(snap["total"]) != self.total:
            raise ValueError(
                f"checkpoint is for a {snap['total']}-step run, this run has {self.total} steps"
            )
        self.optimizer.load_state_dict(snap["optimizer"])
        self.scheduler.load_state_dict(snap["scheduler"])
        self.generator.set_state(snap["generator"])
        self.order, self.pos = snap["order"], int(snap["pos"])
        self.step, self.seen = int(snap["step"]), int(snap["seen"])
        self.losses = list(snap["losses"])
        self.resumed_from = self.step
        torch.set_rng_state(snap["torch_rng"])
        if snap.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(snap["cuda_rng"])


_ACTIVE: ContextVar[TrainingState | None] = ContextVar("active_training", default=None)
_RESUME: ContextVar[dict[str, Any] | None] = ContextVar("resume_training", default=None)


def active_training() -> TrainingState | None:
    """The state of the :func:`train_classifier` call running in this thread, if any."""
    return _ACTIVE.get()


@contextmanager
def resuming(snapshot: dict[str, Any] | None) -> Iterator[None]:
    """The first :func:`train_classifier` call inside continues from ``snapshot``.

    Raises ``RuntimeError`` on exit if no call took it (the stage did not train as expected).
    """
    token = _RESUME.set(snapshot)
    try:
        yield
        if snapshot is not None and _RESUME.get() is not None:
            raise RuntimeError("the stage did not resume its training from the checkpoint")
    finally:
        _RESUME.reset(token)


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
    st = TrainingState(model, opt, sched, gen, total)
    snap = _RESUME.get()
    if snap is not None:  # continue a checkpointed run (after the model is on its device)
        _RESUME.set(None)
        st.restore(snap)
    token = _ACTIVE.set(st)
    try:
        while st.step < total:
            if st.order is None or st.pos >= n:  # a new epoch: a new permutation
                st.order, st.pos = torch.randperm(n, generator=gen), 0
            idx = st.order[st.pos : st.pos + batch_size]
            st.pos += batch_size
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
            st.losses = [*st.losses[-9:], float(loss.detach())]
            st.seen += len(idx)
            st.step += 1
            if on_step is not None:
                on_step(st.step, st.losses[-1])
    finally:
        _ACTIVE.reset(token)
    model.eval()
    last = st.losses[-10:]
    return TrainStats(st.step, st.seen, st.losses[-1], sum(last) / len(last))
