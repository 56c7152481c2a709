"""The JSON documents both front ends serve: ``/api/practices`` and ``/healthz``.

Built here once from the engine's read API, so the standalone exporter
(:mod:`flower_practices.exporter.handlers`) and the Flower plugin
(:mod:`flower_practices.flower_plugin.web`) answer the same thing; they only add HTTP
(status code, headers, authentication). The engine itself knows no HTTP and no JSON.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .catalogue import PRACTICES
from .events.status import CONNECTED, health_answer

if TYPE_CHECKING:
    from .engine import Engine


def health(engine: Engine) -> tuple[bool, str]:
    """Healthy while the event stream is connected; else why not."""
    status = engine.stream_status
    if status.connected:
        return True, CONNECTED
    return False, status.reason()


def health_document(engine: Engine) -> tuple[int, dict[str, Any]]:
    """``/healthz``: (HTTP status, body): 200 while the event stream is connected, else
    503; ``since`` is when it connected or disconnected (None: unknown)."""
    ok, reason = health(engine)
    status = engine.stream_status
    return health_answer(ok, reason, status.connected_since if ok else status.disconnected_since)


def practices_document(engine: Engine, *, stream: bool = True) -> dict[str, Any]:
    """``/api/practices``: active findings (most severe first), the practices with their
    effective severity and runbook, each practice's coverage and (``stream``) the event
    stream's state."""
    base = engine.settings.runbook_base_url
    with engine.lock:
        findings = [f.as_dict() for f in engine.findings.sorted()]
        coverage = engine.coverage()
    practices = [{
        "id": p.id, "title": p.title, "severity": engine.severity(p.id),
        "description": p.description,
        "runbook": p.runbook_url(base) if base else p.runbook_url(),
    } for p in PRACTICES]
    doc: dict[str, Any] = {"findings": findings, "practices": practices, "coverage": coverage}
    if stream:
        doc["stream"] = stream_document(engine)
    return doc


def stream_document(engine: Engine) -> dict[str, Any]:
    """The event stream's state, as ``/api/practices`` reports it."""
    ok, reason = health(engine)
    status = engine.stream_status
    return {
        "connected": ok, "reason": reason if ok else (status.last_error or reason),
        "events": status.events,
        "last_event_at": status.last_event_at or None,
        "connected_since": (status.connected_since or None) if ok else None,
        "disconnected_since": None if ok else (status.disconnected_since or None),
    }
