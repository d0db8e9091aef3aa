"""Regenerate the data fixtures (run from anywhere; writes next to this file).

Each file plants known bad rows; tests/engine/data/ (test_read.py, test_pipeline.py,
test_registry.py) assert the exact counts below.

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
amazon2023/Beauty.jsonl.gz — 20 records (2023 schema, ms timestamps, item = parent_asin):
  12 kept, 1 duplicate, 1 repeated_user_item (same parent_asin, other variant asin),
  1 empty_text, 5 invalid (rating_out_of_range, missing_field, malformed_json,
  invalid_timestamp, non_utf8). meta_Beauty.jsonl.gz — 6 records: 5 items, 1 missing_field.
amazon2014/reviews_Toys_5.json.gz — 15 records: 10 kept, 1 duplicate, 4 invalid
  (rating_out_of_range, missing_field, malformed_json, invalid_rating).
  meta_Toys.json.gz — 4 records as Python literals (the 2014 format): 3 items,
  1 malformed_json.
movielens1m/ratings.dat — 10 records (``::``): 8 kept, rating_out_of_range 1,
  malformed_line 1; movies.dat — 3 items, latin-1.
movielens25m/ratings.csv — header + 13 records: 10 kept (half stars from 0.5),
  rating_out_of_range 1, malformed_line 1, missing_field 1; movies.csv — header + 5 records:
  4 items (quoted titles with commas), 1 malformed_line.
table/reviews.csv — custom column names (reviewer, product, stars, body, headline, when):
  10 records: 8 kept, rating_out_of_range 1, malformed_csv 1.
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


def review2023(i: int, **over: object) -> str:
    obj: dict[str, object] = {
        "rating": float(1 + i % 5),
        "title": f"headline {i}",
        "text": f"beauty text {i}",
        "images": [],
        "asin": f"B{i:03d}",
        "parent_asin": f"PB{i % 6}",
        "user_id": f"AU{i % 4}",
        "timestamp": 1_600_000_000_000 + i * 3_600_000,
        "helpful_vote": i % 3,
        "verified_purchase": True,
    }
    obj.update(over)
    return json.dumps(obj)


def amazon2023() -> None:
    d = HERE / "amazon2023"
    d.mkdir(exist_ok=True)
    lines = [review2023(i).encode() for i in range(12)]
    lines.append(lines[0])  # duplicate (byte-identical)
    # repeated_user_item: AU0 reviews PB0 again through another variant, later
    lines.append(
        review2023(0, asin="B999", text="other colour", timestamp=1_700_000_000_000).encode()
    )
    lines.append(review2023(20, rating=0.0).encode())  # rating_out_of_range
    lines.append(review2023(21, user_id=None).encode())  # missing_field
    lines.append(b'{"rating": 4.0, "title": "cut')  # malformed_json
    lines.append(review2023(22, text="").encode())  # empty_text
    lines.append(review2023(23, timestamp="yesterday").encode())  # invalid_timestamp
    lines.append(b'{"rating": 4.0, "text": "\xff", "user_id": "AU9"}')
    write_gz(d / "Beauty.jsonl.gz", lines)
    meta = [
        json.dumps(
            {"main_category": "All Beauty", "title": f"Beauty product {k}", "parent_asin": f"PB{k}"}
        )
        for k in range(5)
    ]
    meta.insert(3, json.dumps({"main_category": "All Beauty", "title": "no id"}))  # missing_field
    write_gz(d / "meta_Beauty.jsonl.gz", [m.encode() for m in meta])


def review2014(i: int, **over: object) -> str:
    obj: dict[str, object] = {
        "reviewerID": f"R{i}",
        "asin": f"A{i % 3}",
        "reviewerName": f"Name {i}",
        "helpful": [i % 2, 2],
        "reviewText": f"toy review {i}",
        "overall": float(1 + i % 5),
        "summary": f"summary {i}",
        "unixReviewTime": 1_300_000_000 + i * 86_400,
        "reviewTime": "03 13, 2011",
    }
    obj.update(over)
    return json.dumps(obj)


def amazon2014() -> None:
    d = HERE / "amazon2014"
    d.mkdir(exist_ok=True)
    lines = [review2014(i).encode() for i in range(10)]
    lines.append(lines[4])  # duplicate
    lines.append(review2014(10, overall=7.0).encode())  # rating_out_of_range
    lines.append(review2014(11, asin=None).encode())  # missing_field
    lines.append(b'{"reviewerID": "R12", "asin": ')  # malformed_json
    lines.append(review2014(13, overall="x").encode())  # invalid_rating
    write_gz(d / "reviews_Toys_5.json.gz", lines)
    meta = [
        "{'asin': 'A0', 'title': \"Kid's Toy 0\", 'salesRank': {'Toys & Games': 1}}",
        "{'asin': 'A1', 'title': 'Toy 1', 'categories': [['Toys & Games', 'Puzzles']]}",
        "{'asin': 'A9', 'title': ",  # malformed_json (neither JSON nor a Python literal)
        '{"asin": "A2", "title": "Toy 2"}',  # JSON is accepted too
    ]
    write_gz(d / "meta_Toys.json.gz", [m.encode() for m in meta])


def movielens1m() -> None:
    d = HERE / "movielens1m"
    d.mkdir(exist_ok=True)
    rows = [f"{1 + i % 3}::{10 + i % 3 + i // 3}::{1 + i % 5}::{978300000 + i}" for i in range(8)]
    rows.insert(3, "2::11::6::978300100")  # rating_out_of_range
    rows.insert(6, "2::x")  # malformed_line
    (d / "ratings.dat").write_text("\n".join(rows) + "\n")
    movies = [
        "10::Toy Story (1995)::Animation",
        "11::Heat (1995)::Action",
        "12::Am\u00e9lie (2001)::Comedy",
    ]
    (d / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))


def movielens25m() -> None:
    d = HERE / "movielens25m"
    d.mkdir(exist_ok=True)
    ratings = ["userId,movieId,rating,timestamp"]
    ratings += [
        f"{1 + i % 3},{1 + i % 4 + 4 * (i // 6)},{0.5 + (i % 10) * 0.5},{1100000000 + i}"
        for i in range(10)
    ]
    ratings.insert(4, "2,3,5.5,1100000100")  # rating_out_of_range
    ratings.insert(7, "1,2,3")  # malformed_line
    ratings.append(",5,4.0,1100000200")  # missing_field
    (d / "ratings.csv").write_text("\n".join(ratings) + "\n")
    movies = [
        "movieId,title,genres",
        "1,Toy Story (1995),Adventure|Animation",
        '2,"American President, The (1995)",Comedy|Drama|Romance',
        "3,Heat (1995),Action|Crime|Thriller",
        "lonely field",  # malformed_line
        '5,"Father of the Bride Part II, The (1995)",Comedy',
    ]
    (d / "movies.csv").write_text("\n".join(movies) + "\n")


def table() -> None:
    d = HERE / "table"
    d.mkdir(exist_ok=True)
    rows = ["reviewer,product,stars,body,headline,when"]
    rows += [
        f"V{i % 4},P{i},{1 + i % 5},body of review {i},head {i},{1_200_000_000 + i}"
        for i in range(8)
    ]
    rows.insert(3, "V9,P9,6,too many stars,h,1200000000")  # rating_out_of_range
    rows.append("V9,P10,4,short row")  # malformed_csv
    (d / "reviews.csv").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    womens()
    amazon()
    movielens()
    amazon2023()
    amazon2014()
    movielens1m()
    movielens25m()
    table()
