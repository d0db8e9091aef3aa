"""Byte-level helpers shared by the readers: tolerant gunzip and line splitting.

Both work on one file's bytes and never raise for bad input, so a truncated gzip or a
line of non-UTF-8 bytes costs one quarantined row instead of the whole file.
"""

from __future__ import annotations

import csv
import io
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "CsvRow",
    "Line",
    "allow_fields_of",
    "csv_records",
    "decompress",
    "has_bad_bytes",
    "iter_lines",
]

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


@dataclass(frozen=True)
class CsvRow:
    """One CSV record (or the header), or why reading stopped.

    ``fields`` is None when ``problem`` is set; ``raw`` is the record re-joined with the
    separator (or the parser's message). ``line`` is the physical line the record starts on
    (fields may span lines), None for a problem of the whole stream (a cut-short gzip).
    """

    line: int | None
    fields: list[str] | None
    problem: str | None
    raw: str
    ends: bool = False  # reading stopped here (a syntax error or a cut-short stream)


def allow_fields_of(text: str) -> None:
    """Let the ``csv`` module parse a field as long as ``text``: its default 128 KiB limit
    would end a file at one long review (and drop every record after it uncounted). The
    text is in memory already, so no field can cost more than it; the limit is raised,
    never lowered (it is process-wide)."""
    if len(text) >= csv.field_size_limit():
        csv.field_size_limit(min(len(text) + 1, sys.maxsize))


def csv_records(data: bytes, sep: str = ",") -> Iterator[CsvRow]:
    """Decompress and parse delimited ``data``: the header first, then every non-blank record.

    Bytes are decoded with ``surrogateescape`` (one bad byte spoils only its record) and a
    UTF-8 BOM is dropped. The header's names are stripped; a header that does not parse is
    one ``malformed_csv`` row and the end. A record whose field count differs from the
    header's is ``malformed_csv``, one with undecodable bytes ``non_utf8``. A syntax error
    (e.g. an unclosed quote) ends the file there, since the parser cannot find the next
    record boundary: one ``malformed_csv`` row with the parser's message. A cut-short or
    corrupt gzip stream ends with one ``CsvRow(None, None, problem, "", ends=True)``.
    """
    body, problem = decompress(data)
    text = body.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    allow_fields_of(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        return
    except csv.Error as err:
        yield CsvRow(1, None, "malformed_csv", str(err))
        return
    yield CsvRow(1, header, None, sep.join(header))
    start = reader.line_num + 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            yield CsvRow(start, None, "malformed_csv", str(err), ends=True)
            break
        if fields:  # csv yields [] for a blank line: not a record
            raw = sep.join(fields)
            if len(fields) != len(header):
                yield CsvRow(start, None, "malformed_csv", raw)
            elif any(has_bad_bytes(f) for f in fields):
                yield CsvRow(start, None, "non_utf8", raw.encode("utf-8", "replace").decode())
            else:
                yield CsvRow(start, fields, None, raw)
        start = reader.line_num + 1
    if problem is not None:
        yield CsvRow(None, None, problem, "", ends=True)
