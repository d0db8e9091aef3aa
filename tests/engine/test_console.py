"""engine.console.route_output in a child process (it moves file descriptor 2, which pytest's
own capture also uses): what reaches the terminal and what the log file keeps."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import REPO

CHILD = textwrap.dedent(
    """
    import logging, os, sys, warnings
    from pathlib import Path
    from engine.console import route_output

    foreign = logging.getLogger("ray.fake")  # like Ray's: its own stderr handler
    foreign.addHandler(logging.StreamHandler(sys.stderr))
    foreign.propagate = False
    with route_output(Path(sys.argv[1]), verbose=sys.argv[2] == "1"):
        print("phase line", flush=True)
        os.write(2, b"raw line on fd 2\\n")
        foreign.warning("ray says hello")
        logging.getLogger("engine.child").info("engine info")
        logging.getLogger("engine.child").warning("engine warning")
        warnings.warn_explicit("engine deprecation", UserWarning, sys.argv[3], 1)
        warnings.warn_explicit("library deprecation", UserWarning, "/elsewhere/lib.py", 1)
    sys.stderr.write("after the block\\n")
    """
)


def _run(tmp_path: Path, verbose: bool) -> tuple[subprocess.CompletedProcess[str], str]:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(run_dir), "1" if verbose else "0",
         str(REPO / "engine" / "prepare.py")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc, (run_dir / "driver.log").read_text()


def test_quiet_keeps_library_output_in_the_file(tmp_path: Path) -> None:
    proc, log = _run(tmp_path, verbose=False)
    assert proc.stdout == "phase line\n"
    # the terminal: the engine's warnings (logging and warnings.warn), and stderr after the block
    assert "engine warning" in proc.stderr and "engine deprecation" in proc.stderr
    assert proc.stderr.rstrip().endswith("after the block")
    for hidden in ("raw line on fd 2", "ray says hello", "engine info", "library deprecation"):
        assert hidden not in proc.stderr, hidden
    # the file: everything that went to stderr in the block, nothing after it
    for kept in ("raw line on fd 2", "ray says hello", "engine info", "engine warning",
                 "engine deprecation", "library deprecation"):  # fmt: skip
        assert kept in log, kept
    assert "after the block" not in log and "phase line" not in log


def test_verbose_follows_the_file_live(tmp_path: Path) -> None:
    proc, log = _run(tmp_path, verbose=True)
    assert proc.stdout == "phase line\n"
    for line in ("raw line on fd 2", "ray says hello", "engine info", "library deprecation"):
        assert line in log and line in proc.stderr, line
    assert proc.stderr.count("engine warning") == 1  # once: from the file, not twice
