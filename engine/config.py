"""Study configuration: YAML → frozen, typed, validated objects; CLI overrides merged here.

Precedence is resolved in one place (:func:`load_study`): defaults < study YAML < CLI
``key.path=value`` overrides. Every problem is collected and reported together in a
:class:`ConfigError`, each line naming the file, the dotted key, the bad value and what is
allowed.

This module holds :class:`StudyConfig` (the file's top level), loading, overrides and the one
validation pass; each section's schema lives with its owner: ``data`` (:mod:`engine.data.config`),
``teacher`` (:mod:`engine.teacher`), ``importance`` (:mod:`engine.importance.config`),
``pipeline`` (derived from the stage registry, :mod:`engine.compress.pipeline`), ``search``
(:mod:`engine.search_config`), ``resources`` (:mod:`engine.device`), ``measure``
(:mod:`engine.measure.config`).
"""

from __future__ import annotations

import copy
import difflib
import re
import reprlib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from engine.compress import pipeline_config
from engine.compress.pipeline import order_problems, stage_problems
from engine.configbase import Section
from engine.data.check import problems as data_problems
from engine.data.config import DataConfig
from engine.device import ResourcesConfig
from engine.importance.config import ImportanceConfig
from engine.importance.config import problems as importance_problems
from engine.measure.config import MeasureConfig
from engine.search_config import (
    SCHEDULER_KINDS,
    SEARCH_ALGORITHMS,
    SearchConfig,
    range_points,
)
from engine.tasks import DEFAULT_TASK, TASKS, get_task
from engine.teacher import TeacherConfig

__all__ = [
    "SWEEPS_DIR",
    "ConfigError",
    "PipelineConfig",
    "StudyConfig",
    "apply_overrides",
    "either_or_partners",
    "flatten",
    "list_studies",
    "load_study",
    "parse_override",
    "study_config",
    "study_path",
]

SWEEPS_DIR = Path(__file__).resolve().parent.parent / "sweeps"


class ConfigError(ValueError):
    """One or more problems in a study file or its overrides, each on its own line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[str]]]:
        # rebuilt from its problems, not its joined message: one raised in a Ray task or a
        # worker process would otherwise come back with every character on its own line
        return type(self), (self.problems,)


# The pipeline section is derived from the stage registry (engine.compress.pipeline); this is
# its class for the stages registered at import time. A stage registered later is picked up
# by :func:`study_config` at the next validation.
PipelineConfig = pipeline_config()


class ReportConfig(Section):
    """``quality_metric``: one of the task's metrics (checked in validation)."""

    quality_metric: str = get_task(DEFAULT_TASK).default_quality_metric
    cost_metric: Literal["gflops", "params", "latency_ms_p50", "weights_bytes"] = "gflops"


