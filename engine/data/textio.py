"""Byte-level helpers shared by the readers: tolerant gunzip and line splitting.

Both work on one file's bytes and never raise for bad input, so a truncated gzip or a
line of non-UTF-8 bytes costs one quarantined row instead of the whole file.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Line", "decompress", "has_bad_bytes", "iter_lines"]

GZIP_MAGIC = b"\x1f\x8b"
_SURROGATE = re.compile("[\udc80-\udcff]")


def decompress(data: bytes) -> tuple[bytes, str | None]:
    """Gunzip ``data`` if it is gzip (by magic bytes), else return it unchanged.

    Returns ``(bytes, problem)``: ``problem`` is ``"truncated_gzip"`` when the stream ends
    early and ``"corrupt_gzip"`` on a data error; the bytes are then what could be recovered.
    Multi-member gzip files are read whole.
    """
    if not data.startswith(GZIP_MAGIC):
        return data, None
    out: list[bytes] = []
    rest = data
    while rest:
        d = zlib.decompressobj(wbits=31)
        try:
            out.append(d.decompress(rest))
        except zlib.error:
            return b"".join(out), "corrupt_gzip"
        if not d.eof:
            return b"".join(out), "truncated_gzip"
        rest = d.unused_data
        if rest and not rest.startswith(GZIP_MAGIC):
            if rest.strip(b"\x00"):  # zero padding after the last member is harmless
                return b"".join(out), "corrupt_gzip"
            break
    return b"".join(out), None


def has_bad_bytes(text: str) -> bool:
    """True if ``text`` was decoded with ``surrogateescape`` from invalid UTF-8."""
    return _SURROGATE.search(text) is not None


@dataclass(frozen=True)
class Line:
    """One line of a text file: ``text`` is None when ``problem`` says why it is unusable."""

    number: int | None
    text: str | None
    problem: str | None
    raw: str


def iter_lines(data: bytes, *, encoding: str = "utf-8") -> Iterator[Line]:
    """Decompress ``data`` and yield its non-blank lines, 1-based, CR/LF stripped.

    A line that does not decode yields ``problem="non_utf8"`` (or ``"bad_encoding"`` for
    another encoding). If the stream was cut short, its last, unterminated line yields the
    gzip problem; if the cut fell on a line end, one extra ``Line(None, ...)`` says so.
    Blank lines are not records and are not yielded.
    """
    body, problem = decompress(data)
    pieces = body.split(b"\n")
    tail = pieces.pop()  # text after the last newline ("" for a well-terminated file)
    for number, piece in enumerate(pieces, start=1):
        if not piece.strip():
            continue
        yield _decode(number, piece.rstrip(b"\r"), encoding)
    if problem is not None:
        number = len(pieces) + 1 if tail.strip() else None
        yield Line(number, None, problem, tail.decode(encoding, errors="replace"))
    elif tail.strip():
        yield _decode(len(pieces) + 1, tail.rstrip(b"\r"), encoding)


def _decode(number: int, piece: bytes, encoding: str) -> Line:
    try:
        text = piece.decode(encoding)
    except UnicodeDecodeError:
        reason = "non_utf8" if encoding.replace("-", "").lower() == "utf8" else "bad_encoding"
        return Line(number, None, reason, piece.decode(encoding, errors="replace"))
    return Line(number, text, None, text)
