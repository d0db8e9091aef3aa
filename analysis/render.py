"""A report as a list of blocks, rendered to Markdown and to self-contained HTML.

Building the content once and rendering it twice keeps ``report.md`` and ``report.html`` in
step. Tables are pre-formatted strings (see :func:`format_table`); images are relative paths
in Markdown and inlined data URIs in HTML (one self-contained file), whose tables sort by a
click on a header.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import pandas as pd

__all__ = [
    "Block",
    "Code",
    "Heading",
    "Image",
    "Para",
    "Table",
    "column_table",
    "format_table",
    "format_value",
    "interval_cells",
    "short_name",
    "to_html",
    "to_markdown",
]

_DECIMALS = {
    "accuracy": 4,
    "macro_f1": 4,
    "gflops": 4,
    "latency_ms_p50": 2,
    "latency_ms_p95": 2,
    "wall_s": 1,
    "score": 4,
    "ci_low": 4,
    "ci_high": 4,
}


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str  # may hold `inline code`


@dataclass(frozen=True)
class Table:
    df: pd.DataFrame  # already formatted to strings


@dataclass(frozen=True)
class Image:
    src: str
    alt: str


@dataclass(frozen=True)
class Code:
    text: str


Block = Heading | Para | Table | Image | Code


def format_value(value: object, column: str = "") -> str:
    """Readable cell text: NaN/None → "—", ints with thousands separators, floats by column."""
    if value is None or (
        not isinstance(value, str) and pd.api.types.is_scalar(value) and pd.isna(value)
    ):
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Integral):
        return f"{int(value):,}"
    if isinstance(value, Real):
        v = float(value)
        base = re.sub(r"_(mean|std|ci_low|ci_high)$", "", column)
        if base in _DECIMALS:
            return f"{v:.{_DECIMALS[base]}f}"
        if v.is_integer() and abs(v) >= 1:
            return f"{int(v):,}"
        return f"{v:.4g}"
    return str(value)


def format_table(df: pd.DataFrame, rename: dict[str, str] | None = None) -> pd.DataFrame:
    """All cells to strings via :func:`format_value`; columns renamed for display."""
    out = pd.DataFrame(
        {c: [format_value(v, str(c)) for v in df[c].tolist()] for c in df.columns},
        index=range(len(df)),
    )
    return out.rename(columns=rename or {})


def short_name(col: str) -> str:
    """A config column as a table header: the dotted path without ``pipeline.``."""
    return col.removeprefix("pipeline.")


def column_table(df: pd.DataFrame, cols: list[str]) -> Table:
    """The columns of ``df`` named in ``cols`` that it has (in that order, once each),
    formatted, with short config-column headers."""
    cols = [c for c in dict.fromkeys(cols) if c in df]
    return Table(format_table(df[cols], {c: short_name(c) for c in cols}))


def interval_cells(low: pd.Series, high: pd.Series) -> list[str]:
    """``[low, high]`` cells formatted like the table's numbers; ``—`` where undefined."""
    lo = [format_value(v, str(low.name)) for v in low.tolist()]
    hi = [format_value(v, str(high.name)) for v in high.tolist()]
    return ["—" if a == "—" else f"[{a}, {b}]" for a, b in zip(lo, hi, strict=True)]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    parts: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            parts.append(b.text)
        elif isinstance(b, Image):
            parts.append(f"![{b.alt}]({b.src})")
        elif isinstance(b, Code):
            parts.append(f"```\n{b.text.rstrip()}\n```")
        elif isinstance(b, Table):
            cols = [str(c) for c in b.df.columns]
            lines = [
                "| " + " | ".join(_md_cell(c) for c in cols) + " |",
                "|" + "|".join("---" for _ in cols) + "|",
            ]
            for row in b.df.itertuples(index=False):
                lines.append("| " + " | ".join(_md_cell(v) for v in row) + " |")
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222;
       padding: 0 1em; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; cursor: pointer; }
th[aria-sort=ascending]::after { content: " ▲"; } th[aria-sort=descending]::after { content: " ▼"; } td:first-child, th:first-child { text-align: left; }
code, pre { background: #f6f6f6; } pre { padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
img { max-width: 100%; }
.wide { overflow-x: auto; max-width: 100%; }
"""


# Click a table header to sort by that column (again: the other way). Cells compare as
# numbers when both read as one ("1,234", "0.5", "[0.1, 0.2]" by its first number, "—" last),
# else as text; the sort is stable. Inline, so the file needs no network.
_SORT_JS = r"""
(function () {
  function key(text) {
    var t = text.trim();
    if (t === "" || t === "\u2014") return null;
    var m = t.replace(/,(?=\d{3}\b)/g, "").match(/^\[?\s*(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)/i);
    return m && (t[0] === "[" || /^-?[\d.,e+-]+$/i.test(t)) ? parseFloat(m[1]) : t;
  }
  function compare(a, b) {
    if (a === null || b === null) return a === b ? 0 : a === null ? 1 : -1;
    if (typeof a === "number" && typeof b === "number") return a - b;
    return String(a).localeCompare(String(b));
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (th, col) {
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows).map(function (r, i) {
          return { row: r, i: i, k: key(r.cells[col].textContent) };
        });
        rows.sort(function (x, y) {
          var nx = x.k === null, ny = y.k === null;
          if (nx || ny) return nx === ny ? x.i - y.i : nx ? 1 : -1;  // blanks last both ways
          var c = compare(x.k, y.k);
          return (asc ? c : -c) || x.i - y.i;
        });
        rows.forEach(function (r) { body.appendChild(r.row); });
      });
    });
  });
})();
"""

_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _image_src(src: str, base: Path | None) -> str:
    """``src`` as a ``data:`` URI read from ``base / src`` (the report is one file); the plain
    relative path when there is no ``base`` or the file is missing."""
    if base is None:
        return src
    path = base / src
    if not path.is_file():
        return src
    mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def to_html(blocks: list[Block], title: str, base: Path | None = None) -> str:
    """One HTML file: images read from ``base`` (the run directory) and inlined as data URIs,
    tables sortable by a click on a header (inline script), no external resource."""
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Image):
            src = html.escape(_image_src(b.src, base))
            body.append(f'<p><img src="{src}" alt="{html.escape(b.alt)}"></p>')
        elif isinstance(b, Code):
            body.append(f"<pre>{html.escape(b.text.rstrip())}</pre>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in b.df.columns)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                for row in b.df.itertuples(index=False)
            )
            body.append(  # a table wider than the page scrolls in its own box, not the page
                f'<div class="wide"><table class="sortable"><thead><tr>{head}</tr></thead>'
                f"<tbody>{rows}</tbody></table></div>"
            )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{_SORT_JS}</script>\n</body></html>\n"
    )
