"""Regenerate the data fixtures (run from anywhere; writes next to this file).

Each file plants known bad rows; tests/test_data.py asserts the exact counts below.

womens/reviews.csv — 52 records: 40 valid, 2 duplicates, 2 empty texts, 8 invalid
  (rating_out_of_range 2, invalid_rating 1, missing_field 2, malformed_csv 1, non_utf8 1,
  rating_not_integer 1).
amazon/Toys_5.json.gz — 31 records: 20 kept, 2 duplicate, 2 repeated_user_item,
  1 empty_text, 6 invalid (malformed_json 2, non_utf8 1, missing_field 1,
  rating_out_of_range 1, invalid_rating 1); one blank line (not a record).
amazon/Games_5.json.gz — 11 records: 10 kept, 1 repeated_user_item (pair also in Toys,
  later timestamp).
amazon/meta_Toys.json.gz — 5 records: 4 items, 1 malformed_json.
movielens/u.data — 12 records: 10 valid, rating_out_of_range 1, malformed_line 1;
  movielens/u.item — 5 items, latin-1.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = [
    "", "Clothing ID", "Age", "Title", "Review Text", "Rating", "Recommended IND",
    "Positive Feedback Count", "Division Name", "Department Name", "Class Name",
]  # fmt: skip


def womens() -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    rows: list[list[str]] = []

    def add(item: str, title: str, text: str, rating: str, age: str = "30") -> None:
        rows.append([str(len(rows)), item, age, title, text, rating, "1", "0", "G", "D", "C"])

    for i in range(40):
        text = f"Review number {i}: fabric {['soft', 'scratchy', 'ok'][i % 3]}"
        if i == 3:
            text = "First line of the review.\nSecond line, after a newline."
        add(str(100 + i % 7), f"Title {i}" if i % 4 else "", text, str(1 + i % 5))
    add("101", "Title 1", "Review number 1: fabric scratchy", "2", age="55")  # duplicate of 1
    add("102", "Title 2", "  Review number 2:   fabric ok ", "3")  # duplicate of 2 (spaces)
    add("103", "Only a title", "", "4")  # empty_text
    add("104", "", "   ", "5")  # empty_text
    add("105", "", "zero stars", "0")  # rating_out_of_range
    add("105", "", "nine stars", "9")  # rating_out_of_range
    add("105", "", "word rating", "five")  # invalid_rating
    add("", "", "no item id", "3")  # missing_field
    add("106", "", "no rating", "")  # missing_field
    add("106", "", "half star", "4.5")  # rating_not_integer
    w.writerows(rows)
    body = buf.getvalue()
    data = body.encode("utf-8")
    data += b"50,107,40,Short row,too few fields\n"  # malformed_csv
    data += b'51,107,41,Bad bytes,"caf\xe9 latin-1 byte",4,1,0,G,D,C\n'  # non_utf8
    (HERE / "womens").mkdir(exist_ok=True)
    (HERE / "womens" / "reviews.csv").write_bytes(data)


def review(user: str, item: str, rating: float, ts: int, text: str | None, **extra) -> str:
    obj = {"overall": rating, "reviewerID": user, "asin": item, "summary": f"s {text}"}
    if text is not None:
        obj["reviewText"] = text
    obj["unixReviewTime"] = ts
    obj.update(extra)
    return json.dumps(obj)


def write_gz(path: Path, lines: list[bytes]) -> None:
    with gzip.GzipFile(path, "wb", mtime=0) as fh:
        fh.write(b"\n".join(lines) + b"\n")


def amazon() -> None:
    d = HERE / "amazon"
    d.mkdir(exist_ok=True)
    toys = [
        review(f"U{i}", f"T{i % 5}", float(1 + i % 5), 1_500_000_000 + i, f"toy text {i}")
        for i in range(20)
    ]
    lines = [t.encode() for t in toys]
    lines.append(toys[3].encode())  # duplicate: byte-identical copy of line 4
    lines.append(review("U4", "T4", 5.0, 1_500_000_004, "toy text 4", vote="3").encode())  # dup
    lines.append(review("U5", "T0", 2.0, 1_600_000_000, "later opinion").encode())  # repeat
    # repeats the pair of line 7 (U6, T1, 2 stars) with an EARLIER time: this one is kept
    lines.append(review("U6", "T1", 5.0, 1_400_000_000, "earliest opinion").encode())
    lines.append(review("U20", "T2", 4.0, 1_500_000_100, None).encode())  # empty_text
    lines.append(b'{"reviewerID": "U21", "asin": "T3", ')  # malformed_json
    lines.append(b"")  # blank line: not a record
    lines.append(b"[1, 2, 3]")  # malformed_json (not an object)
    lines.append(b'{"reviewerID": "U22", "asin": "T3", "overall": 4.0, "reviewText": "\xff\xfe"}')
    lines.append(review("U23", "", 4.0, 1_500_000_000, "no asin").encode())  # missing_field
    lines.append(review("U24", "T3", 6.0, 1_500_000_000, "six stars").encode())  # out of range
    lines.append(review("U25", "T3", "abc", 1_500_000_000, "text rating").encode())  # invalid
    write_gz(d / "Toys_5.json.gz", lines)
    games = [
        review(f"G{i}", f"M{i % 3}", float(1 + (i + 2) % 5), 1_510_000_000 + i, f"game {i}")
        for i in range(10)
    ]
    games.append(review("U7", "T2", 1.0, 1_700_000_000, "same pair, other file"))  # repeat
    write_gz(d / "Games_5.json.gz", [g.encode() for g in games])
    meta = [json.dumps({"asin": f"T{i}", "title": f"  Toy number {i} "}) for i in range(4)]
    meta.insert(2, '{"asin": "T9", "title": ')  # malformed_json
    write_gz(d / "meta_Toys.json.gz", [m.encode() for m in meta])


def movielens() -> None:
    d = HERE / "movielens"
    d.mkdir(exist_ok=True)
    rows = [f"{1 + i % 4}\t{1 + i % 5}\t{1 + i % 5}\t{880000000 + i}" for i in range(10)]
    rows.insert(4, "3\t2\t7\t880000100")  # rating_out_of_range
    rows.insert(8, "3\t2\t880000100")  # malformed_line
    (d / "u.data").write_text("\n".join(rows) + "\n")
    items = [f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|0|1" for i in range(1, 5)]
    items.append("5|Caf\u00e9 Society (1999)|01-Jan-1999||http://x|1|0")
    (d / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))


if __name__ == "__main__":
    womens()
    amazon()
    movielens()
