"""One training loop for every place the engine trains a classifier.

Teacher fine-tuning (labels only) and student distillation (teacher logits + labels) differ
only in the loss, so both call :func:`train_classifier` with a ``loss_fn``.

:func:`progress_hook` turns a stage context's ``report`` callable into a hook that
:func:`train_classifier` runs after each step (``report=ctx.report``), so a training stage
reports intermediate results (for early-stopping schedulers) in one argument. A
:class:`ProgressReport` is called with the live :class:`TrainingState` (model, optimizer, LR
schedule, example order, step, RNG) as ``training``: a trial's reporter saves its
:meth:`~TrainingState.snapshot` with the report (:mod:`engine.checkpoint`).

Resume is an argument: ``train_classifier(..., resume=ctx.resume)`` continues from the
checkpoint's snapshot instead of step 0 — bit for bit, as the example order, optimizer moments
and the torch RNG (dropout) are restored — when it is the first training call of the stage to
get it (:class:`engine.checkpoint.StageResume`: the snapshot is taken once).

A stage that trains in several calls (``prune``: one call per stretch between pruning events,
then one for recovery) counts its steps on one stage-step axis: each call gets ``step_offset``
(the stage's steps before it; hooks see stage steps) and ``stage_state``, a callable whose
dict (the stage's own progress: events done, masks, record so far) the snapshot carries as
``"stage"`` beside ``"stage_step"``. On resume the stage reads that from
``ctx.resume.stage``, skips what it had done, and passes ``ctx.resume`` to its training calls
(the first one continues). A :class:`BatchOrder` passed as ``batches`` carries the example
order (seeded permutation and position in it) from one call to the next.

Out of memory: when a step's forward or backward raises a device out-of-memory error
(:func:`engine.device.is_out_of_memory`), the step is redone with the batch cut into
micro-batches of half the size, gradients accumulated over them, until it fits (then the
smaller size is kept for the rest of the call). The optimizer still steps once per batch on
the batch-mean loss — each micro-batch's loss weighted by its share of the batch — so the
step count, LR schedule, example order and checkpoints are those of the unsplit run, and the
result equals it up to float rounding (exact for per-example-mean losses; the hidden-state
and attention distillation terms normalise by tokens, which the example weighting
approximates). Each retry is logged and counted in ``TrainStats.oom_retries`` and in the
:class:`OomLog` a trial passes (the results' ``oom_retries`` and ``train_micro_batch_size``).

Precision: ``autocast_dtype`` (e.g. ``torch.bfloat16``, see :mod:`engine.device`) runs each
forward and the loss under ``torch.autocast``; the loss itself is taken on float32 logits
and the backward runs outside the autocast region, as PyTorch recommends.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from engine.device import autocast, is_out_of_memory

if TYPE_CHECKING:
    from engine.checkpoint import StageResume

__all__ = [
    "BatchOrder",
    "OomLog",
    "ProgressReport",
    "StopTraining",
    "TrainStats",
    "TrainingState",
    "planned_steps",
    "progress_hook",
    "train_classifier",
]

log = logging.getLogger(__name__)

# loss_fn(student_logits, labels, teacher_logits_or_None) -> scalar loss
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
StageState = Callable[[], dict[str, Any]]


def planned_steps(n: int, batch_size: int, epochs: float, max_steps: int | None) -> int:
    """Optimizer steps of a full run: ``epochs`` passes of ⌈n / batch_size⌉ batches (at least
    one), capped at ``max_steps``."""
    steps = max(1, math.ceil(epochs * math.ceil(n / batch_size)))
    return steps if max_steps is None else min(steps, max_steps)


class StopTraining(Exception):
    """Raised by an ``on_step`` callback to end :func:`train_classifier` after this step
    (e.g. early stopping): the loop stops, the step counts, and the call returns normally."""


@dataclass(frozen=True)
class TrainStats:
    steps: int
    examples_seen: int
    final_loss: float
    mean_loss_last_10: float
    oom_retries: int = 0
    micro_batch_size: int | None = None  # examples per forward at the end; None = whole batch


@dataclass
class OomLog:
    """Out-of-memory retries across the training calls of one trial (or teacher run):
    how many, and the smallest micro-batch any call ended with (None = never split)."""

    retries: int = 0
    micro_batch_size: int | None = None

    def note(self, micro_batch_size: int) -> None:
        self.retries += 1
        if self.micro_batch_size is None or micro_batch_size < self.micro_batch_size:
            self.micro_batch_size = micro_batch_size


@dataclass
class BatchOrder:
    """Mini-batch row indices: a fresh permutation of ``n`` rows per epoch, drawn from
    ``generator``; ``order`` is the current epoch's permutation, ``pos`` the next batch's
    start in it. With ``replacement`` each batch is ``min(batch_size, n)`` rows drawn
    uniformly (no epochs; ``order`` stays None)."""

    n: int
    batch_size: int
    generator: torch.Generator
    order: torch.Tensor | None = None
    pos: int = 0
    replacement: bool = False

    @classmethod
    def seeded(cls, n: int, batch_size: int, seed: int, replacement: bool = False) -> BatchOrder:
        if n == 0:
            raise ValueError("cannot train on an empty training set")
        return cls(n, batch_size, torch.Generator().manual_seed(seed), replacement=replacement)

    def next(self) -> torch.Tensor:
        if self.replacement:
            return torch.randint(
                0, self.n, (min(self.batch_size, self.n),), generator=self.generator
            )
        if self.order is None or self.pos >= self.n:  # a new epoch: a new permutation
            self.order, self.pos = torch.randperm(self.n, generator=self.generator), 0
        idx = self.order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx


@dataclass
class TrainingState:
    """The live state of a running :func:`train_classifier` call.

    ``batches`` is the example order; ``losses`` keeps the last 10 step losses (what
    :class:`TrainStats` needs). ``step_offset``/``stage_state``: see the module docstring.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batches: BatchOrder
    total: int
    step: int = 0
    seen: int = 0
    losses: list[float] = field(default_factory=list)
    resumed_from: int | None = None
    step_offset: int = 0
    stage_state: StageState | None = None
    micro_batch: int | None = None  # examples per forward after an out-of-memory; None = all
    oom_retries: int = 0

    def snapshot(self) -> dict[str, Any]:
        """Everything but the model needed to continue this run exactly (picklable)."""
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        order = self.batches.order
        snap = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.batches.generator.get_state(),
            "total": self.total,
            "order": None if order is None else order.clone(),
            "pos": self.batches.pos,
            "step": self.step,
            "seen": self.seen,
            "losses": list(self.losses[-10:]),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda,
            "micro_batch": self.micro_batch,
            "oom_retries": self.oom_retries,
        }
        if self.stage_state is not None:
            snap["stage_step"] = self.step_offset + self.step
            snap["stage"] = self.stage_state()
        return snap

    def optimize(self, loss: torch.Tensor, examples: int) -> None:
        """One optimizer and LR-schedule step on ``loss``, counted (step, examples, loss)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.apply(float(loss.detach()), examples)

    def apply(self, loss: float, examples: int) -> None:
        """One optimizer and LR-schedule step on the gradients already accumulated, counted."""
        self.optimizer.step()
        self.scheduler.step()
        self.losses = [*self.losses[-9:], loss]
        self.seen += examples
        self.step += 1

    def restore(self, snap: dict[str, Any]) -> None:
        if int(snap["total"]) != self.total:
            raise ValueError(
                f"checkpoint is for a {snap['total']}-step run, this run has {self.total} steps"
            )
        if int(snap.get("stage_step", snap["step"])) - int(snap["step"]) != self.step_offset:
            raise ValueError("checkpoint is for another training call of this stage")
        self.optimizer.load_state_dict(snap["optimizer"])
        self.scheduler.load_state_dict(snap["scheduler"])
        self.batches.generator.set_state(snap["generator"])
        self.batches.order, self.batches.pos = snap["order"], int(snap["pos"])
        self.step, self.seen = int(snap["step"]), int(snap["seen"])
        self.losses = list(snap["losses"])
        self.resumed_from = self.step
        self.micro_batch = snap.get("micro_batch")
        self.oom_retries = int(snap.get("oom_retries", 0))
        torch.set_rng_state(snap["torch_rng"])
        if snap.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(snap["cuda_rng"])


@runtime_checkable
class ProgressReport(Protocol):
    """A ``report`` callable that also says how often to report and what to measure.

    ``every``: report every N optimizer steps; ``measure(model)``: metrics of the model being
    trained (e.g. validation accuracy, GFLOPs), merged into the report; ``training``: the live
    state of the training loop reporting (what a trial checkpoints), None outside one.
    """

    every: int

    def measure(self, model: nn.Module) -> dict[str, float]: ...

    def __call__(self, metrics: dict[str, Any], training: TrainingState | None = None) -> None: ...


ProgressFn = Callable[[int, float, "TrainingState | None"], None]


def progress_hook(model: nn.Module, report: Callable[..., None]) -> ProgressFn:
    """A hook ``(step, loss, training)`` that reports ``{"step", "train_loss", **measure(model)}``.

    A plain callable is called on every step with step and loss only; a
    :class:`ProgressReport` every ``report.every`` steps, with its measurements and the live
    ``training`` state. The model is put back in training mode after measuring.
    """
    every = report.every if isinstance(report, ProgressReport) else 1

    def hook(step: int, loss: float, training: TrainingState | None = None) -> None:
        if step % every:
            return
        metrics: dict[str, Any] = {"step": step, "train_loss": loss}
        if isinstance(report, ProgressReport):
            metrics.update(report.measure(model))
            model.train()
            report(metrics, training=training)
        else:
            report(metrics)

    return hook


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
    report: Callable[..., None] | None = None,
    resume: StageResume | None = None,
    on_optimizer: Callable[[torch.optim.Optimizer], None] | None = None,
    aux_loss: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
    forward_kwargs: dict[str, Any] | None = None,
    lr_schedule: Literal["linear", "constant"] = "linear",
    batches: BatchOrder | None = None,
    step_offset: int = 0,
    stage_state: StageState | None = None,
    autocast_dtype: torch.dtype | None = None,
    oom: OomLog | None = None,
) -> TrainStats:
    """Train ``model`` in place with AdamW and a linear warm-up/decay schedule.

    The example order is a permutation drawn from ``seed`` each epoch, so a run is
    reproducible. ``epochs`` may be fractional; ``max_steps`` caps the step count.
    ``on_optimizer`` sees the optimizer once it is built; ``on_step(step, loss)`` runs after
    every optimizer step (e.g. to re-apply pruning masks; raising :class:`StopTraining` ends
    the run after that step); then ``report`` (a stage context's
    ``report``) gets the step's progress through :func:`progress_hook`. ``resume`` (a stage
    context's ``resume``) continues from a trial checkpoint if no earlier call of the stage
    took it (module docstring). ``aux_loss(outputs, idx)`` adds a
    term computed from the model's full outputs (run with ``forward_kwargs``, e.g.
    ``output_hidden_states=True``) and the batch's row indices into ``train``.
    ``lr_schedule: constant`` keeps ``lr`` throughout (no warm-up/decay). ``batches`` continues
    an example order across calls (``seed`` is then unused). ``step_offset``/``stage_state``
    place the call on its stage's step axis (module docstring): ``on_step`` gets
    ``step_offset + step``. ``autocast_dtype`` runs forwards under autocast; ``oom`` counts
    out-of-memory retries (module docstring).
    """
    device = torch.device(device)
    n = int(train["labels"].shape[0])
    if n == 0:
        raise ValueError("cannot train on an empty training set")
    total = planned_steps(n, batch_size, epochs, max_steps)
    if freeze_embeddings:
        _freeze_embeddings(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if lr_schedule == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)
    else:
        sched = get_linear_schedule_with_warmup(opt, int(warmup_ratio * total), total)
    if on_optimizer is not None:
        on_optimizer(opt)
    if batches is None:
        batches = BatchOrder.seeded(n, batch_size, seed)
    elif (batches.n, batches.batch_size) != (n, batch_size):
        raise ValueError(
            f"batch order is for {batches.n} rows in batches of {batches.batch_size}, "
            f"not {n} in batches of {batch_size}"
        )
    model.to(device).train()
    st = TrainingState(model, opt, sched, batches, total, step_offset=step_offset,
                       stage_state=stage_state)  # fmt: skip
    if resume is not None:  # continue a checkpointed run (after the model is on its device)
        resume.restore(st)
    progress = progress_hook(model, report) if report is not None else None

    def forward_backward(idx: torch.Tensor) -> float:
        """Loss of the batch ``idx`` with its gradients accumulated, in micro-batches of
        ``st.micro_batch`` examples (one pass when None), each weighted by its share."""
        micro = st.micro_batch
        parts = [idx] if micro is None or micro >= len(idx) else list(idx.split(micro))
        total_loss = 0.0
        for part in parts:
            t_logits = teacher_logits[part].to(device) if teacher_logits is not None else None
            with autocast(device, autocast_dtype):
                outputs = model(
                    input_ids=train["input_ids"][part].to(device),
                    attention_mask=train["attention_mask"][part].to(device),
                    **(forward_kwargs or {}),
                )
                loss = loss_fn(outputs.logits.float(), train["labels"][part].to(device), t_logits)
                if aux_loss is not None:
                    loss = loss + aux_loss(outputs, part)
            if len(parts) > 1:
                loss = loss * (len(part) / len(idx))
            del outputs
            loss.backward()
            total_loss += float(loss.detach())
        return total_loss

    while st.step < total:
        idx = batches.next()
        while True:
            st.optimizer.zero_grad(set_to_none=True)
            size = min(st.micro_batch or len(idx), len(idx))
            try:
                loss_value = forward_backward(idx)
                break
            except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
                if not is_out_of_memory(err) or size <= 1:
                    raise
                why = str(err).splitlines()[0] if str(err) else type(err).__name__
            # outside the handler: the failed pass's tensors are free now
            st.optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            st.micro_batch = (size + 1) // 2
            st.oom_retries += 1
            if oom is not None:
                oom.note(st.micro_batch)
            log.warning(
                "out of memory at step %d with %d examples per forward; retrying the "
                "batch of %d in micro-batches of %d: %s",
                st.step + 1, size, len(idx), st.micro_batch, why,
            )  # fmt: skip
        st.apply(loss_value, len(idx))
        stop = False
        if on_step is not None:
            try:
                on_step(step_offset + st.step, st.losses[-1])
            except StopTraining:
                stop = True
        if progress is not None:
            progress(step_offset + st.step, st.losses[-1], st)
        if stop:
            break
    model.eval()
    last = st.losses[-10:]
    return TrainStats(
        st.step, st.seen, st.losses[-1], sum(last) / len(last), st.oom_retries, st.micro_batch
    )
