"""The compression-stage contract, declared where each stage is registered.

A stage is one module: its config class, ``apply(model, cfg, ctx) -> model``, the typed
record it leaves in ``ctx.records[name]``, and the facts the rest of the engine derives from
the registry — training steps for the results budget, whether a trial checkpoint can resume
it, placement rules, how a saved model of it is saved and reloaded, the results columns it
contributes and where its output must be measured. Example::

    class ScaleConfig(Section):
        factor: float = 1.0

    @dataclass(frozen=True)
    class ScaleRecord(StageRecord):
        factor: float

    @register_stage("scale", config=ScaleConfig, record=ScaleRecord)
    def apply(model, cfg: ScaleConfig, ctx: StageContext):
        ctx.records["scale"] = ScaleRecord(cfg.factor)
        return model
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel
from transformers import PreTrainedModel

from engine.importance.base import LayerScores
from engine.tasks import DEFAULT_TASK, Task, get_task
from engine.train import OomLog
from sweepcore.registry import Registry

if TYPE_CHECKING:  # engine.checkpoint imports this package
    from engine.checkpoint import StageResume

__all__ = [
    "STAGES",
    "Placement",
    "Stage",
    "StageContext",
    "StageFn",
    "StageRecord",
    "register_stage",
    "stage_list",
    "unregister_stage",
]

StageFn = Callable[[PreTrainedModel, Any, "StageContext"], PreTrainedModel]

# dataclass field metadata: JSON_OFF = never written to compression.json (live objects a
# later stage or the saver needs); OMIT_NONE = left out of the JSON while None (optional keys)
JSON_OFF = {"json": False}
OMIT_NONE = {"omit_none": True}


@dataclass(frozen=True)
class StageRecord:
    """What a stage did, for later stages, the results and ``compression.json``.

    ``to_json`` gives the top-level keys it contributes to the saved record (by default
    ``{key: fields}``; ``key`` is the stage name, set by :func:`register_stage`);
    ``from_json`` reads them back (None when the saved record has no entry of this stage).
    """

    key: ClassVar[str] = ""

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.metadata.get("json", True) and not (f.metadata.get("omit_none") and v is None):
                out[f.name] = v
        return out

    def to_json(self) -> dict[str, Any]:
        return {self.key: self.payload()}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> StageRecord | None:
        if cls.key not in record:
            return None
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        return cls(**{k: v for k, v in record[cls.key].items() if k in names})

    def kept_teacher_layers(self) -> list[int] | None:
        """The teacher layers (0-based) the student's layers are copies of, when this stage
        decided them (a typed query for distillation's layer map); None otherwise."""
        return None


@dataclass(frozen=True)
class Placement:
    """Where a built model is measured: ``device``; ``move`` it there or leave it where its
    layers live; ``autocast`` allowed (int8 kernels take float32 activations)."""

    device: torch.device
    move: bool = True
    autocast: bool = True


def _no_columns(
    record: Any, model: Any, splits: Any, row: dict[str, Any], task: Any
) -> dict[str, Any]:
    return {}


def _no_row_columns(record: Any) -> dict[str, Any]:
    return {}


def _same(model: Any, record: Any, out_dir: Path) -> Any:
    return model


@dataclass(frozen=True)
class Stage:
    """One registered compression stage (see the module docstring).

    Attributes:
        name: the ``pipeline.order`` entry and the ``pipeline.<name>`` config section.
        apply: ``apply(model, cfg, ctx) -> model``.
        config: its config class; ``default`` the section a study gets when it sets nothing.
        record: its typed record class.
        default_on: part of the pipeline of a study that sets no ``pipeline.order``.
        train_steps: ``(cfg, n_train) -> steps`` on the stage's report axis (None: no training).
        resumable: a trial checkpoint taken inside it continues it mid-training.
        tasks: the tasks (``engine.tasks`` names) whose models it can compress, with
            ``tasks_reason`` saying why only those; None: every task.
        rebuild: ``(model, cfg) -> model``: for a stage that wraps the model (its HF model
            kept as ``backbone``), the wrapper a trial checkpoint taken inside it is rebuilt
            as around the reloaded HF model, from the stage's settings (the weights are
            loaded after); None: the stage leaves the model an HF model.
        last: it must be the last stage (``last_reason`` says why; so two such stages never
            combine); ``not_with``: further stages it cannot be combined with.
        columns: ``(record | None, model, splits, row, task) -> {column: value}`` measured
            beside quality and cost (record None when the stage did not run; ``task`` the
            study's :class:`engine.tasks.Task`).
        row_columns: ``(record | None) -> {column: value}`` of the trial row.
        placement: ``(record, model, device) -> Placement`` where its output is measured.
        save: ``(model, record, out_dir) -> module to save_pretrained`` (may write files).
        load: ``(model, record, out_dir) -> model`` rebuilt after ``from_pretrained``.
        manifest: ``record -> {key: value}`` added to ``compression.json``.
        plain_reload: False when ``from_pretrained`` alone cannot rebuild its output.
        check: ``(cfg, study) -> [(key, problem)]``, cross-section checks of its settings
            run in the one validation pass (before Ray starts).
    """

    name: str
    apply: StageFn
    config: type[BaseModel]
    default: BaseModel
    record: type[StageRecord]
    default_on: bool = False
    train_steps: Callable[[Any, int], int] | None = None
    resumable: bool = False
    tasks: tuple[str, ...] | None = None
    tasks_reason: str = ""
    rebuild: Callable[[Any, Any], Any] | None = None
    last: bool = False
    last_reason: str = ""
    not_with: tuple[str, ...] = ()
    columns: Callable[..., dict[str, Any]] = _no_columns
    row_columns: Callable[[Any], dict[str, Any]] = _no_row_columns
    placement: Callable[..., Placement] | None = None
    save: Callable[..., Any] = _same
    load: Callable[..., Any] = _same
    manifest: Callable[[Any], dict[str, Any]] | None = None
    plain_reload: bool = True
    check: Callable[[Any, Any], list[tuple[str, str]]] | None = None

    def __call__(self, model: PreTrainedModel, cfg: Any, ctx: StageContext) -> PreTrainedModel:
        return self.apply(model, cfg, ctx)


STAGES: Registry[Stage] = Registry("compression stage")  # type: ignore[type-var]
_ORDER: list[str] = []  # registration order: the pipeline config's field order


def register_stage(
    name: str,
    *,
    config: type[BaseModel],
    record: type[StageRecord],
    default: BaseModel | None = None,
    **facts: Any,
) -> Callable[[StageFn], StageFn]:
    """Register ``apply`` as stage ``name`` with its config, record and facts (see
    :class:`Stage`); returns ``apply`` unchanged, so it stays a plain function."""

    def deco(fn: StageFn) -> StageFn:
        record.key = name
        stage = Stage(
            name=name,
            apply=fn,
            config=config,
            default=default if default is not None else config(),
            record=record,
            **facts,
        )
        STAGES.register(name)(stage)
        _ORDER.append(name)
        return fn

    return deco


def unregister_stage(name: str) -> None:
    """Remove stage ``name`` (for tests and notebooks that register a throwaway stage)."""
    STAGES.unregister(name)  # unknown name: the registry's error
    _ORDER.remove(name)


def stage_list() -> list[Stage]:
    """Every registered stage, in registration order."""
    return [STAGES.get(n) for n in _ORDER]


@dataclass
class StageContext:
    """What a stage may use besides the model it transforms.

    Attributes:
        teacher: the fine-tuned teacher (eval mode; never modified).
        train: training tensors {"input_ids", "attention_mask", "labels"} (CPU).
        teacher_logits: the teacher's logits on ``train``, computed once per study.
        importance: method name → LayerScores of the teacher's layers.
        seed: the trial seed.
        device: where to run.
        autocast_dtype: the dtype training and evaluation forwards autocast to (None =
            float32), from ``resources.precision`` (:mod:`engine.device`).
        oom: out-of-memory retries of the stages' training (:class:`engine.train.OomLog`).
        records: stage name → the typed record that stage left (pipeline order).
        report: called with intermediate metrics while a stage trains (a trial's reporter).
        extra_teacher_logits: further teachers' train logits for an ensemble given by
            ``teacher_weights`` (a caller's, not the study file's).
        teacher_cache: saved teacher path → its train logits, computed once per trial.
        resume: the trial checkpoint this stage continues from (set by the trial for the
            stage in progress only; :class:`engine.checkpoint.StageResume`), else None.
        task: the study's task (its losses, metrics and data view; :mod:`engine.tasks`).
    """

    teacher: PreTrainedModel
    train: dict[str, torch.Tensor]
    teacher_logits: torch.Tensor
    importance: dict[str, LayerScores]
    seed: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast_dtype: torch.dtype | None = None
    oom: OomLog = field(default_factory=OomLog)
    records: dict[str, StageRecord] = field(default_factory=dict)
    report: Callable[[dict[str, float]], None] | None = None
    extra_teacher_logits: list[torch.Tensor] = field(default_factory=list)
    teacher_cache: dict[str, torch.Tensor] = field(default_factory=dict)
    resume: StageResume | None = None
    task: Task = field(default_factory=lambda: get_task(DEFAULT_TASK))

    @property
    def record(self) -> dict[str, Any]:
        """The records as ``compression.json`` holds them (a read-only view)."""
        return records_json(self.records)

    def kept_teacher_layers(self) -> list[int] | None:
        """The teacher layers the student's layers copy, as the latest stage that chose
        them recorded (see :meth:`StageRecord.kept_teacher_layers`); None if none did."""
        kept = None
        for r in self.records.values():
            kept = r.kept_teacher_layers() or kept
        return kept


def records_json(records: dict[str, StageRecord]) -> dict[str, Any]:
    """Typed records → the JSON-ready dict written to ``compression.json`` and results."""
    out: dict[str, Any] = {}
    for r in records.values():
        out.update(r.to_json())
    return out


def records_from_json(record: dict[str, Any]) -> dict[str, StageRecord]:
    """The typed records in a saved ``compression.json`` record (registration order)."""
    out: dict[str, StageRecord] = {}
    for stage in stage_list():
        r = stage.record.from_json(record)
        if r is not None:
            out[stage.name] = r
    return out


def measure_placement(
    record: dict[str, Any] | None, model: torch.nn.Module, device: torch.device
) -> Placement:
    """Where a model built with this (JSON) record is measured: the stages' say, else
    ``device``."""
    for name, r in records_from_json(record or {}).items():
        rule = STAGES.get(name).placement
        if rule is not None:
            return rule(r, model, device)
    return Placement(device)


def stage_columns(
    record: dict[str, Any] | None,
    model: torch.nn.Module,
    splits: dict[str, dict[str, np.ndarray]],
    row: dict[str, Any],
    task: Task,
) -> dict[str, Any]:
    """Measured columns every stage contributes (its defaults when it did not run)."""
    records = records_from_json(record or {})
    out: dict[str, Any] = {}
    for stage in stage_list():
        out.update(stage.columns(records.get(stage.name), model, splits, row, task))
    return out


def trial_columns(record: dict[str, Any]) -> dict[str, Any]:
    """Trial-row columns every stage contributes (its defaults when it did not run)."""
    records = records_from_json(record)
    out: dict[str, Any] = {}
    for stage in stage_list():
        out.update(stage.row_columns(records.get(stage.name)))
    return out
