"""The Amazon readers (engine/data/amazon.py) in plain Python: 2023 fields (parent ASIN,
milliseconds), 2014 metadata as Python literals.

Fixture contents and their planted rows are listed in tests/assets/data/make_fixtures.py.
"""

from __future__ import annotations

from tests.engine.data.conftest import plain_rows


def test_amazon_2023_fields_item_is_parent_asin_and_ms_become_seconds() -> None:
    rows, titles = plain_rows("amazon-2023", "amazon2023")
    first = rows[0]
    assert (first["user_id"], first["item_id"], first["rating"]) == ("AU0", "PB0", 1.0)
    assert first["timestamp"] == 1_600_000_000  # 1_600_000_000_000 ms
    assert (first["title"], first["text"]) == ("headline 0", "beauty text 0")
    assert rows[5]["timestamp"] == 1_600_000_000 + 5 * 3600
    assert titles == {f"PB{k}": f"Beauty product {k}" for k in range(5)}
    assert first["item_title"] == "Beauty product 0" and rows[5]["item_title"] == ""  # PB5


def test_amazon_2014_meta_python_literals_and_review_fields() -> None:
    rows, titles = plain_rows("amazon-2014", "amazon2014")
    assert titles == {"A0": "Kid's Toy 0", "A1": "Toy 1", "A2": "Toy 2"}
    r = rows[3]
    assert (r["user_id"], r["item_id"], r["rating"], r["timestamp"]) == (
        "R3",
        "A0",
        4.0,
        1_300_000_000 + 3 * 86_400,
    )
    assert (r["title"], r["text"], r["item_title"]) == ("summary 3", "toy review 3", "Kid's Toy 0")
