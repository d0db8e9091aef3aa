"""Hostile study files and overrides (issue 17), fuzzed with hypothesis.

Property, for every input: :func:`engine.config.load_study` returns a config or raises one
:class:`~engine.config.ConfigError` whose problems are single lines, each naming the file
(and, for a study that is a mapping, a dotted key) — never another exception type, never a
hang. Inputs: random structures at known and unknown keys of the smoke study, a wrong-typed
value at every known key (a sweep, not a sample), random override strings, and random YAML
text. The CLI is driven in a subprocess for a handful of malformed overrides.

Examples per target (``derandomize=True``: CI runs the same cases every time, so a red run
is reproducible and never depends on luck; ``FUZZ_EXAMPLES`` scales every target for a longer,
still reproducible, local hunt):

* random values at 1–3 known keys: ``EXAMPLES`` (default 150)
* random top-level and nested unknown keys: ``EXAMPLES``
* random override strings through :func:`parse_override`: ``4 * EXAMPLES``
* random ``key=value`` overrides through :func:`load_study`: ``EXAMPLES``
* random YAML text as a whole study file: ``2 * EXAMPLES``
* random structure as a whole study file: ``EXAMPLES``
* wrong type at every known key: one case per key (171 keys of the smoke study and the defaults)
* two CLI subprocesses (a malformed override; three hostile values reported together)
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.config import SWEEPS_DIR, ConfigError, StudyConfig, load_study, parse_override
from tests.conftest import sweep_in_process

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SMOKE = yaml.safe_load((SWEEPS_DIR / "smoke.yaml").read_text())
MAX_LINE = 1_000  # a problem line quotes the bad value, shortened
SLOW_S = 10.0  # one load of a small study file; a hang would be far beyond it


def _leaves(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.append(key)  # sections too: a wrong type for a whole section is a case
        if isinstance(v, dict) and v and k != "space":  # space keys are data, not schema
            out += _leaves(v, key + ".")
    return out


# every key of the smoke study, with the defaults it leaves out (the full schema's keys)
KNOWN = sorted(set(_leaves(load_study("smoke").model_dump(mode="json"))) | set(_leaves(SMOKE)))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["grid", "fisher", "truncate", "distill", "asha", "1e400", "-0", "nan"]),
)
keys = st.one_of(st.text(max_size=10), st.integers(), st.booleans(), st.none())
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    node = doc
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def _load(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig | ConfigError:
    """The loader's outcome: a config or its ConfigError; any other exception fails the test."""
    t0 = time.perf_counter()
    try:
        out: StudyConfig | ConfigError = load_study(str(path), overrides)
    except ConfigError as e:
        out = e
    assert time.perf_counter() - t0 < SLOW_S, "loading took too long"
    return out


def _check_error(err: ConfigError, source: str, *, keyed: bool = True) -> None:
    """One or more problems, each one line naming the file (and a dotted key)."""
    assert err.problems, "a ConfigError with no problem"
    for line in err.problems:
        assert isinstance(line, str) and "\n" not in line and line.strip(), repr(line)
        assert line.startswith(f"{source}:"), line
        assert len(line) <= MAX_LINE, line[:200]
        if keyed:  # "<file>: <dotted.key>: ..." (a list index is a key part too)
            assert re.match(rf"{re.escape(source)}: \S.*?: ", line), line


