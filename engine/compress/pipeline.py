"""What the engine derives from the stage registry: the pipeline config class, the
placement rules of ``pipeline.order``, the results budget and which stages resume.

Nothing here names a stage: a stage registered later (even from a module outside the
engine) is picked up at the next call.
"""

from __future__ import annotations

from typing import Any

from pydantic import create_model

from engine.compress.base import STAGES, stage_list
from engine.configbase import Section

__all__ = [
    "PipelineBase",
    "full_budget",
    "order_problems",
    "pipeline_config",
    "resumable",
    "stage_problems",
]


class PipelineBase(Section):
    """Ordered compression stages; each stage's parameters live under its own name."""

    order: tuple[str, ...] = ()


_BUILT: dict[tuple[str, ...], type[PipelineBase]] = {}


def pipeline_config() -> type[PipelineBase]:
    """The ``pipeline`` section's class: ``order`` plus one field per registered stage (its
    config class, its default), in registration order; rebuilt when the registry grows. The
    default ``order``: the stages registered ``default_on``, in registration order."""
    stages = stage_list()
    key = tuple(s.name for s in stages)
    if key not in _BUILT:
        default_order = tuple(s.name for s in stages if s.default_on)
        fields: dict[str, Any] = {"order": (tuple[str, ...], default_order)}
        fields.update({s.name: (s.config, s.default) for s in stages})
        _BUILT[key] = create_model(  # type: ignore[call-overload]
            "PipelineConfig", __base__=PipelineBase, __module__=__name__, **fields
        )
    return _BUILT[key]


def order_problems(order: tuple[str, ...] | list[str]) -> list[tuple[int | None, str]]:
    """(index or None for the whole order, problem) for unknown names and broken placement
    rules (a ``last`` stage not at the end, a stage beside one it cannot be combined with)."""
    problems: list[tuple[int | None, str]] = []
    for i, name in enumerate(order):
        if name not in STAGES:
            problems.append((i, STAGES.unknown_message(name)))
    known = [STAGES.get(n) for n in order if n in STAGES]
    for stage in known:
        if stage.last and order.index(stage.name) != len(order) - 1:
            why = f" ({stage.last_reason})" if stage.last_reason else ""
            problems.append(
                (None, f"{stage.name!r} must be the last stage{why}, got {list(order)}")
            )
        for other in stage.not_with:
            if other in order:
                problems.append(
                    (None, f"{stage.name!r} cannot be combined with {other!r}, got {list(order)}")
                )
    return problems


def full_budget(pipeline: Any, every: int | None, n_train: int) -> int:
    """Results a full-length trial reports: the final one, plus one per ``every`` steps of
    each training stage in ``pipeline.order``, each stage counting its own steps from 0."""
    if every is None:
        return 1
    reports = 0
    for name in pipeline.order:
        steps_of = STAGES.get(name).train_steps
        if steps_of is not None:
            reports += steps_of(getattr(pipeline, name), n_train) // every
    return reports + 1


def resumable(name: str) -> bool:
    """Whether a trial checkpoint taken inside stage ``name`` can continue it."""
    return name in STAGES and STAGES.get(name).resumable


def _orders(study: Any) -> list[list[str]]:
    """Every pipeline order a study can run: its own, its search arms', its searched ones."""
    orders = [list(study.pipeline.order)]
    orders += [list(p["pipeline.order"]) for p in study.search.extra if "pipeline.order" in p]
    orders += [list(o) for o in study.search.space.get("pipeline.order", []) or []]
    return orders


def stage_problems(study: Any) -> list[str]:
    """``pipeline.<name>.<key>: problem`` from each stage in ``pipeline.order`` whose
    settings depend on the rest of the study (e.g. a strategy naming an importance method),
    and ``pipeline.order: problem`` for a stage any of the study's orders runs on a task it
    does not declare (``Stage.tasks``)."""
    out: list[str] = []
    ran = dict.fromkeys(name for order in _orders(study) for name in order)
    for name in ran:
        stage = STAGES.get(name) if name in STAGES else None
        if stage is not None and stage.tasks is not None and study.task not in stage.tasks:
            out.append(
                f"pipeline.order: {name} compresses {', '.join(stage.tasks)} models only "
                f"({stage.tasks_reason}), not {study.task}"
            )
    for name in dict.fromkeys(study.pipeline.order):
        stage = STAGES.get(name) if name in STAGES else None
        if stage is not None and stage.check is not None:
            for key, problem in stage.check(getattr(study.pipeline, name), study):
                out.append(f"pipeline.{name}.{key}: {problem}")
    return out
