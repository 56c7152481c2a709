"""A plain-data snapshot of a loaded Celery app (``-A proj``) that rules can read.

Rules never import user code themselves: the snapshot records, per task, whether it has a
retry policy, time limits, a rate limit and ``ignore_result``, and app-wide routing and serializer
settings. Built once at start-up, off the hot path.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FunctionType, ModuleType
from typing import Any

from celery import Celery
from celery.schedules import schedule as interval_schedule
from celery.utils.time import rate

from .routes import queue_bindings


@dataclass(slots=True)
class TaskInfo:
    name: str
    max_retries: int | None
    autoretry_for: tuple[str, ...]
    calls_retry: bool
    time_limit: float | None
    soft_time_limit: float | None
    ignore_result: bool
    queue: str | None
    acks_late: bool
    retry_backoff: bool | int = False
    default_retry_delay: float | None = None
    #: Celery's defaults: back-off capped at 600 s, full jitter on
    retry_backoff_max: int = 600
    retry_jitter: bool = True
    #: the task body calls ``self.retry(..., countdown=0)`` (read from its source)
    retries_without_delay: bool = False
    #: certainly retries without limit: ``max_retries=None`` and either ``autoretry_for``
    #: whose ``retry_kwargs`` leave ``max_retries`` unset, or a ``self.retry(...)`` call
    #: in the body (read from its source) passing neither ``max_retries`` nor ``**kwargs``
    unbounded_retries: bool = False
    #: ``reject_on_worker_lost`` (task, else ``task_reject_on_worker_lost``)
    reject_on_worker_lost: bool = False
    #: ``retry_on_worker_lost`` (task, else ``task_retry_on_worker_lost``; Celery >= 5.7):
    #: a task whose pool process died is retried (a task-retried with WorkerLostError)
    retry_on_worker_lost: bool = False
    #: the task's code may raise ``Reject`` (see :func:`_may_raise_reject`; unknown code:
    #: True), so a ``task-rejected`` with ``requeue=True`` after a start may be its own doing
    raises_reject: bool = True
    #: ``acks_on_timeout`` (Celery >= 5.7; else ``acks_on_failure_or_timeout``): False
    #: requeues an ``acks_late`` task killed by its time limit
    acks_on_timeout: bool = True
    #: the task's ``rate_limit`` as configured (task, ``task_annotations`` or
    #: ``task_default_rate_limit``); None: none, or ``worker_disable_rate_limits``
    rate_limit: str | None = None

    @property
    def has_retry_policy(self) -> bool:
        return bool(self.autoretry_for) or self.calls_retry

    @property
    def has_time_limit(self) -> bool:
        return bool(self.time_limit) or bool(self.soft_time_limit)


#: beat_schedule entries read (a larger schedule is cut here)
MAX_BEAT_ENTRIES = 1000


@dataclass(slots=True)
class PeriodicEntry:
    """One ``beat_schedule`` entry: its name, the task it sends and when.

    ``schedule`` is Celery's own schedule object (a number or a ``timedelta`` becomes a
    :class:`celery.schedules.schedule`; ``crontab`` and ``solar`` are kept as given), so
    the next due time is computed the way beat computes it. ``kind`` is ``interval``,
    ``crontab`` or the schedule's class name; ``schedule`` is None for an entry whose
    schedule Celery could not use (reported by the static check)."""

    name: str
    task: str
    kind: str
    schedule: Any = None
    #: the entry's args and kwargs as a repr (for duplicate-entry checks only; never shown)
    call: str = ""

    def due_after(self, last: float) -> float | None:
        """Unix time the run after one sent at ``last`` was (or is) due, as beat computes
        it (``remaining_estimate``); None when unknown."""
        sched = self.schedule
        if sched is None:
            return None
        try:
            remaining = sched.remaining_estimate(datetime.fromtimestamp(last, tz=UTC))
            due = sched.now().timestamp() + remaining.total_seconds()
        except Exception:  # a user schedule class that raises must not stop us
            return None
        return due if due == due else None  # not NaN

    def period_at(self, last: float) -> float | None:
        """Seconds between the run due after ``last`` and the one after that."""
        first = self.due_after(last)
        second = self.due_after(first) if first is not None else None
        return None if first is None or second is None or second <= first else second - first


@dataclass(slots=True)
class AppInfo:
    main: str
    broker_url: str
    result_backend: str | None
    default_queue: str
    queues: tuple[str, ...]
    has_routes: bool
    task_serializer: str
    result_serializer: str
    accept_content: tuple[str, ...]
    prefetch_multiplier: int
    send_sent_event: bool
    worker_send_task_events: bool
    tasks: dict[str, TaskInfo] = field(default_factory=dict)
    #: app-wide ``task_acks_late`` and ``task_reject_on_worker_lost``
    acks_late: bool = False
    reject_on_worker_lost: bool = False
    #: ``broker_transport_options['visibility_timeout']`` when set (None: the transport's
    #: default, 3600 s on Redis)
    visibility_timeout: float | None = None
    #: task name -> the source file of the module that defines it (static scans)
    task_files: dict[str, str] = field(default_factory=dict)
    #: the app's ``beat_schedule`` (empty without one, e.g. a database-backed scheduler)
    beat_schedule: tuple[PeriodicEntry, ...] = ()
    #: (exchange, exchange type, routing key, queue) of each binding of the app's queues
    #: (``app.amqp.queues``): see :mod:`flower_practices.routes`
    bindings: tuple[tuple[str, str, str, str], ...] = ()

    def task(self, name: str | None) -> TaskInfo | None:
        return self.tasks.get(name) if name else None

    def periodic_entries(self, task: str) -> list[PeriodicEntry]:
        """The ``beat_schedule`` entries that send ``task``."""
        return [e for e in self.beat_schedule if e.task == task]


def _class_names(classes: Any) -> tuple[str, ...]:
    out = []
    for cls in classes or ():
        out.append(cls.__name__ if isinstance(cls, type) else str(cls))
    return tuple(out)


def _task_function(task: Any) -> Any:
    """The plain function behind a task's ``run`` (None if it has none)."""
    run = getattr(task, "run", None)
    return getattr(run, "__func__", run)


