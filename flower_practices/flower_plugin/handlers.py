"""Flower pages and API of the plugin, behind Flower's own auth (basic auth and OAuth).

``/practices`` (HTML, Flower's look), ``/practices/runbooks/<id>`` (the runbook shipped in
the package, rendered as simple HTML), ``/api/practices`` (JSON, same contract as the
standalone exporter; Flower's API policy applies) and ``/healthz`` (event stream health,
unauthenticated like Flower's ``/healthcheck``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flower.api import BaseApiHandler
from flower.views import BaseHandler
from tornado import web
from tornado.escape import xhtml_escape
from tornado.web import url

from ..catalogue import BY_ID
from ..events.sanitize import json_bytes
from ..findings import SEVERITY_ORDER
from .runbook import render_markdown

RUNBOOK_DIR = Path(__file__).resolve().parent.parent / "runbooks"


def _plugin(handler: web.RequestHandler) -> Any:
    return handler.application.flower_practices


class PracticesView(BaseHandler):
    @web.authenticated
    def get(self) -> None:
        plugin = _plugin(self)
        payload = plugin.engine.practices_payload()
        practices = {p["id"]: p for p in payload["practices"]}
        findings = sorted(payload["findings"],
                          key=lambda f: (SEVERITY_ORDER.get(f["severity"], 9), f["practice"]))
        groups: list[tuple[str, list[dict]]] = []
        for severity in ("critical", "warning", "info"):
            rows = [f for f in findings if f["severity"] == severity]
            if rows:
                groups.append((severity, rows))
        status = plugin.engine.stream_status
        ok, reason = plugin.engine.health()
        self.render("practices.html", active_tab="practices", groups=groups,
                    findings=findings, practices=practices, coverage=payload["coverage"],
                    stream_ok=ok, stream_reason=reason, events_seen=status.events,
                    last_event_at=status.last_event_at, now=time.time(),
                    runbook_available=runbook_available, evidence_items=evidence_items,
                    fp_count=fp_count, fp_value=fp_value, fp_ago=fp_ago)


class RunbookView(BaseHandler):
    @web.authenticated
    def get(self, practice_id: str) -> None:
        path = RUNBOOK_DIR / f"{practice_id}.md"
        if practice_id not in BY_ID or not path.is_file():
            raise web.HTTPError(404, f"no runbook for {practice_id!r}")
        body = render_markdown(path.read_text(encoding="utf-8", errors="replace"))
        self.render("practices_runbook.html", active_tab="practices",
                    practice=BY_ID[practice_id], body=body)


class PracticesApi(BaseApiHandler):
    @web.authenticated
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(json_bytes(_plugin(self).engine.practices_payload()))


class PracticesHealth(BaseHandler):
    def get(self) -> None:
        ok, reason = _plugin(self).engine.health()
        self.set_status(200 if ok else 503)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({"status": "ok" if ok else "unavailable", "reason": reason}))


def fp_count(value: Any) -> str:
    return f"{int(value or 0):,}"


def fp_value(value: Any) -> str:
    """Escaped text, or an em dash for a label that does not apply (HTML)."""
    return "&mdash;" if value in (None, "") else xhtml_escape(str(value))


def fp_ago(ts: float, now: float | None = None) -> str:
    seconds = max(0.0, (time.time() if now is None else now) - float(ts or 0))
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def runbook_available(practice_id: str) -> bool:
    return (RUNBOOK_DIR / f"{practice_id}.md").is_file()


def _short(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.3f}".rstrip("0")
    if isinstance(value, (list, tuple)):
        return ", ".join(_short(v) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items()) or "none"
    return str(value)


def evidence_items(evidence: dict[str, Any]) -> list[tuple[str, str]]:
    """Evidence as (label, text) pairs for the page (names, counts and percentiles only)."""
    return [(str(k).replace("_", " "), _short(v)) for k, v in sorted(evidence.items())]


def handlers() -> list[Any]:
    return [
        url(r"/practices", PracticesView, name="practices"),
        url(r"/practices/runbooks/([a-z_]+)", RunbookView, name="practices_runbook"),
        url(r"/api/practices", PracticesApi, name="practices_api"),
        url(r"/healthz", PracticesHealth, name="practices_healthz"),
    ]
