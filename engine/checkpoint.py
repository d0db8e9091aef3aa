"""Trial checkpoints: what a trial saves so a retry continues where its worker died.

A checkpoint holds the model being trained, the pipeline position (stage index), what earlier
stages recorded, and the training state (optimizer, LR schedule, example order, step, RNG).
:class:`TrialCheckpointer` writes them (through :class:`engine.trial.TrialReporter`'s reports,
which hand it the live :class:`engine.train.TrainingState` they were called with);
:func:`resume_from` reads the one Tune hands a retried trial.

Resume is explicit state, not a context variable: the trial hands the stage in progress a
:class:`StageResume` as ``ctx.resume`` (None for every other stage). The stage passes it to its
training calls (``train_classifier(..., resume=ctx.resume)``, or :meth:`StageResume.restore`
for a loop of its own); the first call that gets it continues from the snapshot, later calls
start fresh. A multi-call stage (``prune``) reads its own progress (events done, masks, record
so far) from :attr:`StageResume.stage` to skip what it had done. After the stage the trial
calls :meth:`StageResume.check_taken`: a stage that did not resume its training raises.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.compress import StageContext
from engine.compress.pipeline import resumable

if TYPE_CHECKING:
    from engine.train import TrainingState

__all__ = [
    "CHECKPOINT_FILE",
    "FAULT_KEY",
    "StageResume",
    "TrialCheckpointer",
    "TrialResume",
    "load_trial_state",
    "resume_from",
]


# Stages whose training state is what a TrainingState snapshots (plus deterministic set-up)
# can continue mid-training from a checkpoint: each declares ``resumable`` where it is
# registered (engine.compress.pipeline.resumable). A resumed stage gets a StageResume (see
# below). Reports from other stages carry none.
CHECKPOINT_FILE = "trial_state.pt"
# Test-only fault injection: a Tune config key {"step": k, "marker": path}. The first report at
# a step >= k exits the worker process (before reporting), once: the marker file records it.
FAULT_KEY = "__fault_exit__"


@dataclass
class StageResume:
    """The checkpoint the stage in progress continues from (``ctx.resume``; module docstring).

    ``training`` is a :meth:`engine.train.TrainingState.snapshot`: optimizer, LR schedule,
    example order, step, RNG, and for a multi-call stage ``"stage_step"`` and ``"stage"``.
    """

    training: dict[str, Any]
    taken: bool = False

    @property
    def stage(self) -> dict[str, Any] | None:
        """The stage's own progress at the checkpoint (a multi-call stage's), if any."""
        return self.training.get("stage")

    @property
    def step(self) -> int:
        """The stage step the checkpoint was taken at (a multi-call stage's own axis)."""
        return int(self.training.get("stage_step", self.training["step"]))

    def restore(self, state: TrainingState) -> bool:
        """Continue ``state`` from the snapshot if no training call has taken it yet (call it
        after the model is on its device). Returns whether it did."""
        if self.taken:
            return False
        self.taken = True
        state.restore(self.training)
        return True

    def check_taken(self) -> None:
        """Raises ``RuntimeError`` if no training call of the stage took the snapshot."""
        if not self.taken:
            raise RuntimeError("the stage did not resume its training from the checkpoint")


@dataclass
class TrialResume:
    """A trial's place in its pipeline, loaded from a checkpoint."""

    model: torch.nn.Module
    stage_index: int
    stage_name: str
    training: dict[str, Any]
    record: dict[str, Any]  # stage name → typed record (engine.compress.base.StageRecord)
    attn_implementation: str | None = None

    @property
    def step(self) -> int:
        """The stage step the checkpoint was taken at (a multi-call stage's own axis)."""
        return StageResume(self.training).step

    def stage_resume(self) -> StageResume:
        """What the stage in progress (``stage_index``) gets as ``ctx.resume``."""
        return StageResume(self.training)


@dataclass
class TrialCheckpointer:
    """Builds the Tune checkpoints of one trial (see the module docstring).

    ``reference``: the teacher's weights; frozen parameters still equal to them (e.g. the
    embeddings under ``freeze_embeddings``) are left out of the file and refilled on load.
    """

    every: int
    reference: dict[str, torch.Tensor]
    fault: dict[str, Any] | None = None
    stage_index: int = -1
    stage_name: str = ""
    ctx: StageContext | None = None
    attn_implementation: str | None = None
    saved: int = 0
    error: str | None = None  # why the last checkpoint could not be written, if it failed
    last_step: int = 0  # step of the stage's previous checkpoint (or where the stage began)

    def enter(
        self, index: int, name: str, model: torch.nn.Module, ctx: StageContext, step: int = 0
    ) -> None:
        self.stage_index, self.stage_name, self.ctx, self.last_step = index, name, ctx, step
        self.attn_implementation = getattr(
            getattr(model, "config", None), "_attn_implementation", None
        )

    def maybe_fail(self, step: int | None) -> None:
        f = self.fault
        if not f or step is None or step < int(f["step"]) or Path(f["marker"]).exists():
            return
        Path(f["marker"]).write_text(f"exited at step {step}\n")
        os._exit(1)  # a worker death, as when a node is lost

    @contextlib.contextmanager
    def checkpoint(self, step: int | None, training: TrainingState | None) -> Iterator[Any]:
        """A ``ray.tune.Checkpoint`` for a report at ``step`` of the live ``training`` (None
        outside a training loop), or None when none is due."""
        from ray.tune import Checkpoint

        active = training
        due = step is not None and step - self.last_step >= self.every and self.ctx is not None
        if not due or active is None or not resumable(self.stage_name):
            yield None
            return
        self.last_step = int(step)  # type: ignore[arg-type]
        with tempfile.TemporaryDirectory(prefix="trial_ckpt_") as d:
            try:
                self._save(Path(d) / CHECKPOINT_FILE, active.model, active.snapshot())
            except Exception as e:  # e.g. an unpicklable stage extra: report, uncheckpointed
                self.error = f"{type(e).__name__}: {e}"
                yield None
                return
            self.saved += 1
            yield Checkpoint.from_directory(d)

    def _save(self, path: Path, model: torch.nn.Module, training: dict[str, Any]) -> None:
        assert self.ctx is not None
        left_out: dict[str, torch.Tensor] = {}
        for name, p in model.named_parameters():
            ref = _reference_of(name, self.reference)
            if (
                not p.requires_grad
                and ref is not None
                and ref.shape == p.shape
                and torch.equal(ref, p.detach().cpu())
            ):
                left_out[name] = p.data
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        try:
            torch.save(
                {
                    "model": model,
                    "from_reference": sorted(left_out),
                    "stage_index": self.stage_index,
                    "stage_name": self.stage_name,
                    "training": training,
                    "record": self.ctx.records,
                    "attn_implementation": self.attn_implementation,
                },
                path,
            )
        finally:
            for name, data in left_out.items():
                model.get_parameter(name).data = data


def _reference_of(name: str, reference: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The teacher tensor a parameter may still equal: the one of the same name, also inside
    an early-exit wrapper (``backbone.<name>``)."""
    if name in reference:
        return reference[name]
    return reference.get(name.removeprefix("backbone."))


def load_trial_state(path: str | Path, reference: dict[str, torch.Tensor]) -> TrialResume:
    """Read a checkpoint written by :class:`TrialCheckpointer` (the model on CPU)."""
    # The one pickle load: the file holds the live model object (any pruned structure, exit
    # heads) and stage records. It is this trial's own checkpoint in Tune's storage, trusted
    # as much as the Tune state that --resume unpickles anyway (tuner.pkl).
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = state["model"]
    for name in state["from_reference"]:
        model.get_parameter(name).data = _reference_of(name, reference).clone()  # type: ignore[union-attr]
    return TrialResume(
        model=model,
        stage_index=int(state["stage_index"]),
        stage_name=state["stage_name"],
        training=state["training"],
        record=state["record"],
        attn_implementation=state.get("attn_implementation"),
    )


def resume_from(checkpoint: Any, reference: dict[str, torch.Tensor]) -> TrialResume | None:
    """The state in a ``ray.tune.Checkpoint`` written by :class:`TrialCheckpointer`, or None."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return load_trial_state(Path(d) / CHECKPOINT_FILE, reference)
