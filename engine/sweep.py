"""Command line: ``python -m engine.sweep STUDY [key.path=value ...] [--address ADDR]``.

Reads like a recipe, top to bottom: validate the study and check the run directory can be
written and has room (:func:`preflight`; both before any Ray work) → start or
join Ray → prepare the shared inputs once (:mod:`engine.prepare`: data, teacher, importance)
→ run every student as a Ray Tune trial and time them (:mod:`engine.tune_run`) → write the
run directory (:mod:`engine.rundir`) → build the report with ``python -m analysis.report``
(a subprocess: the engine never imports :mod:`analysis`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine.config import ConfigError, StudyConfig, list_studies, load_study
from engine.preflight import (
    address_problem,
    gpu_problem,
    lock_run_dir,
    preflight,
    resume_problem,
    uri_problem,
)
from engine.provenance import REPO, git_commit, packages
from sweepcore.rundir import SCHEMA_VERSION, TEACHER_ID

__all__ = ["MIN_FREE_MB", "dry_run_line", "main"]

# Room a run directory needs before a study starts: results, plots and report take a few MB,
# the trials' checkpoints and saved students (models/) tens of MB each at MiniLM size.
MIN_FREE_MB = 200
INTERRUPTED = 130  # the exit code of a run stopped by Ctrl-C (128 + SIGINT)

# Never download weights or data unless the user asks for it (HF_HUB_OFFLINE=0).
QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Tune's newer console output prints its experiment banner even at verbose=0; the older
    # one prints nothing at verbose=0 (engine.progress shows the trials instead)
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine.sweep",
        description="Run a compression study (sweeps/STUDY.yaml) as Ray Tune trials.",
        epilog="Overrides use the study file's dotted paths, e.g. "
        "pipeline.distill.temperature=4 data.train_size=500 repeats=[0,1,2]",
    )
    p.add_argument("study", nargs="?", help="study name in sweeps/ or a path to a YAML file")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--list", action="store_true", help="list the studies and exit")
    p.add_argument("--address", help="join a running Ray cluster ('auto' on the head node)")
    p.add_argument(
        "--out",
        help="run directory (default reports/STUDY/RUN_ID); on a cluster, a directory every "
        "node mounts at the same path",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out (finished trials are kept)",
    )
    p.add_argument("--no-report", action="store_true", help="skip the analysis report")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the study, the overrides and the run directory, say what would run, and "
        "exit without starting Ray (nothing is written)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray's and Tune's own log live (always kept in RUN_DIR/driver.log)",
    )
    p.add_argument(
        "--min-free-mb",
        type=int,
        default=MIN_FREE_MB,
        help=f"free space the run directory needs before Ray starts (default {MIN_FREE_MB})",
    )
    return p


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _fail_config(e: ConfigError) -> int:
    for line in e.problems:
        print(f"error: {line}", file=sys.stderr)
    return 2


def _run_id(cfg: StudyConfig) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    h = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:6]
    return f"{stamp}-{h}"


def _init_ray(address: str | None) -> None:
    import ray

    env = {k: os.environ[k] for k in QUIET_ENV}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
    else:
        # "local": always start a fresh Ray, never silently join a `ray start` cluster
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    token = Path.home() / ".ray" / "auth_token"
    if token.exists():
        token.chmod(0o600)


def run(
    cfg: StudyConfig,
    run_dir: Path,
    *,
    address: str | None,
    resume: bool,
    report: bool,
    verbose: bool = False,
    argv: list[str] | None = None,
) -> Path:
    """The study's Ray session, its standard error in ``run_dir/driver.log``
    (:func:`engine.console.route_output`; ``verbose`` also shows it live), then the report.
    ``argv``: the command line's arguments (default ``sys.argv[1:]``), for the ``--resume``
    command an interrupted run records."""
    from engine.console import route_output

    run_dir.mkdir(parents=True, exist_ok=True)
    with route_output(run_dir, verbose=verbose):
        _run_study(cfg, run_dir, address=address, resume=resume, argv=argv)
    if report:
        _report(run_dir)
    return run_dir


def _report(run_dir: Path) -> None:
    """``python -m analysis.report RUN_DIR`` in a subprocess, summed up in one line; its
    standard error goes to ``driver.log`` too, and to the terminal when it fails."""
    from engine.console import LOG_NAME
    from engine.progress import Phase

    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.report", str(run_dir)],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
    )
    with (run_dir / LOG_NAME).open("a") as f:
        f.write(proc.stderr)
    phase = Phase("report")
    if proc.returncode == 0:
        html = run_dir / "report.html"
        phase.close(
            f"{proc.stdout.strip()}{', ' + html.name if html.exists() else ''} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    else:
        phase.close(f"failed (exit {proc.returncode}); its output is in {run_dir / LOG_NAME}")
        print(proc.stderr.strip()[-2000:], file=sys.stderr)


def dry_run_line(cfg: StudyConfig, run_dir: Path, address: str | None, resume: bool) -> str:
    """``--dry-run``: what the command would run, from the validated study alone (the search
    plan is built, so a space the algorithm cannot search fails here as in a real run)."""
    from engine.search import plan_search

    plan = plan_search(cfg)
    seeds = len(cfg.repeats)
    where = f"on the Ray cluster at {address}" if address else "on a local Ray"
    verb = "continue" if resume else "write"
    return (
        f"[dry-run] {cfg.name}: {cfg.search.algorithm}, {plan.configs} configurations × "
        f"{seeds} seed{'s' if seeds != 1 else ''} = {plan.configs * seeds} trials, "
        f"scheduler {cfg.search.scheduler.name}, {where}; would {verb} {run_dir} "
        "(not created, Ray not started)"
    )


def study_lines(studies: dict[str, str], width: int) -> list[str]:
    """``--list``: one line per study, at most ``width`` characters: the name in a column as
    wide as the longest, then the description's first sentence, cut with "…" to fit."""
    col = max((len(n) for n in studies), default=0) + 2
    room = max(width - col, 10)
    lines = []
    for name, desc in studies.items():
        first = re.split(r"(?<=[.?!])\s", desc.strip(), maxsplit=1)[0]
        if len(first) > room:
            first = first[: room - 1].rstrip() + "…"
        lines.append(f"{name:{col}s}{first}")
    return lines