def _code_names(task: Any) -> set[str] | None:
    """The global and attribute names the task's body (and functions nested in it) use;
    None when it has no code to read."""
    code = getattr(_task_function(task), "__code__", None)
    return None if code is None else _function_names(code)


#: functions and classes :func:`_may_raise_reject` reads at most per task (a helper
#: graph larger than this is taken as "may raise")
_MAX_HELPERS = 200


def _may_raise_reject(task: Any, names: set[str] | None) -> bool:
    """Whether the task's code may raise Celery's ``Reject`` (``names``: the body's
    :func:`_code_names`, None when it has no code: then True).

    Read without running anything: the body, or a function or class of the task's own
    package it reaches through module globals (the helpers it calls, ``helper()`` or
    ``module.helper()``, followed into the project's other modules; libraries are not
    followed), names ``Reject``, or one of those modules has ``Reject`` in scope under any
    name (``from celery.exceptions import Reject as Bounce``). A helper graph past
    :data:`_MAX_HELPERS` counts as "may raise": the answer only ever silences
    ``worker_process_killed``, never makes it fire. A helper reached some other way (a
    method of an object passed in, a function looked up at runtime) is not seen."""
    try:
        return _reaches_reject(task, names)
    except Exception:  # code we cannot read as expected: may raise, as for no code
        return True


def _reaches_reject(task: Any, names: set[str] | None) -> bool:
    """:func:`_may_raise_reject`'s search. Globals are told apart by their real type
    (``type(value)``), never by asking the object: a proxy in a module's globals
    (Flask's ``current_app``, Django's lazy settings) may raise when touched."""
    from celery.exceptions import Reject

    if names is None:  # no code to read (``_code_names``)
        return True
    func = _task_function(task)
    package = _package(func)
    scopes_seen: set[int] = set()
    seen: set[int] = set()
    todo: list[tuple[Any, set[str]]] = [(func, names)]
    while todo:
        fn, used = todo.pop()
        if "Reject" in used:
            return True
        scope = fn.__globals__
        # the project's modules it names (``helpers.bounce()``) are searched too
        scopes = [scope, *(value.__dict__ for value in map(scope.get, used)
                           if issubclass(type(value), ModuleType)
                           and _package(value) == package)]
        for each in scopes:
            if id(each) not in scopes_seen:
                scopes_seen.add(id(each))
                if any(value is Reject for value in each.values()):
                    return True
            for name in used:
                for helper in _helpers(each.get(name), package):
                    if id(helper) not in seen:
                        seen.add(id(helper))
                        if len(seen) > _MAX_HELPERS:
                            return True
                        todo.append((helper, _function_names(helper.__code__)))
    return False


def _package(value: Any) -> str:
    """The top-level package a function, class or module (checked by the caller) comes
    from."""
    name = value.__name__ if issubclass(type(value), ModuleType) else value.__module__
    return (name if type(name) is str else "").split(".")[0]


