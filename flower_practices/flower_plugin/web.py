"""The plugin's pages, API and templates, behind Flower's own auth (basic auth and OAuth).

* ``/practices``: the Practices page (Flower's look). It ships the current findings as JSON
  inside the page and its script (``static/practices.js`` inlined) renders, filters, groups
  and refreshes them from ``/api/practices`` every few seconds; every string from the wire
  is set with ``textContent``.
* ``/practices/runbooks/<id>``: the runbook shipped in the package as simple HTML, with the
  ``<queue>``, ``<task>`` and ``<worker>`` placeholders filled in from the query string.
* ``/api/practices``: the contract document plus ``stream`` (connected, disconnected since).
  It follows the page's auth (the browser's session or basic auth), not Flower's API policy:
  the page reads it, so whoever may see the page may read its data.
* ``/healthz``: event stream health, unauthenticated like Flower's ``/healthcheck``.

:class:`PluginLoader` serves Flower's templates, ours (which extend Flower's ``base.html``),
and Flower's ``navbar.html`` with one extra "Practices" tab on apps that have the plugin.
"""

from __future__ import annotations

import json
import logging
import os
import re
from html import escape
from pathlib import Path
from typing import Any

from flower.views import BaseHandler
from tornado import web
from tornado.template import Loader, Template
from tornado.web import RequestHandler, url

from .. import api
from ..catalogue import BY_ID
from ..events.sanitize import json_bytes

log = logging.getLogger("flower_practices.flower_plugin")

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
RUNBOOK_DIR = Path(__file__).resolve().parent.parent / "runbooks"
APP_ATTR = "flower_practices"

#: seconds between the page's refreshes of /api/practices
REFRESH_SECONDS = 5
#: runbook placeholders filled in from the query string, and the longest value accepted
PLACEHOLDERS = ("queue", "task", "worker")
MAX_PLACEHOLDER_CHARS = 200


def _plugin(handler: web.RequestHandler) -> Any:
    return getattr(handler.application, APP_ATTR)


def _prefix(handler: web.RequestHandler) -> str:
    prefix = (handler.application.options.url_prefix or "").strip("/")
    return f"/{prefix}" if prefix else ""


def practices_document(plugin: Any) -> dict[str, Any]:
    """``/api/practices``: the document both front ends serve (:mod:`flower_practices.api`)."""
    return api.practices_document(plugin.engine)


