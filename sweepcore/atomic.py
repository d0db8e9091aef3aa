"""Write a file so that no reader ever sees half of it.

The content goes to a temporary name in the same directory (``.<name>.<pid>.<random>.tmp``,
so no ``*.parquet``/``*.png`` glob picks it up), is flushed to disk (``fsync``), and is renamed
onto the final name with ``os.replace`` — atomic on POSIX within one filesystem. A process
killed while writing leaves the final path as it was (absent, or its previous complete
content) and at most a stray temporary file. Used for every file the engine and the analysis
write into a run directory, and for the teacher cache::

    with atomic_path(run_dir / "results.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    write_atomic(run_dir / "manifest.json", json.dumps(manifest))

The temporary name ends in ``.tmp``: writers that pick a format from the suffix need it
given (``fig.savefig(tmp, format="png")``, ``np.save`` on an open file).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TMP_SUFFIX", "atomic_path", "write_atomic"]

TMP_SUFFIX = ".tmp"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for any writer to create; on a clean exit it
    is flushed to disk and renamed onto ``path``, on an exception removed (``path`` is left as
    it was). The parent directory is created if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable (not on every platform)
        _fsync(path.parent)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return path
