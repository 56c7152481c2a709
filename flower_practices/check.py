"""``flower-practices check -A proj``: a static audit of a Celery app's configuration.

Reads the app's settings and task definitions (no broker connection, no events) and
reports what breaks the practices of the catalogue, with the same practice ids as the
runtime rules. Usable as a CI gate (README, "Static audit for CI"): exit status 0 when
nothing at or above ``--fail-on`` (default ``info``: anything) is found, 1 when something
is, 2 on a usage or configuration error. A task matching its practice's ``ignore_tasks``
(``[practices.<id>]``, see :mod:`~flower_practices.ignores`) is not reported.

Each finding carries the file and line where its task is defined (:func:`task_location`,
from the task's run function: the first line of its definition, decorators included), or
for app-wide findings the file the app was loaded from; the text output is one
compiler-style line per finding, ``path:line: severity practice task: message``.

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
  or whose body calls ``self.retry(..., countdown=0)`` (read from its source), or that
  retries without limit (``max_retries=None`` with ``autoretry_for`` or a ``self.retry()``
  call setting no ``max_retries``), or whose automatic retries' back-off is capped at
  ``retry_backoff_max=0``.
- ``missing_time_limit``: a task with no ``time_limit``/``soft_time_limit`` (task or
  ``task_time_limit``/``task_soft_time_limit``).
- ``unread_results``: a result backend is configured and no task ignores its result
  (neither ``ignore_result=True`` on any task nor ``task_ignore_result``).
- ``orm_object_argument``: the pickle serializer is used or accepted, which lets model
  instances travel as task arguments.
- ``events_disabled``: ``task_send_sent_event`` or ``worker_send_task_events`` is off.
- ``worker_process_killed``: ``task_acks_late`` (app-wide or per task) without
  ``task_reject_on_worker_lost`` (nor ``retry_on_worker_lost``): a killed pool process
  acknowledges the task anyway.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from .appinfo import AppInfo
from .catalogue import SEVERITIES, practice
from .config import Settings
from .ignores import task_ignore
from .rules import ALL_RULES

#: ``--fail-on`` levels: a severity (fail on it and anything more severe), or never
FAIL_ON_LEVELS = (*SEVERITIES, "none")
#: the default ``--fail-on``: any finding fails the check (the behaviour before the option)
DEFAULT_FAIL_ON = SEVERITIES[-1]
#: exit statuses of ``flower-practices check``
EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2

Location = tuple[str, int | None]


@dataclass(slots=True)
class StaticFinding:
    practice: str
    severity: str
    task: str | None
    message: str
    #: where the task is defined (app-wide findings: the app's module), relative to the
    #: working directory when under it; None when unknown
    file: str | None = None
    line: int | None = None


@dataclass(slots=True)
class Locations:
    """Where the audited app's tasks (name -> (file, line)) and the app are defined."""

    tasks: dict[str, Location] = field(default_factory=dict)
    app: Location | None = None


def _display_path(path: str) -> str:
    """``path`` relative to the working directory when under it, else absolute."""
    path = os.path.abspath(path)
    cwd = os.getcwd()
    return os.path.relpath(path, cwd) if path.startswith(cwd + os.sep) else path


def task_location(task: Any) -> Location | None:
    """File and first line of the function behind ``task.run`` (its decorators'
    line for a decorated function); None for builtins, C extensions and tasks whose
    source file is gone. Follows ``functools.wraps`` chains (autoretry's too)."""
    run = getattr(task, "_orig_run", None) or getattr(task, "run", None)
    func = getattr(run, "__func__", run)
    try:
        func = inspect.unwrap(func)
        path = inspect.getsourcefile(func)
    except (TypeError, ValueError):
        return None
    code = getattr(func, "__code__", None)
    if not path or code is None or not os.path.isfile(path):  # e.g. "<string>" (exec)
        return None
    return _display_path(path), code.co_firstlineno


