"""A tiny document model (headings, paragraphs, lists, tables, images) rendered to Markdown and to one
self-contained HTML page (images embedded as base64), so both reports come from the same content."""

from __future__ import annotations

import base64
import dataclasses
import html
from pathlib import Path


@dataclasses.dataclass
class Heading:
    text: str
    level: int = 2


@dataclasses.dataclass
class Paragraph:
    text: str


@dataclasses.dataclass
class Bullets:
    items: list[str]


@dataclasses.dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclasses.dataclass
class Image:
    path: Path  # a PNG inside the report folder
    caption: str


Block = Heading | Paragraph | Bullets | Table | Image


def to_markdown(blocks: list[Block], base: Path) -> str:
    """Markdown with images referenced relative to `base` (the report's folder)."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            cells = [block.header, ["---"] * len(block.header), *block.rows]
            out.append("\n".join("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells))
        elif isinstance(block, Image):
            out.append(f"![{block.caption}]({block.path.relative_to(base).as_posix()})")
    return "\n\n".join(out) + "\n"


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:0.9em;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:0.9em}code{background:#f3f3f3}"""


def _inline(text: str) -> str:
    """Escape, then render `code` and **bold** spans (the only inline Markdown the report uses)."""
    parts = html.escape(text).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    bold = text.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(bold))


def to_html(blocks: list[Block], title: str) -> str:
    """One HTML page with inline CSS and base64 PNGs: it opens anywhere, alone."""
    out = [(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>")]
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            out.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in block.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Image):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            out.append(f"<figure><img alt='{html.escape(block.caption)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{_inline(block.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)
