"""The run report's layout: sections of paragraphs, tables and links, as Markdown and as HTML.

Kept apart from ``mlcwb.run_report``, which decides what the report says, so that the wording
of a finding and the markup it is printed in change independently.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import pandas as pd

from mlcwb.tables import to_markdown


@dataclass
class Section:
    """One headed part of the report: paragraphs first, then captioned tables, then links."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)


def render_markdown(title: str, sections: list[Section]) -> str:
    """``report.md``: tables through ``tables.to_markdown``, so they read like every other
    table mlcwb prints."""
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for p in s.paragraphs:
            lines += [p, ""]
        for caption, table in s.tables:
            lines += [to_markdown(table, digits=None, caption=caption)]
        for label, href in s.links:
            lines += [f"- [{label}]({href})"]
        if s.links:
            lines.append("")
    return "\n".join(lines)


def render_html(title: str, sections: list[Section]) -> str:
    """``report.html``: one self-contained page (inline style, no scripts), readable offline."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:70em;margin:auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += [f"<p>{html.escape(p).replace('**', '')}</p>" for p in s.paragraphs]
        for caption, table in s.tables:
            parts.append(f"<h4>{html.escape(caption)}</h4>{table.to_html()}")
        if s.links:
            parts.append("<ul>" + "".join(f"<li><a href='{html.escape(h)}'>{html.escape(l)}</a></li>"
                                          for l, h in s.links) + "</ul>")
    return "\n".join(parts)
