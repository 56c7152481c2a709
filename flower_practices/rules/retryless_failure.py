"""retryless_failure: a task failed with a transient-looking exception and never retried.

The hook reads only the exception *class name* from the task-failed ``exception`` field
(a repr such as ``ConnectionError('...')``); the message is never kept. A failure counts
when the task record shows no retry (``retries == 0`` and no task-retried seen). A task
that retried and then failed anyway (``max_retries`` exhausted) is therefore not
reported: it has a retry policy, the dependency stayed down.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..bounded import LRUDict
from ..events.sanitize import exception_class, failure_exception
from ..events.types import TASK_FAILED, TASK_RETRIED
from ..findings import Condition
from .base import Rule

__all__ = ["RetrylessFailure", "TransientMatcher", "exception_class"]

if TYPE_CHECKING:
    from ..appinfo import AppInfo

#: exception class names (bare or dotted) treated as transient by default
TRANSIENT_EXCEPTIONS = [
    "ConnectionError", "ConnectionResetError", "ConnectionRefusedError",
    "ConnectionAbortedError", "BrokenPipeError", "TimeoutError", "OSError", "IOError",
    "socket.timeout", "socket.error", "socket.gaierror", "ssl.SSLError",
    "requests.exceptions.ConnectionError", "requests.exceptions.Timeout", "ReadTimeout",
    "ConnectTimeout", "ChunkedEncodingError", "urllib3.exceptions.ReadTimeoutError",
    "ConnectTimeoutError", "NewConnectionError", "MaxRetryError", "ProtocolError",
    "http.client.RemoteDisconnected", "IncompleteRead", "httpx.TimeoutException",
    "ReadError", "ConnectError", "PoolTimeout", "WriteTimeout", "RemoteProtocolError",
    "redis.exceptions.ConnectionError", "redis.exceptions.TimeoutError", "BusyLoadingError",
    "kombu.exceptions.OperationalError", "OperationalError", "InterfaceError",
    "DatabaseError", "DeadlockDetected", "SerializationFailure", "LockNotAvailable",
    "amqp.exceptions.RecoverableConnectionError", "RecoverableConnectionError",
    "ServiceUnavailable", "TemporaryFailure", "TransientError",
]

_MAX_KEYS = 2000


class TransientMatcher:
    """Matches class names against a configured list (bare names match any module)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.full = {n for n in names if n}
        self.bare = {n.rsplit(".", 1)[-1] for n in self.full}

    def __call__(self, name: str) -> bool:
        return name in self.full or name.rsplit(".", 1)[-1] in self.bare


class _Tally:
    __slots__ = ("count", "classes", "last_seen")

    def __init__(self) -> None:
        self.count = 0
        self.classes: dict[str, int] = {}
        self.last_seen = 0.0


class RetrylessFailure(Rule):
    id = "retryless_failure"

    @dataclass(frozen=True, slots=True)
    class Options:
        """Typed options (the documented defaults; each may be overridden in
        ``[practices.retryless_failure]``)."""

        #: exception class names (bare like "OperationalError" or dotted) that look transient
        transient_exceptions: tuple[str, ...] = tuple(TRANSIENT_EXCEPTIONS)
        #: extra names added to the list above (keeps the defaults)
        extra_transient_exceptions: tuple[str, ...] = tuple([])
        #: a finding stays active this long after the last retry-less transient failure
        window_seconds: float = 600.0
        #: failures needed (per task and queue) before a finding is raised
        min_failures: int = 1

    #: this rule's options, typed (set by :class:`Rule`)
    opts: Options

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        self.matcher = TransientMatcher(
            list(self.opts.transient_exceptions) + list(self.opts.extra_transient_exceptions))
        self.retried: LRUDict[str, bool] = LRUDict(20_000)
        self.tallies: dict[tuple[str, str], _Tally] = {}

    def hooks(self):
        return {TASK_RETRIED: self._on_retried, TASK_FAILED: self._on_failed}

    def _on_retried(self, event: dict, rec: Any) -> None:
        self.retried.put(event["uuid"], True)

    def _on_failed(self, event: dict, rec: Any) -> None:
        uuid = event["uuid"]
        if self.retried.pop(uuid, None) or (rec is not None and rec.retries):
            return
        name = failure_exception(event)[0]
        if name is None or not self.matcher(name):
            return
        queue = rec.queue if rec is not None else ""
        task = rec.name if rec is not None else ""
        key = (queue, task)
        tally = self.tallies.get(key)
        if tally is None:
            if len(self.tallies) >= _MAX_KEYS:
                return
            tally = self.tallies[key] = _Tally()
        tally.count += 1
        short = name[:120]
        if short in tally.classes or len(tally.classes) < 10:
            tally.classes[short] = tally.classes.get(short, 0) + 1
        tally.last_seen = event["timestamp"]
        self.count(queue or None, task or None)

    def evaluate(self, now: float) -> Iterable[Condition]:
        window = self.opts.window_seconds
        app = self.ctx.app
        for key in [k for k, t in self.tallies.items() if now - t.last_seen > window]:
            del self.tallies[key]
        for (queue, task), tally in self.tallies.items():
            if tally.count < self.opts.min_failures:
                continue
            evidence: dict[str, Any] = {
                "failures_without_retry": tally.count,
                "exception_classes": dict(tally.classes),
            }
            summary = (f"{task or 'a task'} failed {tally.count}x with transient-looking "
                       f"exceptions ({', '.join(sorted(tally.classes))}) and never retried")
            info = app.task(task) if app is not None else None
            if app is None:
                evidence["retry_policy"] = "unknown (app not loaded)"
            elif info is None:
                evidence["retry_policy"] = "unknown (task not registered in the loaded app)"
            elif not info.has_retry_policy:
                evidence["retry_policy"] = "none: no autoretry_for and no self.retry() call"
                summary += "; the task has no retry policy"
            else:
                covered = sorted(set(info.autoretry_for) & {
                    c.rsplit(".", 1)[-1] for c in tally.classes})
                evidence["retry_policy"] = {
                    "autoretry_for": list(info.autoretry_for),
                    "calls_retry": info.calls_retry,
                    "covers_these_exceptions": bool(covered),
                }
                if info.autoretry_for and not covered:
                    summary += "; autoretry_for does not cover these exceptions"
            yield Condition(summary=summary, queue=queue or None, task=task or None,
                            evidence=evidence)

    @classmethod
    def static_check(cls, app: AppInfo) -> list[tuple[str | None, str]]:
        """Tasks with no retry policy (no ``autoretry_for``, no ``self.retry()`` call)."""
        return [(name, "no retry policy (no autoretry_for, no self.retry() call): a "
                       "transient error fails the task for good")
                for name, task in sorted(app.tasks.items()) if not task.has_retry_policy]