def _helpers(value: Any, package: str) -> list[Any]:
    """The plain functions of ``package`` behind a global a task body uses: the function
    itself, or a class's own methods (static and class methods too); nothing for
    anything else, nor for what another package defines."""
    if type(value) is FunctionType:
        return [value] if _package(value) == package else []
    if not issubclass(type(value), type) or _package(value) != package:
        return []
    out = []
    for attr in vars(value).values():
        if type(attr) in (staticmethod, classmethod):
            attr = attr.__func__
        if type(attr) is FunctionType:
            out.append(attr)
    return out


def _function_names(code: Any) -> set[str]:
    """The global and attribute names ``code`` and the functions nested in it use."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names.update(_function_names(const))
    return names


def _acks_on_timeout(task: Any) -> bool:
    """Whether an ``acks_late`` task killed by its time limit is acknowledged (Celery:
    ``acks_on_timeout``, else ``acks_on_failure_or_timeout``, default True)."""
    for attr in ("acks_on_timeout", "acks_on_failure_or_timeout"):
        value = getattr(task, attr, None)
        if value is not None:
            return bool(value)
    return True


#: a ``.retry(...)`` call whose arguments include ``countdown=0`` (or 0.0)
_ZERO_COUNTDOWN = re.compile(r"\.retry\([^)]*\bcountdown\s*=\s*0(?:\.0*)?\s*[,)]")


def _retries_without_delay(task: Any) -> bool:
    """True when the task's source calls ``retry`` with a literal zero countdown.

    Source-level and best effort: a task without readable source, or a countdown computed
    at runtime, is not judged here (``retry_storm`` sees those at runtime)."""
    try:
        source = inspect.getsource(_task_function(task))
    except (OSError, TypeError):
        return False
    return _ZERO_COUNTDOWN.search(source) is not None


def _retry_calls(task: Any) -> tuple[list[ast.Call], list[ast.Call]] | None:
    """``(every .retry(...) call, the <self>.retry(...) ones)`` in the task's body, where
    ``<self>`` is a bound task's first parameter; None when the source is unreadable."""
    run = getattr(task, "_orig_run", None) or getattr(task, "run", None)  # autoretry wraps
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(run, "__func__", run))))
    except (OSError, TypeError, SyntaxError, ValueError):
        return None
    func = next((n for n in ast.walk(tree)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if func is None:
        return None
    calls = [n for n in ast.walk(func) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "retry"]
    bound = getattr(run, "__self__", None) is task and func.args.args
    me = func.args.args[0].arg if bound else None
    return calls, [c for c in calls if isinstance(c.func.value, ast.Name)  # type: ignore
                   and c.func.value.id == me]


def _unbounded_retries(task: Any) -> bool:
    """See :attr:`TaskInfo.unbounded_retries` (False whenever in doubt: unreadable
    source, or any ``.retry(...)`` call that passes ``max_retries`` or ``**kwargs``,
    which Celery also applies to later automatic retries)."""
    if getattr(task, "max_retries", 0) is not None:
        return False
    found = _retry_calls(task)
    if found is None:
        return False
    calls, own = found
    if any(k.arg in ("max_retries", None) for call in calls for k in call.keywords):
        return False
    kwargs = getattr(task, "retry_kwargs", None) or {}  # Celery's default: unset
    if getattr(task, "autoretry_for", ()) and isinstance(kwargs, dict) \
            and "max_retries" not in kwargs:
        return True
    return bool(own)


def _route_queue(app: Celery, name: str) -> str | None:
    try:
        route = app.amqp.router.route({}, name)
    except Exception:  # a user router that raises must not stop us
        return None
    queue = route.get("queue") if isinstance(route, dict) else None
    return getattr(queue, "name", queue) if queue is not None else None


def _app_bindings(app: Celery) -> tuple[tuple[str, str, str, str], ...]:
    try:
        return queue_bindings(q.as_dict(recurse=True) for q in app.amqp.queues.values())
    except Exception:  # a configuration kombu refuses: routes stay unknown
        return ()


def _rate_limit(task: Any, conf: Any) -> str | None:
    """The rate limit a worker applies to ``task`` (as configured), or None."""
    if conf.worker_disable_rate_limits:
        return None
    limit = getattr(task, "rate_limit", None)
    try:
        return str(limit)[:32] if limit and rate(limit) > 0 else None
    except Exception:  # a value Celery's workers would refuse too
        return None


def snapshot_app(app: Celery) -> AppInfo:
    """Read configuration and task definitions from ``app``."""
    conf = app.conf
    app.loader.import_default_modules()
    tasks: dict[str, TaskInfo] = {}
    for name, task in sorted(app.tasks.items()):
        if name.startswith("celery."):
            continue
        names = _code_names(task)  # None: no code to read
        tasks[name] = TaskInfo(
            name=name,
            max_retries=getattr(task, "max_retries", None),
            autoretry_for=_class_names(getattr(task, "autoretry_for", ())),
            calls_retry=names is not None and "retry" in names,
            time_limit=getattr(task, "time_limit", None) or conf.task_time_limit,
            soft_time_limit=getattr(task, "soft_time_limit", None) or conf.task_soft_time_limit,
            ignore_result=bool(getattr(task, "ignore_result", False) or conf.task_ignore_result),
            queue=_route_queue(app, name),
            acks_late=bool(getattr(task, "acks_late", False)),
            retry_backoff=getattr(task, "retry_backoff", False) or False,
            default_retry_delay=getattr(task, "default_retry_delay", None),
            retry_backoff_max=_int(getattr(task, "retry_backoff_max", 600), 600),
            retry_jitter=bool(getattr(task, "retry_jitter", True)),
            retries_without_delay=_retries_without_delay(task),
            unbounded_retries=_unbounded_retries(task),
            reject_on_worker_lost=bool(getattr(task, "reject_on_worker_lost", None)),
            retry_on_worker_lost=bool(getattr(task, "retry_on_worker_lost", None)),
            raises_reject=_may_raise_reject(task, names),
            acks_on_timeout=_acks_on_timeout(task),
            rate_limit=_rate_limit(task, conf),
        )
    queues = tuple(q.name for q in (conf.task_queues or ()))
    return AppInfo(
        main=app.main or "",
        broker_url=str(conf.broker_url or ""),
        result_backend=str(conf.result_backend) if conf.result_backend else None,
        default_queue=conf.task_default_queue or "celery",
        queues=queues,
        has_routes=bool(conf.task_routes),
        task_serializer=conf.task_serializer,
        result_serializer=conf.result_serializer,
        accept_content=tuple(conf.accept_content or ()),
        prefetch_multiplier=int(conf.worker_prefetch_multiplier or 0),
        send_sent_event=bool(conf.task_send_sent_event),
        worker_send_task_events=bool(conf.worker_send_task_events),
        tasks=tasks,
        acks_late=bool(conf.task_acks_late),
        reject_on_worker_lost=bool(conf.task_reject_on_worker_lost),
        visibility_timeout=_visibility_timeout(conf.broker_transport_options),
        task_files=_task_files(app, tasks),
        beat_schedule=_beat_schedule(app),
        bindings=_app_bindings(app),
    )


def _visibility_timeout(options: Any) -> float | None:
    value = options.get("visibility_timeout") if isinstance(options, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _task_files(app: Celery, names: Any) -> dict[str, str]:
    """Task name -> the source file of the module defining it (None skipped)."""
    out: dict[str, str] = {}
    for name in names:
        try:
            path = inspect.getsourcefile(_task_function(app.tasks[name]))
        except (TypeError, OSError, KeyError):
            continue
        if path:
            out[name] = path
    return out


def _entry_schedule(app: Celery, value: Any) -> tuple[str, Any]:
    """(kind, Celery schedule object) of a ``beat_schedule`` entry's ``schedule``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        value = timedelta(seconds=value)
    if isinstance(value, timedelta):
        return ("interval", interval_schedule(value, app=app)) if value.total_seconds() > 0 \
            else ("interval", None)
    if not hasattr(value, "remaining_estimate"):
        return type(value).__name__[:40], None
    if getattr(value, "_app", True) is None:
        value.app = app  # bind the app's timezone (beat does the same)
    kind = "interval" if isinstance(value, interval_schedule) else type(value).__name__[:40]
    return kind, value


def _beat_schedule(app: Celery) -> tuple[PeriodicEntry, ...]:
    entries: list[PeriodicEntry] = []
    schedule = app.conf.beat_schedule or {}
    for name, entry in list(schedule.items())[:MAX_BEAT_ENTRIES]:
        if not isinstance(entry, dict):
            continue
        kind, sched = _entry_schedule(app, entry.get("schedule"))
        call = repr((entry.get("args"), entry.get("kwargs"), entry.get("options")))
        entries.append(PeriodicEntry(name=str(name)[:200], task=str(entry.get("task", ""))[:200],
                                     kind=kind, schedule=sched, call=call[:2000]))
    return tuple(entries)


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