def _write(tmp_path: Path, doc: Any, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


@FUZZ
@given(
    edits=st.lists(st.tuples(st.sampled_from(KNOWN), values), min_size=1, max_size=3),
)
@example(edits=[("task", [1])])  # was TypeError: unhashable type: 'list'
@example(edits=[("search.extra", [{"task": [1]}])])  # was TypeError (a search point)
@example(edits=[("repeats", [[1] * 50] * 50)])  # quoted value shortened, not 50 lines of it
def test_random_values_at_known_keys(tmp_path: Path, edits: list[tuple[str, Any]]) -> None:
    doc = yaml.safe_load((SWEEPS_DIR / "smoke.yaml").read_text())
    for key, value in edits:
        _set(doc, key, value)
    path = _write(tmp_path, doc)
    out = _load(path)
    if isinstance(out, ConfigError):
        _check_error(out, str(path))


@FUZZ
@given(
    where=st.sampled_from(["", "data.", "pipeline.", "pipeline.distill.", "search.", "teacher."]),
    extra=st.dictionaries(st.text(max_size=10), values, min_size=1, max_size=3),
)
@example(where="", extra={"\x85": None})  # was shown as "study.yaml:  : unknown key"
def test_unknown_keys_are_named(tmp_path: Path, where: str, extra: dict[str, Any]) -> None:
    doc = yaml.safe_load((SWEEPS_DIR / "smoke.yaml").read_text())
    for k, v in extra.items():
        _set(doc, f"{where}{k}", v)
    path = _write(tmp_path, doc)
    out = _load(path)
    # the keys as the file holds them (YAML turns e.g. a NEL inside a key into a blank)
    node = yaml.safe_load(path.read_text())
    for part in where.split(".")[:-1]:
        node = node[part]
    added = [k for k in node if f"{where}{k}" not in KNOWN and "." not in k]
    if not added:
        return
    assert isinstance(out, ConfigError), added
    _check_error(out, str(path))
    for leaf in added:  # named as written, or quoted when blank or unprintable
        plain = leaf and leaf.isprintable() and not any(c.isspace() for c in leaf)
        shown = f"{where}{leaf}" if plain else f"{where}{leaf!r}"
        assert any(p.startswith(f"{path}: {shown}: unknown key") for p in out.problems), leaf


def _wrong_value(default: Any) -> Any:
    """A value of the wrong type for a key whose default is ``default``."""
    return ["not", {"a": "scalar"}] if not isinstance(default, list) else {"x": {"y": 1}}


def _default_at(dotted: str) -> Any:
    node: Any = load_study("smoke").model_dump(mode="json")
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("key", KNOWN)
def test_a_wrong_type_at_every_known_key_is_named(tmp_path: Path, key: str) -> None:
    doc = yaml.safe_load((SWEEPS_DIR / "smoke.yaml").read_text())
    _set(doc, key, _wrong_value(_default_at(key)))
    path = _write(tmp_path, doc)
    out = _load(path)
    assert isinstance(out, ConfigError), f"{key} accepted a wrong type"
    _check_error(out, str(path))
    # the problem names the key itself (or a key below it: a list's first entry, a field)
    assert any(
        re.match(rf"{re.escape(str(path))}: {re.escape(key)}[.:]", p) for p in out.problems
    ), out.problems


override_text = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda k, sep, v: f"{k}{sep}{v}",
        st.one_of(st.sampled_from(KNOWN), st.text(max_size=15)),
        st.sampled_from(["=", "==", " = ", ":", ""]),
        st.one_of(st.text(max_size=20), values.map(lambda v: yaml.safe_dump(v).strip())),
    ),
)


@settings(FUZZ, max_examples=4 * EXAMPLES)
@given(text=override_text)
@example(text="=5")
@example(text="a..b=1")
@example(text="x=[unclosed")
def test_parse_override_returns_a_pair_or_one_line(text: str) -> None:
    try:
        key, _ = parse_override(text)
    except ConfigError as e:
        (line,) = e.problems
        assert "\n" not in line and "expected key.path=value" in line
        return
    assert key and key == key.strip() and "=" in text


@FUZZ
@given(overrides=st.lists(override_text, min_size=1, max_size=3))
@example(overrides=["a..b=1"])
@example(overrides=["search.space={task: [[1]]}"])  # was TypeError: unhashable type: 'list'
@example(overrides=["pipeline.=3"])
def test_random_overrides_end_in_a_config_or_one_error(overrides: list[str]) -> None:
    t0 = time.perf_counter()
    try:
        load_study("smoke", overrides)
    except ConfigError as e:
        for line in e.problems:
            assert isinstance(line, str) and "\n" not in line and line.strip(), repr(line)
            assert len(line) <= MAX_LINE
            assert line.startswith(("sweeps/smoke.yaml: ", "override ")), line
    assert time.perf_counter() - t0 < SLOW_S


