"""Trial checkpoints: what a trial saves so a retry continues where its worker died.

A checkpoint holds the model being trained, the pipeline position (stage index), what earlier
stages recorded, and the training state (optimizer, LR schedule, example order, step, RNG).
Nothing in it is pickled (a directory, :data:`CHECKPOINT_FORMAT`):

* ``model.safetensors``: the model's tensors (frozen ones still equal to the teacher's left
  out, a tied tensor once), and ``training.safetensors``: the training state's tensors;
* ``trial_state.json``, written last (its presence marks a complete checkpoint): the format
  version, the model's config with its structure written in (depth, pruned heads, FFN widths:
  :func:`engine.compress.structure.structure_config`), the tensors left out, tied or frozen,
  the pipeline position, and the stages' typed records (every field, prune's masks too) with
  the training state, as typed JSON whose tensors are in ``training.safetensors``
  (:mod:`engine.state_io`).

On load the model is rebuilt from that config by the study's task
(:func:`engine.compress.structure.build_shaped`), wrapped again by the stage in progress where
it wraps (``rebuild``: the exit heads of ``early_exit``, from the study's settings), and its
weights loaded strictly. A checkpoint of the earlier format (``trial_state.pt``, a pickled
model) is refused with one line (:class:`CheckpointFormatError`).
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
import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.compress import StageContext
from engine.compress.pipeline import resumable
from sweepcore.atomic import write_atomic

if TYPE_CHECKING:
    from engine.train import TrainingState

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "FAULT_KEY",
    "LEGACY_FILE",
    "CheckpointFormatError",
    "StageResume",
    "TrialCheckpointer",
    "TrialResume",
    "legacy_problem",
    "load_trial_state",
    "resume_from",
]


# Stages whose training state is what a TrainingState snapshots (plus deterministic set-up)
# can continue mid-training from a checkpoint: each declares ``resumable`` where it is
# registered (engine.compress.pipeline.resumable). A resumed stage gets a StageResume (see
# below). Reports from other stages carry none.
CHECKPOINT_FORMAT = 2
CHECKPOINT_FILE = "trial_state.json"  # written last: the mark of a complete checkpoint
MODEL_FILE = "model.safetensors"
TRAINING_FILE = "training.safetensors"
LEGACY_FILE = "trial_state.pt"  # format 1: the live model pickled (torch.save)
# Test-only fault injection: a Tune config key {"step": k, "marker": path}. The first report at
# a step >= k exits the worker process (before reporting), once: the marker file records it.
FAULT_KEY = "__fault_exit__"


class CheckpointFormatError(ValueError):
    """A trial checkpoint this version of the engine cannot read (one line, the reason)."""


def legacy_problem(where: str | Path) -> str:
    """The one line for a checkpoint written by an earlier version of the engine."""
    return (
        f"{where}: a trial checkpoint written by an earlier version of the engine "
        f"({LEGACY_FILE}, a pickled model); this version cannot resume it: start a new run, or "
        "finish this one with the version that wrote it"
    )


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
                self._save(Path(d), active.model, active.snapshot())
            except Exception as e:  # e.g. a stage extra that cannot be written: uncheckpointed
                self.error = f"{type(e).__name__}: {e}"
                yield None
                return
            self.saved += 1
            yield Checkpoint.from_directory(d)

    def _save(self, d: Path, model: torch.nn.Module, training: dict[str, Any]) -> None:
        """Write the checkpoint's files into directory ``d`` (module docstring)."""
        from safetensors.torch import save_file

        from engine.compress.base import StageRecord
        from engine.compress.structure import structure_config
        from engine.state_io import encode

        assert self.ctx is not None
        for name, rec in self.ctx.records.items():
            if not isinstance(rec, StageRecord):
                raise TypeError(
                    f"record {name!r}: a {type(rec).__name__} cannot be saved without pickle "
                    "(a stage records a StageRecord)"
                )
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        tensors: dict[str, torch.Tensor] = {}
        from_reference, tied, seen = [], {}, {}
        for name, t in model.state_dict().items():
            ref = _reference_of(name, self.reference)
            if (
                name in frozen
                and ref is not None
                and ref.shape == t.shape
                and torch.equal(ref, t.detach().cpu())
            ):
                from_reference.append(name)
                continue
            where = (t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))
            if t.numel() and where in seen:  # a tied parameter: saved once
                tied[name] = seen[where]
                continue
            seen[where] = name
            tensors[name] = t.detach().to("cpu", copy=True).contiguous()
        save_file(tensors, str(d / MODEL_FILE))
        # every field of each record, the ones compression.json leaves out too (prune's masks)
        records = {
            name: {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec) if f.init}
            for name, rec in self.ctx.records.items()
        }
        skeleton, training_tensors = encode({"training": training, "records": records})
        save_file(training_tensors, str(d / TRAINING_FILE))
        hf = _hf_model(model)
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": structure_config(hf),
            "from_reference": sorted(from_reference),
            "frozen": sorted(frozen),
            "tied": tied,
            "stage_index": self.stage_index,
            "stage_name": self.stage_name,
            "attn_implementation": self.attn_implementation,
            "train_mode": model.training,
            "state": skeleton,
        }
        write_atomic(d / CHECKPOINT_FILE, json.dumps(state))  # last


