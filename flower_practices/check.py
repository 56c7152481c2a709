"""``flower-practices check -A proj``: a static audit of a Celery app's configuration.

Reads the app's settings and task definitions (no broker connection, no events) and
reports what breaks the practices of the catalogue, with the same practice ids as the
runtime rules. Usable as a CI gate: the command exits 1 when anything is found.

Static checks (practice id: what is flagged):

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
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from .appinfo import AppInfo
from .brokers import is_database_backend, is_database_broker, scheme
from .catalogue import practice
from .config import Settings
from .findings import SEVERITY_ORDER


@dataclass(slots=True)
class StaticFinding:
    practice: str
    severity: str
    task: str | None
    message: str


def _app_findings(info: AppInfo) -> list[tuple[str, str | None, str]]:
    out: list[tuple[str, str | None, str]] = []
    if is_database_broker(info.broker_url):
        out.append(("database_broker", None,
                    f"broker transport '{scheme(info.broker_url)}' is a database: it is "
                    "polled, loads the database and cannot carry monitoring events"))
    if is_database_backend(info.result_backend):
        out.append(("result_backend_database", None,
                    f"result backend '{scheme(info.result_backend)}' writes every result "
                    "as a row in an SQL database"))
    tasks = info.tasks
    routed = {t.queue or info.default_queue for t in tasks.values()}
    if len(tasks) >= 2 and routed <= {info.default_queue}:
        out.append(("single_default_queue", None,
                    f"all {len(tasks)} tasks go to the default queue "
                    f"'{info.default_queue}' (no task_routes, no per-task queue)"))
    pickle = [s for s in ("task_serializer", "result_serializer")
              if getattr(info, s) == "pickle"]
    if "pickle" in info.accept_content or "application/x-python-serialize" in \
            info.accept_content:
        pickle.append("accept_content")
    if pickle:
        out.append(("orm_object_argument", None,
                    f"pickle is enabled ({', '.join(pickle)}): model instances can travel "
                    "as task arguments; use json and pass primary keys"))
    off = [setting for setting, on in (("task_send_sent_event", info.send_sent_event),
                                       ("worker_send_task_events", info.worker_send_task_events))
           if not on]
    if off:
        out.append(("events_disabled", None,
                    f"{' and '.join(off)} off: monitoring cannot see "
                    f"{'task-sent events' if off == ['task_send_sent_event'] else 'tasks'}"
                    " (workers may still enable events with -E)"))
    if info.result_backend and tasks and not any(t.ignore_result for t in tasks.values()):
        out.append(("unread_results", None,
                    f"a result backend is configured and all {len(tasks)} tasks store "
                    "their results: set ignore_result=True on tasks whose results "
                    "nobody reads (or task_ignore_result=True)"))
    return out


def _task_findings(info: AppInfo) -> list[tuple[str, str | None, str]]:
    out: list[tuple[str, str | None, str]] = []
    for name, task in sorted(info.tasks.items()):
        if not task.has_retry_policy:
            out.append(("retryless_failure", name,
                        "no retry policy (no autoretry_for, no self.retry() call): a "
                        "transient error fails the task for good"))
        elif task.retries_without_delay:
            out.append(("retry_storm", name,
                        "calls self.retry(countdown=0): retries hammer the failing "
                        "dependency; use a countdown with back-off (or retry_backoff)"))
        elif not task.retry_backoff and task.default_retry_delay is not None \
                and task.default_retry_delay <= 0:
            out.append(("retry_storm", name,
                        "retries with default_retry_delay=0 and no retry_backoff: "
                        "retries hammer the failing dependency"))
        if not task.has_time_limit:
            out.append(("missing_time_limit", name,
                        "no time_limit/soft_time_limit: a hung call holds a worker slot "
                        "forever"))
    return out


def audit(info: AppInfo, settings: Settings | None = None) -> list[StaticFinding]:
    """Static findings for ``info``, honouring ``enabled``/``severity`` per practice."""
    settings = settings or Settings()
    found: list[StaticFinding] = []
    for pid, task, message in _app_findings(info) + _task_findings(info):
        options = settings.practice_options(pid)
        if options.get("enabled", True) is False:
            continue
        severity = options.get("severity") or practice(pid).severity
        found.append(StaticFinding(pid, severity, task, message))
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
