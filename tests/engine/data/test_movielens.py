"""The MovieLens reader (engine/data/movielens.py): the CSV layout, half stars, quoted and
latin-1 titles.
"""

from __future__ import annotations

from tests.engine.data.conftest import plain_rows


def test_movielens_csv_layout_half_stars_and_quoted_titles() -> None:
    rows, titles = plain_rows("movielens", "movielens25m")
    assert titles["2"] == "American President, The (1995)"
    assert titles["5"] == "Father of the Bride Part II, The (1995)"
    valid = [r for r in rows if not r["reason"]]
    assert [r["rating"] for r in valid] == [0.5 * k for k in range(1, 11)]
    assert valid[1]["item_title"] == "American President, The (1995)"
    _, titles_1m = plain_rows("movielens", "movielens1m")
    assert titles_1m["12"] == "Amélie (2001)"  # latin-1 movies.dat
