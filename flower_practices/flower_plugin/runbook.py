"""A deliberately small Markdown-to-HTML renderer for the shipped runbooks (offline pages).

Handles headings, fenced code, bullet/numbered lists, paragraphs, inline code, bold and
links; everything is HTML-escaped first, so a runbook cannot inject markup.
"""

from __future__ import annotations

import re
from html import escape

_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_LIST = re.compile(r"^\s*(?:[-*]|\d+\.)\s+(.*)$")


def _inline(text: str) -> str:
    out = escape(text, quote=False)
    out = _CODE.sub(r"<code>\1</code>", out)
    out = _BOLD.sub(r"<strong>\1</strong>", out)

    def link(m: re.Match) -> str:
        href = m.group(2)
        if not re.match(r"^(https?://|#|\.{0,2}/|[\w.-]+$)", href):
            return m.group(1)
        return f'<a href="{escape(href)}">{m.group(1)}</a>'

    return _LINK.sub(link, out)


def render_markdown(text: str) -> str:
    """HTML for ``text`` (a subset of Markdown)."""
    html: list[str] = []
    para: list[str] = []
    items: list[str] = []
    code: list[str] | None = None

    def flush() -> None:
        if para:
            html.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()
        if items:
            html.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in text.splitlines():
        if code is not None:
            if line.strip().startswith("```"):
                html.append("<pre><code>" + escape("\n".join(code)) + "</code></pre>")
                code = None
            else:
                code.append(line)
            continue
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            code = []
        elif not stripped:
            flush()
        elif stripped.startswith("#"):
            flush()
            level = min(len(stripped) - len(stripped.lstrip("#")), 6)
            html.append(f"<h{level + 1}>{_inline(stripped[level:].strip())}</h{level + 1}>")
        elif (m := _LIST.match(line)) is not None:
            if para:
                flush()
            items.append(m.group(1))
        elif items and line.startswith(("  ", "\t")):
            items[-1] += " " + stripped
        else:
            if items:
                flush()
            para.append(stripped)
    if code is not None:
        html.append("<pre><code>" + escape("\n".join(code)) + "</code></pre>")
    flush()
    return "\n".join(html)
