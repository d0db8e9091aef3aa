"""Every command a user is shown works (issue 31): each command in a fenced ``bash``/``sh``
block of README.md and docs/*.md is checked, so a renamed flag, study or script fails CI
instead of a user.

How each kind of command is checked (a command no rule covers fails the test):

- ``python -m engine.sweep STUDY …``: the real CLI with ``--dry-run`` added, which validates
  the study, every override and the search plan and exits 0 without starting Ray (the
  quickstart's main command in a subprocess, the others through ``engine.sweep.main`` in this
  process);
- ``python -m analysis.report RUN``: the real CLI on a copy of a recorded run;
- ``pytest …``: the same command with ``--collect-only`` (the suite collects, exit 0);
- ``ray SUB …``: Ray's own ``ray SUB --help``, which must list every ``--flag`` used, and the
  repository files named (``cluster.yaml``) must exist;
- ``pip install REQ …``: each requirement parses, and a pinned one matches the version in
  this environment (the one the tests ran with);
- ``bash SCRIPT …``: the script exists, ``bash -n`` accepts it and it handles every
  ``--flag`` used (``bench/gpu_check.sh --dry-run`` itself runs in
  ``tests/bench/test_gpu_check.py``).

Prefixes ``VAR=value``, ``cd DIR &&`` and ``bash scripts/venv.sh`` are stripped (the last after
checking the script exists). ``python`` blocks are compiled and their imports run.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO, cli_env, run_cli

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
RECORDED_RUN = REPO / "tests" / "assets" / "runs" / "smoke-rec"
RAY = Path(sys.executable).parent / "ray"
RAY_GROUPS = {"job"}  # ray subcommands that take a subcommand of their own


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of every fenced block."""
    blocks: list[tuple[str, int, list[str]]] = []
    lang, start, body = None, 0, []
    for i, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence and lang is None:
            lang, start, body = fence.group(1).lower(), i + 1, []
        elif fence:
            blocks.append((lang, start, body))
            lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def shell_commands(doc: Path) -> list[Command]:
    """One :class:`Command` per shell command: continuation lines joined, comments and
    blank lines dropped, ``a && b`` kept whole (the prefix rule strips ``cd``)."""
    out = []
    for lang, start, body in fenced_blocks(doc.read_text()):
        if lang not in SHELL:
            continue
        pending, first = "", 0
        for n, line in enumerate(body, start):
            if not pending:
                first = n
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            text, pending = pending + line, ""
            if shlex.split(text, comments=True):
                text = re.sub(r"\s+#\s.*$", "", text).strip()
                out.append(Command(doc.relative_to(REPO).as_posix(), first, " ".join(text.split())))
    return out


INLINE = re.compile(r"`((?:bash scripts/venv\.sh )?python -m [^`]+)`")
PLACEHOLDER_RUNS = ("RUN_A", "RUN_B", "RUN_DIR")


def inline_commands(doc: Path) -> list[Command]:
    """Commands in inline code (`` `python -m …` ``, wrapped lines joined), outside fences;
    a synopsis's optional groups (``[--metric M]``) are dropped."""
    text = doc.read_text()
    prose = "\n".join(
        "" if inside else line
        for line, inside in zip(text.splitlines(), _inside_fences(text), strict=True)
    )
    out = []
    for m in INLINE.finditer(prose):
        command = re.sub(r"\s*\[--[^\]]*\]", "", " ".join(m.group(1).split()))
        line = prose.count("\n", 0, m.start()) + 1
        out.append(Command(doc.relative_to(REPO).as_posix(), line, command))
    return out


def _inside_fences(text: str) -> list[bool]:
    inside, flags = False, []
    for line in text.splitlines():
        fence = re.match(r"^\s*```", line) is not None
        flags.append(inside or fence)
        inside ^= fence
    return flags