class StudyConfig(Section):
    """One study file."""

    name: str
    description: str
    task: str = DEFAULT_TASK  # a registered task (engine.tasks), checked in validation
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    importance: ImportanceConfig = ImportanceConfig()
    pipeline: PipelineConfig = PipelineConfig()
    search: SearchConfig = SearchConfig()
    repeats: tuple[int, ...] = Field((0,), min_length=1)
    resources: ResourcesConfig = ResourcesConfig()
    measure: MeasureConfig = MeasureConfig()
    report: ReportConfig = ReportConfig()
    threads_per_trial: int | None = Field(None, ge=1)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        """The name is the run directory's folder under ``reports/``: one plain folder name."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or ".." in name:
            raise ValueError(
                f"{name!r} is not a plain name: it names the run's folder under reports/, so "
                "use letters, digits, '.', '_' and '-' (no '/', no '..')"
            )
        return name

    @field_validator("repeats")
    @classmethod
    def _distinct_seeds(cls, repeats: tuple[int, ...]) -> tuple[int, ...]:
        twice = sorted({s for s in repeats if repeats.count(s) > 1})
        if twice:
            raise ValueError(
                f"seed {', '.join(map(str, twice))} appears more than once: each seed is one "
                "repeat of every configuration (e.g. repeats: [0, 1, 2])"
            )
        return repeats

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, raw: Any) -> Any:
        """A known task fills the defaults it owns (objectives, report quality metric) where
        the file leaves them out, and tells the importance section which loss to use."""
        name = raw.get("task", DEFAULT_TASK) if isinstance(raw, dict) else None
        if not isinstance(name, str) or name not in TASKS:  # validation reports a bad task
            return raw
        task = get_task(name)
        raw = dict(raw)
        for section, key, default in (
            (
                "search",
                "objectives",
                [{"metric": m, "mode": d} for m, d in task.default_objectives],
            ),
            ("report", "quality_metric", task.default_quality_metric),
            ("importance", "task", task.name),
            *(("teacher", k, v) for k, v in task.teacher_defaults.items()),
        ):
            sub = raw.get(section, {})
            if isinstance(sub, dict) and key not in sub:
                raw[section] = {**sub, key: default}
        return raw


_STUDY_MODELS: dict[type, type[StudyConfig]] = {PipelineConfig: StudyConfig}


def study_config() -> type[StudyConfig]:
    """:class:`StudyConfig`, or its subclass whose ``pipeline`` also holds the stages
    registered since this module was imported (e.g. a study's own stage module)."""
    pipeline = pipeline_config()
    if pipeline not in _STUDY_MODELS:
        _STUDY_MODELS[pipeline] = create_model(  # type: ignore[call-overload]
            "StudyConfig", __base__=StudyConfig, __module__=__name__,
            pipeline=(pipeline, pipeline()),
        )  # fmt: skip
    return _STUDY_MODELS[pipeline]


# ----------------------------------------------------------------------------- loading


def study_path(name_or_path: str) -> Path:
    """A study name (``ablation``) → ``sweeps/ablation.yaml``; a path is returned as is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError([f"{p}: study file not found"])
        return p
    cand = SWEEPS_DIR / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    known = list_studies()
    near = difflib.get_close_matches(name_or_path, list(known), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ConfigError([f"unknown study {name_or_path!r}{hint} (known: {', '.join(known)})"])


def list_studies() -> dict[str, str]:
    """Study name → one-line description, for every ``sweeps/*.yaml``."""
    out: dict[str, str] = {}
    for p in sorted(SWEEPS_DIR.glob("*.yaml")):
        try:
            raw = yaml.safe_load(p.read_text()) or {}
            out[p.stem] = str(raw.get("description", "")).strip().splitlines()[0]
        except (yaml.YAMLError, OSError, IndexError, AttributeError):
            out[p.stem] = "(unreadable study file)"
    return out


class _StudyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping (PyYAML keeps the
    last one silently, so a study would run with a setting its reader did not see)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def parse_override(text: str) -> tuple[str, Any]:
    """``pipeline.distill.temperature=4`` → ("pipeline.distill.temperature", 4).

    The value is parsed as YAML, so ``true``, ``3``, ``[2, 4]`` and ``null`` mean what they
    say in a study file.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError([f"override {_shown(text)}: expected key.path=value"])
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def _section_at(path: list[str], schema: type[BaseModel]) -> type[BaseModel] | None:
    """The config class at dotted ``path`` below ``schema`` (walking the pydantic fields), or
    None where the path leaves the typed sections."""
    cls: type[BaseModel] | None = schema
    for part in path:
        field = cls.model_fields.get(part) if cls is not None else None
        if field is None:
            return None
        todo, found = [field.annotation], []
        while todo:  # X, X | None, Annotated[X, ...]: the one config class among them
            t = todo.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                found.append(t)
            else:
                todo.extend(typing.get_args(t))
        cls = found[0] if len(found) == 1 else None
    return cls


def either_or_partners(key: str, schema: type[BaseModel] | None = None) -> list[str]:
    """The dotted paths an override of ``key`` replaces: the other members of its either/or
    pair, as the config class at that path declares them (``either_or``)."""
    parent, _, leaf = key.rpartition(".")
    cls = _section_at(parent.split(".") if parent else [], schema or study_config())
    groups = getattr(cls, "either_or", ()) if cls is not None else ()
    prefix = f"{parent}." if parent else ""
    return [f"{prefix}{o}" for g in groups if leaf in g for o in g if o != leaf]


def apply_overrides(
    raw: dict[str, Any], overrides: dict[str, Any], schema: type[BaseModel] | None = None
) -> dict[str, Any]:
    """Set dotted paths in a nested dict (a copy); intermediate dicts are created.

    Setting one member of an either/or pair (``pipeline.truncate.keep_layers`` /
    ``keep_ratio``, declared by the config class at that path in ``schema``, default
    :class:`StudyConfig`) clears the others, unless ``overrides`` sets them too (then the
    validation reports both set).
    """
    out = copy.deepcopy(raw)

    def node_of(parts: list[str]) -> dict[str, Any]:
        node = out
        for part in parts:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        return node

    for key, value in overrides.items():
        parts = key.split(".")
        node_of(parts[:-1])[parts[-1]] = value
        for other in either_or_partners(key, schema):
            if other not in overrides:
                o_parts = other.split(".")
                node_of(o_parts[:-1])[o_parts[-1]] = None
    return out


# How much of a bad value a problem line quotes: a few items per level, a few levels, short
# strings, so a hostile value (a YAML alias expanding to millions of items) stays one line.
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 2, 80, 80
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 5
_SHOWN_CHARS = 200


def _shown(value: Any) -> str:
    """``value`` quoted for a problem line: a shortened ``repr``, always one line."""
    text = " ".join(_SHOWN.repr(value).split("\n"))
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _key_part(part: Any) -> str:
    """One part of a dotted key as a problem line shows it: quoted when it is empty or holds
    blanks or control characters (a key ``"\\n"`` must not break the line or vanish)."""
    text = str(part)
    plain = text and text.isprintable() and not any(c.isspace() for c in text)
    return text if plain else repr(text)


def _format_errors(source: str, err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        loc = ".".join(_key_part(p) for p in e["loc"])
        msg = " ".join(e["msg"].split())  # a validator's message is one line here
        msg = msg.removeprefix("Value error, ")  # pydantic's tag on a validator's own words
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        value = e.get("input")
        got = "" if e["type"] in ("extra_forbidden", "missing") else f" (got {_shown(value)})"
        lines.append(f"{source}: {loc or '<root>'}: {msg}{got}")
    return lines


def _check_task(cfg: StudyConfig, source: str) -> list[str]:
    """The task is registered; objectives and the report's quality metric are its metrics."""
    if cfg.task not in TASKS:
        return [f"{source}: task: {TASKS.unknown_message(cfg.task)}"]
    task = get_task(cfg.task)
    problems = []
    allowed = task.objective_metrics()
    for i, o in enumerate(cfg.search.objectives):
        if o.metric not in allowed:
            near = difflib.get_close_matches(o.metric, list(allowed), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            problems.append(
                f"{source}: search.objectives.{i}.metric: {o.metric!r} is not a metric of task "
                f"{task.name!r}{hint} (allowed: {', '.join(allowed)})"
            )
    if cfg.report.quality_metric not in task.metrics:
        problems.append(
            f"{source}: report.quality_metric: {cfg.report.quality_metric!r} is not a metric of "
            f"task {task.name!r} (allowed: {', '.join(task.metrics)})"
        )
    if cfg.importance.task != task.name:
        problems.append(
            f"{source}: importance.task: {cfg.importance.task!r} differs from the study's task "
            f"{task.name!r} (leave it out: it follows task)"
        )
    return problems


def _check_names(cfg: StudyConfig, source: str) -> list[str]:
    """Cross-field checks that need the registries (stage and method names), and whether
    ``teacher.model`` can be loaded here (a folder with config.json, or a hub id that the
    cache has or that downloads may fetch)."""
    from engine.importance import IMPORTANCE

    problems = _check_task(cfg, source)
    if cfg.search.algorithm not in SEARCH_ALGORITHMS:
        problems.append(
            f"{source}: search.algorithm: {SEARCH_ALGORITHMS.unknown_message(cfg.search.algorithm)}"
        )
    if cfg.search.scheduler.name not in SCHEDULER_KINDS:
        problems.append(
            f"{source}: search.scheduler.name: "
            f"{SCHEDULER_KINDS.unknown_message(cfg.search.scheduler.name)}"
        )
    problems += [*data_problems(cfg.data, source), *importance_problems(cfg.importance, source)]
    if cfg.task in TASKS:
        problems += [f"{source}: {p}" for p in get_task(cfg.task).study_problems(cfg)]
    for i, problem in order_problems(cfg.pipeline.order):
        where = "pipeline.order" if i is None else f"pipeline.order.{i}"
        problems.append(f"{source}: {where}: {problem}")
    for i, m in enumerate(cfg.importance.methods):
        if m not in IMPORTANCE:
            problems.append(f"{source}: importance.methods.{i}: {IMPORTANCE.unknown_message(m)}")
    wants_latency = [
        f"search.objectives.{i}"
        for i, o in enumerate(cfg.search.objectives)
        if o.metric == "latency_ms_p50"
    ]
    if cfg.report.cost_metric == "latency_ms_p50":
        wants_latency.append("report.cost_metric")
    if wants_latency and not cfg.measure.save_models:
        problems.append(
            f"{source}: measure.save_models: false leaves no saved model for the latency phase "
            f"after the sweep, but {', '.join(wants_latency)} asks for latency_ms_p50 "
            "(set measure.save_models=true)"
        )
    problems += [f"{source}: {p}" for p in stage_problems(cfg)]
    return problems


def validate(raw: dict[str, Any], source: str) -> StudyConfig:
    """Validate a raw dict into a :class:`StudyConfig`, or raise :class:`ConfigError`."""
    try:
        cfg = study_config().model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(source, e)) from None
    problems = _check_names(cfg, source)
    if problems:
        raise ConfigError(problems)
    return cfg


def load_study(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Load, override and validate a study; every search-space value is validated too."""
    path = study_path(name_or_path)
    source = (
        str(path.relative_to(SWEEPS_DIR.parent))
        if path.is_relative_to(SWEEPS_DIR.parent)
        else str(path)
    )
    try:
        raw = yaml.load(path.read_text(), Loader=_StudyLoader)  # a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = str(getattr(e, "problem", None) or e).strip().splitlines() or ["?"]
        raise ConfigError([f"{source}:{where} not valid YAML: {problem[0]}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            [f"{source}: not UTF-8 text (byte {e.start}): save it as UTF-8"]
        ) from None
    except OSError as e:
        raise ConfigError([f"{source}: cannot read: {e.strerror}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: a study file must be a mapping of sections"])
    parsed = dict(parse_override(o) for o in overrides)
    merged = apply_overrides(raw, parsed)
    cfg = validate(merged, source)
    # Each search value must itself make a valid study: catch a bad grid before Ray starts.
    problems: list[str] = []
    base = cfg.model_dump(mode="python")
    for key in cfg.search.space:
        both = [o for o in either_or_partners(key) if o in cfg.search.space and key < o]
        problems += [
            f"{source}: search.space.{key}: searched together with search.space.{o}, but only "
            "one of the two may be set (either/or)"
            for o in both
        ]
    for key, values in cfg.search.space.items():
        if not _has_path(base, key):
            problems.append(f"{source}: search.space.{key}: not a config path")
            continue
        if isinstance(values, list) and not values:
            problems.append(f"{source}: search.space.{key}: needs a non-empty list of values")
            continue
        for v in range_points(values):
            try:
                validate(apply_overrides(base, {key: v}), source)
            except ConfigError as e:
                problems.extend(f"{p} [search.space.{key}={_shown(v)}]" for p in e.problems)
    for i, point in enumerate(cfg.search.extra):
        unknown = [k for k in point if not _has_path(base, k)]
        problems += [f"{source}: search.extra.{i}.{k}: not a config path" for k in unknown]
        if unknown:
            continue
        try:
            validate(apply_overrides(base, dict(point)), source)
        except ConfigError as e:
            problems.extend(f"{p} [search.extra.{i}]" for p in e.problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def _has_path(d: dict[str, Any], dotted: str) -> bool:
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → {dotted path: leaf}; lists/tuples become strings-friendly lists."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def with_values(cfg: StudyConfig, values: dict[str, Any]) -> StudyConfig:
    """``cfg`` with dotted-path values substituted (validated)."""
    return validate(apply_overrides(cfg.model_dump(mode="python"), values), "trial")