def _run_study(
    cfg: StudyConfig,
    run_dir: Path,
    *,
    address: str | None,
    resume: bool,
    argv: list[str] | None = None,
) -> None:
    import ray

    from engine.console import quiet_ray_data
    from engine.latency_phase import apply_latency, untimed_phase
    from engine.prepare import prepare, teacher_row
    from engine.rundir import trial_rows, write_outputs
    from engine.search import plan_search
    from engine.tune_run import drop_checkpoints, latency_phase, pareto_summary, run_tune

    manifest: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "git_commit": git_commit(),
        "packages": packages(),
        "config": cfg.model_dump(mode="json"),
        "seeds": list(cfg.repeats),
        "started": dt.datetime.now(dt.UTC).isoformat(),
        "command": sys.argv,
    }
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    _init_ray(address)
    quiet_ray_data()
    try:
        data, art, shared = prepare(cfg, timings, manifest.setdefault("cache", {}))
        t0 = time.perf_counter()
        teacher = teacher_row(cfg, shared, run_dir)
        timings["tune_started_at"] = time.time()  # Unix s, as the trials' started_at
        grid = run_tune(cfg, shared, run_dir, resume)
        timings["sweep_s"] = time.perf_counter() - t0
        trials = trial_rows(cfg, grid)
        planned = plan_search(cfg).configs * len(cfg.repeats)
        cut = sum(r.get("status") == "interrupted" for r in trials)
        if cut or len(trials) < planned:  # Ctrl-C: Tune stopped the sweep and saved its state
            manifest["interrupted"] = {
                "finished": len(trials) - cut,
                "planned": planned,
                "resume": resume_command(run_dir, argv),
            }
            # the trial checkpoints stay for --resume, which times every student
            phase = untimed_phase(
                [TEACHER_ID, *(str(r.get("trial_id")) for r in trials)],
                "the sweep was interrupted; --resume times every student",
            )
            rows, manifest["latency"] = apply_latency([teacher, *trials], phase), phase.info
        else:
            drop_checkpoints(grid)
            # after every trial has finished, so the timing shares the node with nothing
            rows, manifest["latency"] = latency_phase(cfg, shared, [teacher, *trials], timings)
        on_front = pareto_summary(cfg, rows)  # a latency objective is judged on the serial figures
        for r in rows[1:]:  # the trials (rows[0] is the teacher)
            r["on_front"] = r.get("config_id") in on_front and r.get("status") == "ok"
        timings["total_s"] = time.perf_counter() - t_all
        manifest["timings"] = timings
        write_outputs(cfg, run_dir, data, art, shared, rows, manifest)
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    args = _parser().parse_args(argv)
    if args.list:
        for line in study_lines(list_studies(), shutil.get_terminal_size((100, 24)).columns):
            print(line)
        return 0
    if not args.study:
        return _fail("name a study (see --list)")
    try:
        cfg = load_study(args.study, args.overrides)
    except ConfigError as e:
        return _fail_config(e)
    if args.resume and args.out is None:
        return _fail("--resume needs --out DIR (the run directory to continue)")
    if args.out is not None and (problem := uri_problem(args.out)) is not None:
        return _fail(problem)
    run_dir = Path(args.out) if args.out else REPO / "reports" / cfg.name / _run_id(cfg)
    if args.resume:
        from engine.rundir import study_mismatch

        if (problem := resume_problem(run_dir) or study_mismatch(run_dir, cfg)) is not None:
            return _fail(problem)
    if args.dry_run:
        try:
            print(dry_run_line(cfg, run_dir, args.address, args.resume))
        except ConfigError as e:
            return _fail_config(e)
        return 0
    for problem in (gpu_problem(cfg, args.address), address_problem(args.address)):
        if problem is not None:
            return _fail(problem)
    if (problem := preflight(run_dir, args.min_free_mb)) is not None:
        return _fail(problem)
    lock, problem = lock_run_dir(run_dir)
    if lock is None:
        return _fail(problem or "")
    from engine.data import DataError

    try:
        if not args.resume:
            from engine.rundir import record_study

            record_study(run_dir, cfg)
        out = run(
            cfg,
            run_dir,
            address=args.address,
            resume=args.resume,
            report=not args.no_report,
            verbose=args.verbose,
            argv=argv,
        )
    except (DataError, FileNotFoundError) as e:
        return _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except KeyboardInterrupt:  # Ctrl-C outside the sweep (which Tune stops cleanly itself)
        print(f"\n{_interrupted_line(run_dir, None, argv)}", file=sys.stderr)
        return INTERRUPTED
    finally:
        lock.release()
    report = out / "report.md"
    if report.exists():
        print(f"Report: {report}")
    print(f"Ray and Tune log: {out / 'driver.log'}")
    stopped = json.loads((out / "manifest.json").read_text()).get("interrupted")
    if stopped is not None:
        print(_interrupted_line(out, stopped, argv))
    print(f"Run directory: {out}")  # last: scripts and tests read it from the final line
    return INTERRUPTED if stopped is not None else 0


