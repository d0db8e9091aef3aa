"""Where a run's output goes: progress on the terminal, Ray's and Tune's logs in a file.

:func:`route_output` is a context manager for the driver's whole Ray session. Inside it the
process's standard error (file descriptor 2, so Python's ``logging`` handlers, Ray Data's and
Tune's messages, Ray's C++ core-worker lines and Python warnings alike) is appended to
``RUN_DIR/driver.log``; standard output stays on the terminal for the engine's phase lines
(:mod:`engine.progress`). Nothing is dropped: what leaves the terminal is in the file.

What still reaches the terminal: ``logging.WARNING`` and above from the ``engine`` loggers
and :mod:`warnings` raised from the engine's own code (both also in the file). With
``verbose`` the file is followed live on the terminal's standard error as well.

Ray workers' own output (trials, the teacher's fine-tuning task) is not sent to the driver
(``ray.init(log_to_driver=False)``, as before): it stays in Ray's session logs, whose folder
Ray names in ``driver.log`` ("Full logs are in …"); a failed trial's error is recorded in
``results.parquet`` and the report, and counted on the sweep's progress line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

__all__ = ["LOG_NAME", "quiet_ray_data", "route_output"]

LOG_NAME = "driver.log"
_ENGINE_CODE = tuple(
    str(Path(__file__).resolve().parent.parent / d) for d in ("engine", "analysis", "sweepcore")
)


def quiet_ray_data() -> None:
    """No Ray Data progress bars or plan banners (the engine shows its own phase lines);
    Ray Data's execution logs still go to the log file."""
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    try:
        from ray.data import DataContext
    except ImportError:  # pragma: no cover - ray[data] is a dependency
        return
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


class _Follow(threading.Thread):
    """Copies what is appended to ``path`` (from ``start``) to ``out`` until stopped."""

    def __init__(self, path: Path, start: int, out: TextIO) -> None:
        super().__init__(name="driver-log-follow", daemon=True)
        self.path, self.pos, self.out = path, start, out
        self.stop = threading.Event()

    def _copy(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self.pos)
            chunk = f.read()
        if chunk:
            self.pos += len(chunk)
            self.out.write(chunk.decode(errors="replace"))
            self.out.flush()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self._copy()
        self._copy()


@contextlib.contextmanager
def route_output(run_dir: Path, *, verbose: bool = False) -> Iterator[Path]:
    """Send standard error to ``run_dir/driver.log`` for the block (module docstring);
    yields the log's path. Everything is restored on exit, also on an exception."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOG_NAME
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fd = os.dup(2)
    terminal = os.fdopen(os.dup(saved_fd), "w", buffering=1, errors="replace")
    with path.open("ab") as f:
        start = f.tell()
        os.dup2(f.fileno(), 2)
    follow = _Follow(path, start, terminal) if verbose else None
    if follow is not None:
        follow.start()

    engine_log = logging.getLogger("engine")
    to_file = logging.StreamHandler(sys.stderr)  # fd 2: the log file
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s -- %(message)s"))
    to_terminal = logging.StreamHandler(terminal)
    to_terminal.setLevel(logging.WARNING)
    to_terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handlers = [to_file] if verbose else [to_file, to_terminal]  # verbose: the file is followed
    old_level, old_propagate = engine_log.level, engine_log.propagate
    engine_log.setLevel(logging.INFO)
    engine_log.propagate = False
    for h in handlers:
        engine_log.addHandler(h)

    old_showwarning = warnings.showwarning

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = warnings.formatwarning(message, category, filename, lineno, line)
        sys.stderr.write(text)  # the log file
        if not verbose and str(Path(filename).resolve()).startswith(_ENGINE_CODE):
            terminal.write(text)

    warnings.showwarning = showwarning
    try:
        yield path
    finally:
        warnings.showwarning = old_showwarning
        for h in handlers:
            engine_log.removeHandler(h)
        engine_log.setLevel(old_level)
        engine_log.propagate = old_propagate
        sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        if follow is not None:
            follow.stop.set()
            follow.join(timeout=5)
        terminal.close()