def script_json(value: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>``, no ``<!--``)."""
    return (json_bytes(value).decode().replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))


class PracticesView(BaseHandler):
    @web.authenticated
    def get(self) -> None:
        prefix = _prefix(self)
        config = {
            "api": f"{prefix}/api/practices", "refresh_seconds": REFRESH_SECONDS,
            "links": {"worker": f"{prefix}/worker/", "task": f"{prefix}/task/",
                      "tasks": f"{prefix}/tasks", "broker": f"{prefix}/broker",
                      "runbook": f"{prefix}/practices/runbooks/"},
            "runbooks": sorted(p for p in BY_ID if runbook_available(p)),
        }
        with open(os.path.join(HERE, "practices.js"), encoding="utf-8") as f:
            script = f.read()
        self.render("practices.html", active_tab="practices",
                    initial=script_json(practices_document(_plugin(self))),
                    config=script_json(config), script=script)


class RunbookView(BaseHandler):
    @web.authenticated
    def get(self, practice_id: str) -> None:
        path = RUNBOOK_DIR / f"{practice_id}.md"
        if practice_id not in BY_ID or not path.is_file():
            raise web.HTTPError(404, f"no runbook for {practice_id!r}")
        body = render_markdown(path.read_text(encoding="utf-8", errors="replace"))
        # tornado's own get_argument: Flower's escapes, and fill_placeholders escapes once
        values = {name: RequestHandler.get_argument(self, name, "")[:MAX_PLACEHOLDER_CHARS]
                  for name in PLACEHOLDERS}
        self.render("practices_runbook.html", active_tab="practices",
                    practice=BY_ID[practice_id], body=fill_placeholders(body, values),
                    values={k: v for k, v in values.items() if v})


class PracticesApi(BaseHandler):
    """The page's data, under the page's auth (see the module docstring)."""

    def get(self) -> None:
        if self.get_current_user() is None:  # OAuth without a session: no login redirect
            raise web.HTTPError(401, "log in to Flower first")
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(_plugin(self).api_body())  # built at most once per cache interval


class PracticesHealth(BaseHandler):
    def get(self) -> None:
        code, doc = api.health_document(_plugin(self).engine)
        self.set_status(code)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(doc))


def runbook_available(practice_id: str) -> bool:
    return (RUNBOOK_DIR / f"{practice_id}.md").is_file()


def fill_placeholders(html: str, values: dict[str, str]) -> str:
    """Rendered runbook HTML with ``<queue>`` etc. (escaped by then) replaced by ``values``."""
    for name, value in values.items():
        if value:
            html = html.replace(f"&lt;{name}&gt;", escape(value))
    return html


def handlers() -> list[Any]:
    """The plugin's routes (rewritten under ``--url_prefix`` by the plugin)."""
    return [
        url(r"/practices", PracticesView, name="practices"),
        url(r"/practices/runbooks/([a-z_]+)", RunbookView, name="practices_runbook"),
        url(r"/api/practices", PracticesApi, name="practices_api"),
        url(r"/healthz", PracticesHealth, name="practices_healthz"),
    ]


# -- templates -------------------------------------------------------------------------------
NAV_ITEM = """
        {% if getattr(handler.application, "flower_practices", None) is not None %}
        <li class="nav-item">
          <a class="nav-link{% if active_tab == 'practices' %} active{% end %}"
            href="{{ reverse_url('practices') }}"
            {% if active_tab == 'practices' %}aria-current="page"{% end %}>Practices</a>
        </li>
        {% end %}
"""
NAV_ANCHOR = "</ul>"


def inject_nav_item(navbar: str) -> str:
    """Flower's navbar with the Practices tab appended to the first (primary) list."""
    index = navbar.find(NAV_ANCHOR)
    if index < 0 or "reverse_url('practices')" in navbar:
        return navbar
    return navbar[:index] + NAV_ITEM.lstrip("\n") + "      " + navbar[index:]


class PluginLoader(Loader):
    """Flower's template directory plus ours; patches ``navbar.html``."""

    def _create_template(self, name: str) -> Template:
        ours = os.path.join(HERE, name)
        if os.path.isfile(ours):
            with open(ours, "rb") as f:
                return Template(f.read(), name=name, loader=self)
        if name == "navbar.html":
            with open(os.path.join(self.root, name), encoding="utf-8") as f:
                text = f.read()
            patched = inject_nav_item(text)
            if patched == text:
                log.warning("Flower's navbar.html has an unexpected layout; "
                            "the Practices tab is not shown (the page is at /practices)")
            return Template(patched, name=name, loader=self)
        return super()._create_template(name)


def install_loader(settings: dict) -> PluginLoader:
    """Use :class:`PluginLoader` for Flower's template path (also in tornado's loader cache)."""
    path = settings["template_path"]
    loader = settings.get("template_loader")
    if not isinstance(loader, PluginLoader):
        loader = PluginLoader(path)
        settings["template_loader"] = loader
    cache = getattr(RequestHandler, "_template_loaders", None)
    lock = getattr(RequestHandler, "_template_loader_lock", None)
    if isinstance(cache, dict) and lock is not None:
        with lock:
            cache[path] = loader
    return loader


# -- runbooks: a deliberately small Markdown-to-HTML renderer --------------------------------
# Headings, fenced code, bullet/numbered lists, paragraphs, inline code, bold and links;
# everything is HTML-escaped first, so a runbook cannot inject markup.
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
