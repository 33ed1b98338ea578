"""Small HTML builders for the report: escaped text, tables, figures, sections.

Plain strings and :mod:`string.Template`; no template engine, no JavaScript, no network
resource, so the page opens offline in any browser.
"""

from __future__ import annotations

import html
import math
from string import Template

import numpy as np
import pandas as pd

__all__ = ["esc", "fmt_value", "table_html", "figure_html", "absent_html", "PAGE"]


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def fmt_value(v) -> str:
    """Display form of one table cell: 4 significant digits for floats, '–' for missing."""
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "–"
        if math.isinf(f):
            return "∞" if f > 0 else "−∞"
        if f != 0 and (abs(f) >= 1e6 or abs(f) < 1e-3):
            return f"{f:.3e}"
        return f"{f:.4g}"
    if v is pd.NA or v is pd.NaT:
        return "–"
    return str(v)


def table_html(df: pd.DataFrame, *, table_id: str, caption: str = "", collapse_over: int = 40,
               index: bool = False) -> str:
    """An HTML table of ``df`` (every row and column), numbers to 4 significant digits.

    Tables longer than ``collapse_over`` rows are wrapped in a closed ``<details>``.
    """
    frame = df.reset_index() if index else df
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False, name=None):
        cells = []
        for v in row:
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            text = fmt_value(v)
            cls = "num" if num else ("long" if len(text) > 60 else "")
            cells.append(f'<td class="{cls}">{esc(text)}</td>' if cls else f"<td>{esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    table = (f'<div class="tablewrap"><table id="{esc(table_id)}" class="data">{cap}'
             f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
    if len(frame) > collapse_over:
        return f"<details><summary>show all {len(frame)} rows</summary>{table}</details>"
    return table


def figure_html(src: str, caption: str, *, alt: str | None = None) -> str:
    return (f'<figure><a href="{esc(src)}"><img src="{esc(src)}" alt="{esc(alt or caption)}">'
            f"</a><figcaption>{esc(caption)}</figcaption></figure>")


def absent_html(text: str) -> str:
    """A plain statement that a section's inputs are absent."""
    return f'<p class="absent">{esc(text)}</p>'


PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>$title</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1a1a1a; background: #fff; line-height: 1.45; }
header { background: #0b3d5c; color: #fff; padding: 14px 28px; }
header h1 { margin: 0; font-size: 1.5em; }
header p { margin: 4px 0 0; opacity: 0.9; }
nav { position: sticky; top: 0; background: #f3f5f7; border-bottom: 1px solid #d0d7de;
      padding: 6px 28px; z-index: 2; }
nav a { margin-right: 16px; color: #0b3d5c; text-decoration: none; font-weight: 600; }
main { padding: 0 28px 40px; max-width: 1500px; }
section { border-bottom: 1px solid #e4e7eb; padding-bottom: 12px; }
h2 { margin-top: 28px; color: #0b3d5c; }
h3 { margin-bottom: 6px; }
.banner { background: #E69F00; color: #000; padding: 10px 28px; font-weight: 700;
          font-size: 1.05em; }
.absent { background: #f6f8fa; border-left: 4px solid #999; padding: 8px 12px; color: #444; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e7eb; }
figcaption { font-size: 0.9em; color: #444; max-width: 1100px; }
.tablewrap { overflow-x: auto; max-width: 100%; }
table.data { border-collapse: collapse; font-size: 0.85em; margin: 8px 0 4px; }
table.data th, table.data td { border: 1px solid #d0d7de; padding: 3px 7px;
                               white-space: nowrap; }
table.data td.long { white-space: normal; min-width: 28em; font-size: 0.9em; color: #333; }
table.data th { background: #f3f5f7; position: sticky; top: 0; }
table.data td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.data caption { caption-side: top; text-align: left; font-weight: 600; padding: 4px 0; }
.download { font-size: 0.9em; }
.grid { display: flex; flex-wrap: wrap; gap: 18px; }
.kv { border-collapse: collapse; font-size: 0.9em; }
.kv th { text-align: left; padding: 2px 12px 2px 0; color: #444; font-weight: 600; }
.kv td { padding: 2px 12px 2px 0; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; font-size: 0.85em; }
footer { color: #666; font-size: 0.85em; padding: 12px 28px; }
</style>
</head>
<body>
$banner
<header><h1>$title</h1><p>$subtitle</p></header>
<nav>$nav</nav>
<main>
$sections
</main>
<footer>$footer</footer>
</body>
</html>
""")
