"""One report document, two renderings: Markdown (plots as PNG files beside it) and self-contained HTML.

A report is a list of :class:`Block` (heading, paragraph, table, plot); :func:`write_document` renders
it both ways, atomically. Split from :mod:`harness.report` so that *what* a report says (there) and
*how* it is rendered (here) each have one home.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness import plots
from harness.results import atomic_write_bytes, atomic_write_text


def _cell(v: object) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_cell(r[c]) for c in cols) + " |")
    return "\n".join(lines)


# --- one document, two renderings -------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """``kind``: h1 | h2 | p | ul | table | plot; ``body``: text, list of items, DataFrame or Plot."""

    kind: str
    body: object


_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"\*(.+?)\*")


def _inline_html(text: str) -> str:
    """The little Markdown the reports use (bold, italics, code) as HTML, everything else escaped."""
    out = html.escape(text, quote=False)
    code_spans: list[str] = []

    def keep(m: re.Match[str]) -> str:  # code first, so `*` inside code stays literal
        code_spans.append(f"<code>{m.group(1)}</code>")
        return f"\x00{len(code_spans) - 1}\x00"

    out = re.sub(r"`(.+?)`", keep, out)
    out = _ITALIC.sub(r"<em>\1</em>", _BOLD.sub(r"<strong>\1</strong>", out))
    return re.sub(r"\x00(\d+)\x00", lambda m: code_spans[int(m.group(1))], out)


def _render_md(blocks: list[Block], plots_dir: str) -> str:
    lines: list[str] = []
    for b in blocks:
        if b.kind == "h1":
            lines += [f"# {b.body}", ""]
        elif b.kind == "h2":
            lines += [f"## {b.body}", ""]
        elif b.kind == "h3":
            lines += [f"### {b.body}", ""]
        elif b.kind == "p":
            lines += [str(b.body), ""]
        elif b.kind == "ul":
            lines += [f"- {item}" for item in b.body] + [""]  # type: ignore[attr-defined]
        elif b.kind == "table":
            lines += [md_table(b.body), ""]  # type: ignore[arg-type]
        elif b.kind == "plot":
            p: plots.Plot = b.body  # type: ignore[assignment]
            lines += [f"![{p.title}]({plots_dir}/{p.name}.png)", "", f"*{p.caption}*", ""]
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.3em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1.1em}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px;font-size:.92em}
.tablewrap{overflow-x:auto}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;white-space:nowrap}
th{background:#f0f3f7;position:sticky;top:0;white-space:normal;vertical-align:bottom}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.notrun td{color:#888;background:#fafafa;font-style:italic}
tr.emulated td{background:#fff8e6}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.88em;color:#444;max-width:70em}
""".strip()


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return s.strip() != ""


def _html_table(df: pd.DataFrame) -> str:
    # a long column name may break after its underscores (lat_small_<wbr>median_ms): headers, not figures, set widths
    head = "".join(f"<th>{html.escape(str(c)).replace('_', '_<wbr>')}</th>" for c in df.columns)
    body = []
    for _, r in df.iterrows():
        kind = plots.measured_kind(r["measured_as"]) if "measured_as" in df.columns else ""
        cls = {"not run": ' class="notrun"', "emulated": ' class="emulated"'}.get(kind, "")
        cells = "".join(f'<td{" class=num" if _is_number(str(r[c])) else ""}>{html.escape(str(r[c]))}</td>'
                        for c in df.columns)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _render_html(blocks: list[Block], title: str) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             '<link rel="icon" href="data:,">',  # no favicon request: the page loads nothing from outside
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f"<{b.kind}>{_inline_html(str(b.body))}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{_inline_html(str(b.body))}</p>")
        elif b.kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline_html(str(i))}</li>" for i in b.body) + "</ul>")  # type: ignore[attr-defined]
        elif b.kind == "table":
            parts.append(_html_table(b.body))  # type: ignore[arg-type]
        elif b.kind == "plot":
            p: plots.Plot = b.body  # type: ignore[assignment]
            data = base64.b64encode(p.png).decode("ascii")
            parts.append(f'<figure id="{html.escape(p.name)}"><img src="data:image/png;base64,{data}" '
                         f'alt="{html.escape(p.title)}"><figcaption>{_inline_html(p.caption)}</figcaption></figure>')
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_document(blocks: list[Block], md_path: Path, plots_dir_name: str, title: str) -> None:
    """Plots first, then HTML, then Markdown, each atomically: a reader never sees a page missing its images.

    Stale PNGs from an earlier report (a variant since removed) are deleted from the plots folder,
    which holds nothing but this report's figures.
    """
    plot_dir = md_path.parent / plots_dir_name
    figs = [b.body for b in blocks if b.kind == "plot"]
    for p in figs:
        atomic_write_bytes(plot_dir / f"{p.name}.png", p.png)  # type: ignore[attr-defined]
    if plot_dir.is_dir():
        keep = {f"{p.name}.png" for p in figs}  # type: ignore[attr-defined]
        for old in plot_dir.glob("*.png"):
            if old.name not in keep:
                old.unlink()
    atomic_write_text(md_path.with_suffix(".html"), _render_html(blocks, title))
    atomic_write_text(md_path, _render_md(blocks, plots_dir_name))