def _strip_prefixes(words: list[str], env: dict[str, str]) -> list[str]:
    """``words`` without the prefixes; ``VAR=value`` ones go into ``env``."""
    while words:
        if re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            key, value = words[0].split("=", 1)
            env[key] = value
            words = words[1:]
        elif words[0] == "cd" and "&&" in words:
            words = words[words.index("&&") + 1 :]
        elif words[:2] == ["bash", "scripts/venv.sh"]:
            assert (REPO / "scripts" / "venv.sh").is_file()
            words = words[2:]
        else:
            return words
    return words


def _flags(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("--")]


def _recorded_run(tmp_path: Path, name: str) -> str:
    """A copy of the recorded run directory, standing in for a documented placeholder."""
    shutil.copytree(RECORDED_RUN, tmp_path / name)
    return str(tmp_path / name)


def check_engine_sweep(args: list[str], tmp_path: Path, env: dict[str, str]) -> None:
    """The quickstart's main command runs as it is typed, in a subprocess (``python -m
    engine.sweep`` starts); every other one through the same CLI entry point, ``main``, in
    this process with the command's environment (each subprocess would spend ~7 s importing
    what this process has imported already)."""
    if args == ["ablation"]:
        proc = run_cli("engine.sweep", *args, "--dry-run", env=cli_env(**env), timeout=120)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    else:
        code, stdout, stderr = _sweep_main([*args, "--dry-run"], env)
    assert code == 0, stderr
    assert stdout.startswith(f"[dry-run] {args[0]}:"), stdout


def _sweep_main(argv: list[str], env: dict[str, str]) -> tuple[int | str | None, str, str]:
    """``engine.sweep.main(argv)`` under ``env`` added to this process's environment
    (restored after): its exit code, standard output and standard error."""
    from engine.sweep import main

    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update(env)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code: int | str | None = main(argv)
            except SystemExit as exit_:  # argparse's own errors
                code = exit_.code
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return code, out.getvalue(), err.getvalue()


