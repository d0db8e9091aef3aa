"""``report.html`` in a real browser (headless Chromium through Playwright): one self-contained
file that loads with no console error, shows every image, fetches nothing and sorts its tables.

Needs Debian's ``chromium`` (``.ci/run`` installs it when it can) and the ``playwright`` package
(dev extras; it drives the system browser, no browser download). Without either the test
skips and says which is missing.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from analysis.report import write_report
from tests.conftest import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FIXTURE = REPO / "tests" / "assets" / "runs" / "smoke-rec"


def _key(text: str) -> tuple[int, float | str]:
    """A report cell's sort key by its meaning, written independently of the page's script:
    "—" (no value) after everything, numbers (thousands separators allowed, an interval
    "[a, b]" by a) before text."""
    t = text.strip()
    if t in ("", "—"):
        return (2, 0.0)
    m = re.fullmatch(r"\[?\s*(-?[\d,]*\.?\d+(?:e[-+]?\d+)?)(?:,\s.*\])?", t, flags=re.I)
    if m:
        return (0, float(m.group(1).replace(",", "")))
    return (1, t)


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("browser") / "run"
    shutil.copytree(FIXTURE, run_dir)
    write_report(run_dir)
    return run_dir / "report.html"


def test_report_html_names_no_outside_file(report_html: Path) -> None:
    """Every ``src``/``href`` in the file is inline (``data:``) or an in-page anchor."""
    text = report_html.read_text()
    refs = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert refs, "the report has no image: the browser checks below would prove nothing"
    assert all(r.startswith(("data:", "#")) for r in refs), [r[:80] for r in refs]


def test_report_in_headless_chromium(report_html: Path, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium when root + apt)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')"
    )
    errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report_html.as_uri(), wait_until="load")

            images = page.evaluate(
                "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
            )
            assert len(images) >= 1
            assert all(done and width > 0 for _, done, width in images), images

            # the results table: click "params" (numbers with thousands separators) and
            # compare with a brute-force sort of the cells read before the click
            table = page.locator("table", has=page.locator("th", has_text="trial_id")).first
            headers = table.locator("thead th").all_text_contents()
            col = headers.index("params")
            rows_before = [
                tuple(r.locator("td").all_text_contents()) for r in table.locator("tbody tr").all()
            ]
            assert len({r[col] for r in rows_before}) >= 2, "a column of one value sorts trivially"
            table.locator("thead th").nth(col).click()
            rows_up = [
                tuple(r.locator("td").all_text_contents()) for r in table.locator("tbody tr").all()
            ]
            assert [r[col] for r in rows_up] == [
                r[col] for r in sorted(rows_before, key=lambda r: _key(r[col]))
            ]
            assert sorted(rows_up) == sorted(rows_before)  # whole rows moved, none lost
            table.locator("thead th").nth(col).click()
            rows_down = [
                tuple(r.locator("td").all_text_contents()) for r in table.locator("tbody tr").all()
            ]
            values = [r[col] for r in rows_before if _key(r[col])[0] != 2]
            blanks = [r[col] for r in rows_before if _key(r[col])[0] == 2]
            assert [r[col] for r in rows_down] == sorted(values, key=_key, reverse=True) + blanks

            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    assert errors == []
    outside = [u for u in requests if not u.startswith(("file:", "data:"))]
    assert outside == [], outside
    assert requests[0] == report_html.as_uri()


def test_the_answer_fits_a_1400_pixel_window(report_html: Path, tmp_path: Path) -> None:
    """At 1400 × 900 the page never scrolls sideways (a wide table scrolls in its own box),
    the Answer opens with the Pareto figure, and its table of students lies within the
    window; the screenshot of the first screen, read back, is the window's size."""
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium when root + apt)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')"
    )
    import matplotlib.image as mpimg

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(report_html.as_uri(), wait_until="load")
            assert page.evaluate("document.documentElement.scrollWidth") <= 1400
            # the Answer: from its heading to the next h2
            answer = page.evaluate(
                """() => {
                  const h = [...document.querySelectorAll('h2')].find(e => e.textContent === 'Answer');
                  const out = [];
                  for (let e = h.nextElementSibling; e && e.tagName !== 'H2'; e = e.nextElementSibling) {
                    const r = e.getBoundingClientRect();
                    const t = e.querySelector('table');
                    out.push([e.tagName, !!e.querySelector('img'), r.right,
                              t ? t.getBoundingClientRect().right : null]);
                  }
                  return out;
                }"""
            )
            kinds = ["img" if img else ("table" if right else tag) for tag, img, _, right in answer]
            assert "img" in kinds and "table" in kinds, answer
            assert kinds.index("img") < kinds.index("table"), kinds  # the figure leads
            tables = [right for *_, right in answer if right is not None]
            assert all(right <= 1400 for right in tables), answer
            shot = tmp_path / "first-screen.png"
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    height, width = mpimg.imread(shot).shape[:2]
    assert (width, height) == (1400, 900)