@settings(FUZZ, max_examples=2 * EXAMPLES)
@given(text=st.text(max_size=300))
@example(text="\x00")  # was a two-line "not valid YAML" message
@example(text="a: &a [*a]")  # a recursive structure
@example(text="name: x\nname: y\n")  # a duplicate key is named, not silently the last one
def test_random_yaml_text_is_a_config_or_one_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    out = _load(path)
    if isinstance(out, ConfigError):
        _check_error(out, str(path), keyed=False)


@FUZZ
@given(doc=values)
def test_random_structure_as_a_study_is_one_error(tmp_path: Path, doc: Any) -> None:
    path = _write(tmp_path, doc)
    out = _load(path)
    assert isinstance(out, ConfigError)  # no random structure is a complete study
    _check_error(out, str(path), keyed=False)


def test_duplicate_key_is_an_error_naming_it(tmp_path: Path) -> None:
    text = (
        (SWEEPS_DIR / "smoke.yaml")
        .read_text()
        .replace("    temperature: 2.0\n", "    temperature: 2.0\n    temperature: 8.0\n")
    )
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    out = _load(path)
    assert isinstance(out, ConfigError)
    (line,) = out.problems
    assert "duplicate key 'temperature'" in line and line.startswith(f"{path}: line ")


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_a_study_file_in_another_encoding_is_one_error(tmp_path: Path, encoding: str) -> None:
    """Was a UnicodeDecodeError traceback (latin-1); UTF-16 was a two-line YAML message."""
    path = tmp_path / "study.yaml"
    text = (SWEEPS_DIR / "smoke.yaml").read_text().replace("smoke", "café")
    path.write_bytes(text.encode(encoding))
    out = _load(path)
    assert isinstance(out, ConfigError)
    _check_error(out, str(path), keyed=False)
    (line,) = out.problems
    assert "UTF-8" in line or "not valid YAML" in line, line


def test_billion_laughs_is_bounded(tmp_path: Path) -> None:
    """Aliases fan a small file out to 10^7 elements at a known key: the error quotes a
    shortened value and comes back fast (it used to print the whole expansion)."""
    laughs = "  l0: &l0 [a, a, a, a, a, a, a, a, a, a]\n" + "".join(
        f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 7)
    )
    text = (
        (SWEEPS_DIR / "smoke.yaml")
        .read_text()
        .replace("repeats: [0]\n", f"x:\n{laughs}repeats: *l6\n")
    )
    path = tmp_path / "laughs.yaml"
    path.write_text(text)
    out = _load(path)
    assert isinstance(out, ConfigError)
    _check_error(out, str(path))
    assert sum(len(p) for p in out.problems) < 20 * MAX_LINE


# Two CLI runs (the entry point in this process, which also checks that no Ray started): a
# malformed override, and hostile values that used to end in a TypeError traceback, all
# reported together.
BAD_OVERRIDES = [
    ["=5"],
    [
        "task=[1]",
        "pipeline.distill.temperature={x: [1, 2]}",
        "repeats=[[0]]",
        "name=../../x",  # would have put the run directory outside reports/ (issue 33)
    ],
]


@pytest.mark.parametrize("overrides", BAD_OVERRIDES, ids=["malformed", "hostile-values"])
def test_cli_bad_overrides_exit_2_with_error_lines_before_ray(
    tmp_path: Path, overrides: list[str]
) -> None:
    out = tmp_path / "run"
    proc = sweep_in_process("smoke", *overrides, out=out)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) >= len(overrides), proc.stderr[-2000:]  # collected, not first-only
    assert all(line.startswith("error: ") for line in lines), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()  # validation comes before the run directory and Ray


@pytest.mark.parametrize(
    "override",
    ["resources.cpus=1e400", "resources.cpus=.inf", "pipeline.distill.temperature=.nan"],
)
def test_inf_and_nan_are_not_settings(override: str) -> None:
    """``1e400`` parsed to inf was a valid CPU count: every trial would wait forever."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as err:
        load_study("smoke", [override])
    (line,) = err.value.problems
    assert line.startswith(f"sweeps/smoke.yaml: {key}: ") and "finite" in line