def check_analysis_report(args: list[str], tmp_path: Path, env: dict[str, str]) -> None:
    run = _recorded_run(tmp_path, "run")
    proc = run_cli("analysis.report", run, *args[1:], timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (Path(run) / "report.md").is_file()


def check_analysis_compare(args: list[str], tmp_path: Path, env: dict[str, str]) -> None:
    """Placeholder run directories become copies of a recorded run."""
    args = [_recorded_run(tmp_path, w) if w in PLACEHOLDER_RUNS else w for w in args]
    proc = run_cli("analysis.compare", *args, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "B − A" in proc.stdout or "B - A" in proc.stdout, proc.stdout[:500]


def check_pytest(args: list[str], tmp_path: Path, env: dict[str, str]) -> None:
    proc = run_cli("pytest", *args, "--collect-only", "-q", "-p", "no:cacheprovider", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert re.search(r"\d+ tests collected", proc.stdout), proc.stdout[-500:]


def check_ray(args: list[str], tmp_path: Path, env: dict[str, str]) -> None:
    sub = args[:2] if args[0] in RAY_GROUPS else args[:1]
    rest = args[len(sub) :]
    if "--" in rest:  # `ray job submit … -- ENTRYPOINT`: the entrypoint is a command too
        check(rest[rest.index("--") + 1 :], tmp_path, env)
        rest = rest[: rest.index("--")]
    proc = subprocess.run(
        [str(RAY), *sub, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"`ray {' '.join(sub)}` is not a Ray command: {proc.stderr}"
    for flag in _flags(rest):
        assert re.search(rf"{re.escape(flag)}\b", proc.stdout), (
            f"`ray {' '.join(sub)} --help` has no {flag}"
        )
    for w in rest:
        if w.endswith((".yaml", ".yml")):
            assert (REPO / w).is_file(), f"{w} is not in the repository"


def check_pip_install(args: list[str], tmp_path: Path, env: dict[str, str]) -> None:
    assert args[0] == "install"
    for spec in (w for w in args[1:] if not w.startswith("-")):
        req = Requirement(spec)
        try:
            have = version(req.name)
        except PackageNotFoundError:
            continue  # e.g. boto3: the launcher's, not the engine's
        assert req.specifier.contains(have, prereleases=True), (
            f"the docs pin {spec}; the tests ran with {req.name} {have}"
        )


def check_bash_script(args: list[str], tmp_path: Path, env: dict[str, str]) -> None:
    script = REPO / args[0]
    assert script.is_file(), f"{args[0]} does not exist"
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    handled = script.read_text()
    # a script that passes its arguments on to a Python module handles that module's flags
    for line in (x for x in handled.splitlines() if '"$@"' in x):
        target = re.search(r"-m ([\w.]+)|(\S+\.py)\b", line)
        if target:
            path = target.group(2) or target.group(1).replace(".", "/") + ".py"
            handled += (REPO / path).read_text()
    for flag in _flags(args[1:]):
        assert flag in handled, f"{args[0]} does not handle {flag}"


def check(words: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> None:
    """Dispatch one command to its rule (``env``: the ``VAR=value`` prefixes seen so far)."""
    env = dict(env or {})
    words = _strip_prefixes(words, env)
    if words[-1] == "&":  # run in the background: the same command
        words = words[:-1]
    if words[:3] == ["python", "-m", "engine.sweep"]:
        return check_engine_sweep(words[3:], tmp_path, env)
    if words[:3] == ["python", "-m", "analysis.report"]:
        return check_analysis_report(words[3:], tmp_path, env)
    if words[:3] == ["python", "-m", "analysis.compare"]:
        return check_analysis_compare(words[3:], tmp_path, env)
    if words[0] == "pytest":
        return check_pytest(words[1:], tmp_path, env)
    if words[0] == "ray":
        return check_ray(words[1:], tmp_path, env)
    if words[0] == "pip":
        return check_pip_install(words[1:], tmp_path, env)
    if words[0] == "bash" and words[1].endswith(".sh"):
        return check_bash_script(words[1:], tmp_path, env)
    if "/" in words[0] and words[0].endswith("python") and words[1:3] == ["-m", "engine.sweep"]:
        return check_engine_sweep(words[3:], tmp_path, env)  # a venv's interpreter by its path
    pytest.fail(f"no rule checks this documented command; add one to {__name__}: {words}")


_ALL = [c for doc in DOCS for c in (*shell_commands(doc), *inline_commands(doc))]
COMMANDS = list({c.text: c for c in reversed(_ALL)}.values())[::-1]  # each text once, first place


def test_the_docs_show_commands() -> None:
    """The extraction finds the quickstart's two commands (a guard against a parser that
    finds nothing and passes vacuously)."""
    readme = [c.text for c in COMMANDS if c.doc == "README.md"]
    assert "bash scripts/venv.sh python -m engine.sweep ablation" in readme
    assert "bash scripts/venv.sh pytest" in readme
    assert len(COMMANDS) >= 15


@pytest.mark.slow  # a subprocess per command (~75 s in all)
@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_every_documented_command_works(command: Command, tmp_path: Path) -> None:
    check(shlex.split(command.text, comments=True), tmp_path)


PYTHON_BLOCKS = [
    (doc.relative_to(REPO).as_posix(), start, "\n".join(body))
    for doc in DOCS
    for lang, start, body in fenced_blocks(doc.read_text())
    if lang == "python"
]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: f"{b[0]}:{b[1]}")
def test_every_python_example_compiles_and_imports(block: tuple[str, int, str]) -> None:
    doc, start, source = block
    compile(source, f"{doc}:{start}", "exec")
    imports = "\n".join(
        line for line in source.splitlines() if re.match(r"^(from \S+ )?import ", line)
    )
    exec(compile(imports, f"{doc}:{start}", "exec"), {})
