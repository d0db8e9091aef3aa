"""Byte-level helpers every reader shares (engine/data/textio.py): gzip members and
truncation, numbered lines with bad bytes flagged, CSV records with their line numbers."""

from __future__ import annotations

import gzip

from engine.data import iter_lines
from engine.data.textio import csv_records, decompress

# --- byte-level helpers (no Ray) ---------------------------------------------------------


def test_decompress_reads_multi_member_and_flags_truncation() -> None:
    two = gzip.compress(b"a\nb\n") + gzip.compress(b"c\n")
    assert decompress(two) == (b"a\nb\nc\n", None)
    body = "".join(f'{{"n": {i}}}\n' for i in range(2000)).encode()
    cut = gzip.compress(body)[:-200]
    data, problem = decompress(cut)
    assert problem == "truncated_gzip" and body.startswith(data) and 0 < len(data) < len(body)
    assert decompress(b"plain\n") == (b"plain\n", None)


def test_iter_lines_numbers_skips_blanks_and_flags_bad_bytes() -> None:
    lines = list(iter_lines(b"one\r\n\n  \nt\xffwo\nthree"))
    assert [(ln.number, ln.text, ln.problem) for ln in lines] == [
        (1, "one", None),
        (4, None, "non_utf8"),
        (5, "three", None),
    ]


def test_csv_records_lines_widths_bad_bytes_and_stops() -> None:
    data = b'\xef\xbb\xbfa, b ,c\n1,"two\nlines",3\n\n4,5\n6,\xff,7\n8;9;10\n'
    rows = list(csv_records(data))
    assert [(r.line, r.fields, r.problem, r.ends) for r in rows] == [
        (1, ["a", "b", "c"], None, False),  # BOM dropped, names stripped
        (2, ["1", "two\nlines", "3"], None, False),  # a record spanning two lines
        (5, None, "malformed_csv", False),  # 2 fields for 3 columns; the blank line 4 skipped
        (6, None, "non_utf8", False),
        (7, None, "malformed_csv", False),  # wrong delimiter: one field
    ]
    assert list(csv_records(b"a;b\n1;2\n", ";"))[1].fields == ["1", "2"]
    assert list(csv_records(b"")) == []
    big = b'a,b\n1,2\n3,"' + b"x" * 200_000 + b'"\n5,6\n'
    # a field over the csv module's default 128 KiB limit is read, and so is what follows
    # (it used to stop the file there, the later records uncounted; issue 17)
    long, after = list(csv_records(big))[-2:]
    assert (long.line, len(long.fields or [""] * 2)) == (3, 2) and len(long.fields[1]) == 200_000
    assert (after.line, after.fields, after.problem) == (4, ["5", "6"], None)
    body = b"a,b\n" + b"".join(b"%d,%d\n" % (i, i) for i in range(3000))
    cut = list(csv_records(gzip.compress(body)[:-100]))
    assert (cut[-1].line, cut[-1].problem, cut[-1].ends) == (None, "truncated_gzip", True)
    # every record before the cut one is whole (the cut one may be short of a field)
    assert all(r.problem is None for r in cut[:-2]) and 1 < len(cut) - 1 < 3001
