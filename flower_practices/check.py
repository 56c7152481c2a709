"""``flower-practices check -A proj``: a static audit of a Celery app's configuration.

Reads the app's settings and task definitions (no broker connection, no events) and
reports what breaks the practices of the catalogue, with the same practice ids as the
runtime rules. Usable as a CI gate: the command exits 1 when anything is found.

Each practice's static check lives with its runtime rule
(:meth:`~flower_practices.rules.base.Rule.static_check` in ``rules/<id>.py``); this
module runs them all and renders the result. Static checks (practice id: what is
flagged):

- ``database_broker``: the broker transport is a database.
- ``result_backend_database``: the result backend is an SQL database.
- ``single_default_queue``: two or more tasks and every one goes to the default queue
  (no ``task_routes``, no per-task ``queue``).
- ``retryless_failure``: a task with no retry policy (no ``autoretry_for``, no
  ``self.retry()`` call in its body).
- ``retry_storm``: a task that retries with no back-off and a zero ``default_retry_delay``,
  or whose body calls ``self.retry(..., countdown=0)`` (read from its source).
- ``missing_time_limit``: a task with no ``time_limit``/``soft_time_limit`` (task or
  ``task_time_limit``/``task_soft_time_limit``).
- ``unread_results``: a result backend is configured and no task ignores its result
  (neither ``ignore_result=True`` on any task nor ``task_ignore_result``).
- ``orm_object_argument``: the pickle serializer is used or accepted, which lets model
  instances travel as task arguments.
- ``events_disabled``: ``task_send_sent_event`` or ``worker_send_task_events`` is off.
- ``worker_process_killed``: ``task_acks_late`` (app-wide or per task) without
  ``task_reject_on_worker_lost``: a killed pool process acknowledges the task anyway.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from .appinfo import AppInfo
from .catalogue import practice
from .config import Settings
from .findings import SEVERITY_ORDER
from .rules import ALL_RULES


@dataclass(slots=True)
class StaticFinding:
    practice: str
    severity: str
    task: str | None
    message: str


def audit(info: AppInfo, settings: Settings | None = None) -> list[StaticFinding]:
    """Static findings for ``info``, honouring ``enabled``/``severity`` per practice."""
    settings = settings or Settings()
    found: list[StaticFinding] = []
    for rule in ALL_RULES:
        options = settings.practice_options(rule.id)
        if options.get("enabled", True) is False:
            continue
        severity = options.get("severity") or practice(rule.id).severity
        for task, message in rule.static_check(info):
            found.append(StaticFinding(rule.id, severity, task, message))
    found.sort(key=lambda f: (SEVERITY_ORDER.get(f.severity, 9), f.practice, f.task or ""))
    return found


def render_text(info: AppInfo, found: list[StaticFinding]) -> str:
    lines = [f"flower-practices check: app '{info.main}', {len(info.tasks)} task(s): "
             f"{len(found)} finding(s)"]
    for f in found:
        lines.append(f"{f.severity:<8} {f.practice:<24} {f.task or '-'}: {f.message}")
    if not found:
        lines.append("no practice violations found in the configuration")
    return "\n".join(lines)


def render_json(info: AppInfo, found: list[StaticFinding]) -> str:
    doc: dict[str, Any] = {
        "app": info.main, "tasks": len(info.tasks), "count": len(found),
        "findings": [asdict(f) for f in found],
    }
    return json.dumps(doc, indent=2)