def _hf_model(model: torch.nn.Module) -> Any:
    """The Hugging Face model inside a stage's wrapper (kept as ``backbone``), or the model."""
    from transformers import PreTrainedModel

    inner = getattr(model, "backbone", None)
    return inner if isinstance(inner, PreTrainedModel) else model


def _reference_of(name: str, reference: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The teacher tensor a parameter may still equal: the one of the same name, also inside
    an early-exit wrapper (``backbone.<name>``)."""
    if name in reference:
        return reference[name]
    return reference.get(name.removeprefix("backbone."))


def load_trial_state(d: str | Path, reference: dict[str, torch.Tensor], study: Any) -> TrialResume:
    """Read a checkpoint directory written by :class:`TrialCheckpointer` (the model on CPU),
    for ``study`` (its task builds the model; the stage in progress may wrap it). Raises
    :class:`CheckpointFormatError` for a checkpoint of another format."""
    from safetensors.torch import load_file

    from engine.compress.base import STAGES
    from engine.compress.structure import build_shaped
    from engine.state_io import decode
    from engine.tasks import get_task

    d = Path(d)
    if not (d / CHECKPOINT_FILE).is_file():
        if (d / LEGACY_FILE).is_file():
            raise CheckpointFormatError(legacy_problem(d))
        raise CheckpointFormatError(f"{d}: no {CHECKPOINT_FILE}: not a complete trial checkpoint")
    state = json.loads((d / CHECKPOINT_FILE).read_text())
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointFormatError(
            f"{d}: trial checkpoint format {state.get('format')!r}; this version reads "
            f"format {CHECKPOINT_FORMAT}"
        )
    model = build_shaped(state["config"], get_task(study.task).model_from_config)
    stage = STAGES.get(state["stage_name"])
    if stage.rebuild is not None:
        model = stage.rebuild(model, getattr(study.pipeline, state["stage_name"]))
    weights = load_file(str(d / MODEL_FILE))
    for name in state["from_reference"]:
        weights[name] = _reference_of(name, reference).clone()  # type: ignore[union-attr]
    for name, same in state["tied"].items():
        weights[name] = weights[same]
    model.load_state_dict(weights, strict=True)
    for name in state["frozen"]:
        model.get_parameter(name).requires_grad_(False)
    model.train(bool(state["train_mode"]))  # as it was checkpointed (dropout on or off)
    tree = decode(state["state"], load_file(str(d / TRAINING_FILE)))
    records = {n: STAGES.get(n).record(**fields) for n, fields in tree["records"].items()}
    return TrialResume(
        model=model,
        stage_index=int(state["stage_index"]),
        stage_name=state["stage_name"],
        training=tree["training"],
        record=records,
        attn_implementation=state.get("attn_implementation"),
    )


def resume_from(
    checkpoint: Any, reference: dict[str, torch.Tensor], study: Any
) -> TrialResume | None:
    """The state in a ``ray.tune.Checkpoint`` written by :class:`TrialCheckpointer`, or None."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return load_trial_state(d, reference, study)