def _argv(argv: list[str] | None) -> list[str]:
    return sys.argv[1:] if argv is None else list(argv)


def resume_command(run_dir: Path, argv: list[str] | None) -> str:
    """The command that continues this run: the same study and overrides, ``--resume
    --out RUN_DIR``."""
    words = [w for w in _argv(argv) if w != "--resume"]
    if "--out" not in words and not any(w.startswith("--out=") for w in words):
        words += ["--out", str(run_dir)]
    return shlex.join(["python", "-m", "engine.sweep", *words, "--resume"])


def _interrupted_line(run_dir: Path, stopped: dict[str, int] | None, argv: list[str] | None) -> str:
    """What an interrupt left and how to go on: the ``--resume`` command once the sweep has
    started (its Tune state is in ``run_dir/tune``), else the same command again."""
    if stopped is None and not (run_dir / "tune").is_dir():
        again = shlex.join(["python", "-m", "engine.sweep", *_argv(argv)])
        return (
            "interrupted before the sweep started; nothing to resume. Run the same command "
            f"again (what was prepared is cached): {again}"
        )
    done = (
        ""
        if stopped is None
        else f"{stopped['finished']} of {stopped['planned']} trials finished; "
    )
    return f"interrupted: {done}continue with: {resume_command(run_dir, argv)}"


if __name__ == "__main__":
    sys.exit(main())