def _app_file(app: Any, app_path: str) -> str | None:
    """The source file of the module ``-A`` found the app in (looked up among the
    modules ``find_app`` tries for ``app_path``, not every loaded module)."""
    module = app_path.partition(":")[0]
    for name in (module, f"{module}.celery", module.rpartition(".")[0]):
        mod = sys.modules.get(name) if name else None
        if mod is None or not any(value is app for value in vars(mod).values()):
            continue
        try:
            path = inspect.getsourcefile(mod)
        except TypeError:
            return None
        return _display_path(path) if path else None
    return None


def locate(app: Any, app_path: str = "") -> Locations:
    """Where each of ``app``'s registered tasks is defined, and the app itself."""
    found = Locations()
    for name, task in list(getattr(app, "tasks", {}).items()):
        where = task_location(task)
        if where is not None:
            found.tasks[name] = where
    path = _app_file(app, app_path) if app_path else None
    found.app = (path, None) if path else None
    return found


def audit(info: AppInfo, settings: Settings | None = None,
          where: Locations | None = None) -> list[StaticFinding]:
    """Static findings for ``info``, honouring ``enabled``/``severity``/``ignore_tasks``
    per practice; with ``where`` (:func:`locate`), each carries its file and line."""
    settings = settings or Settings()
    where = where or Locations()
    found: list[StaticFinding] = []
    for rule in ALL_RULES:
        options = settings.practice_options(rule.id)
        if options.get("enabled", True) is False:
            continue
        severity = options.get("severity") or practice(rule.id).severity
        ignore = task_ignore(options)
        for task, message in rule.static_check(info):
            if ignore is not None and ignore.ignored(task):
                continue
            path, line = (where.tasks.get(task) if task else where.app) or (None, None)
            found.append(StaticFinding(rule.id, severity, task, message, path, line))
    found.sort(key=lambda f: (SEVERITIES.index(f.severity), f.practice, f.task or ""))
    return found


def failing(found: list[StaticFinding], fail_on: str) -> list[StaticFinding]:
    """The findings at or above ``fail_on`` (a severity of :data:`SEVERITIES`, or
    ``"none"``: nothing fails)."""
    if fail_on not in SEVERITIES:
        return []
    limit = SEVERITIES.index(fail_on)
    return [f for f in found if SEVERITIES.index(f.severity) <= limit]


def exit_status(found: list[StaticFinding], fail_on: str) -> int:
    """:data:`EXIT_FINDINGS` when a finding is at or above ``fail_on``, else clean."""
    return EXIT_FINDINGS if failing(found, fail_on) else EXIT_CLEAN


def _location_text(f: StaticFinding) -> str:
    if f.file is None:
        return "-"
    return f.file if f.line is None else f"{f.file}:{f.line}"


def render_text(info: AppInfo, found: list[StaticFinding],
                fail_on: str = DEFAULT_FAIL_ON) -> str:
    """A summary line, then ``path:line: severity practice task: message`` per finding
    (``path`` alone for app-wide findings, ``-`` where unknown; task ``-`` when none)."""
    bad = len(failing(found, fail_on))
    lines = [f"flower-practices check: app '{info.main}', {len(info.tasks)} task(s): "
             f"{len(found)} finding(s), {bad} at or above --fail-on={fail_on}"]
    for f in found:
        lines.append(f"{_location_text(f)}: {f.severity} {f.practice} {f.task or '-'}: "
                     f"{f.message}")
    if not found:
        lines.append("no practice violations found in the configuration")
    return "\n".join(lines)


def render_json(info: AppInfo, found: list[StaticFinding],
                fail_on: str = DEFAULT_FAIL_ON) -> str:
    """``{app, tasks, count, fail_on, failing, findings: [{practice, severity, task,
    message, file, line}]}``."""
    doc: dict[str, Any] = {
        "app": info.main, "tasks": len(info.tasks), "count": len(found),
        "fail_on": fail_on, "failing": len(failing(found, fail_on)),
        "findings": [asdict(f) for f in found],
    }
    return json.dumps(doc, indent=2)
