"""missing_time_limit: a task ran (or is running) longer than ``max_runtime_seconds``
without a time limit.

Completed runs are seen in the task-succeeded/task-failed hooks (runtime from the event
-- unless it is not a finite, non-negative number -- or started->finished); running tasks
are found in :meth:`evaluate` from each worker's running tasks (the state's per-worker
index, never every tracked task), skipping those whose worker is dead or restarted since
they started (lost, not long: ``lost_task`` reports them). A run that ended with no
outcome event (``raise Ignore()``, ``Task.replace``) leaves the running tasks at its
worker's next idle heartbeat (``active=0``); on a worker busy without a break it can still
be reported here. Whether a task has a time limit is known only when the app is loaded
(``-A proj``); without it the evidence says the limit is unknown.

A limit given per call (``apply_async(time_limit=..., soft_time_limit=...)``) or on the
worker's command line (``--time-limit``) is in no event and not in the app: a completed
run that failed with ``TimeLimitExceeded`` or ``SoftTimeLimitExceeded`` proves that it
had a limit, so it adds nothing to the completed runs' tally (a count already taken while
it ran past ``max_runtime_seconds`` stays: the counter is monotonic). A run with a
per-call limit above ``max_runtime_seconds`` is still reported while it runs past
``max_runtime_seconds``, and when it succeeds in that time: events cannot tell that limit
(raise ``max_runtime_seconds`` above it, or set the limit on the task).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..bounded import LRUDict
from ..events.sanitize import failure_exception
from ..events.types import TASK_FAILED, TASK_SUCCEEDED
from ..findings import Condition
from ..state import finite_seconds
from .base import Rule

if TYPE_CHECKING:
    from ..appinfo import AppInfo

_MAX_KEYS = 2000
#: the failures (bare class names) of a run stopped by its own time limit
_LIMIT_EXCEEDED = frozenset(("TimeLimitExceeded", "SoftTimeLimitExceeded"))


class _Tally:
    __slots__ = ("completed", "max_runtime", "last_seen")

    def __init__(self) -> None:
        self.completed = 0
        self.max_runtime = 0.0
        self.last_seen = 0.0


def _limit_exceeded(event: dict) -> bool:
    """The task-failed ``event`` reports a time limit the run exceeded (per task, app-wide
    or per call: which, events do not say)."""
    name = failure_exception(event)[0]
    return name is not None and name.rsplit(".", 1)[-1] in _LIMIT_EXCEEDED


class MissingTimeLimit(Rule):
    id = "missing_time_limit"
    judges_silence = True

    @dataclass(frozen=True, slots=True)
    class Options:
        """Typed options (the documented defaults; each may be overridden in
        ``[practices.missing_time_limit]``)."""

        #: a run longer than this (seconds) without a time limit is a finding
        max_runtime_seconds: float = 300.0
        #: a finding from completed runs stays active this long after the last one
        window_seconds: float = 3600.0

    #: this rule's options, typed (set by :class:`Rule`)
    opts: Options

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        self.limit = self.opts.max_runtime_seconds
        self.tallies: dict[tuple[str, str], _Tally] = {}
        #: long-running tasks already counted while running (count each run once)
        self.counted: LRUDict[str, bool] = LRUDict(10_000)

    def _has_limit(self, task: str) -> bool:
        app = self.ctx.app
        info = app.task(task) if app is not None else None
        return info is not None and info.has_time_limit

    def hooks(self):
        return {TASK_SUCCEEDED: self._on_done, TASK_FAILED: self._on_done}

    def _on_done(self, event: dict, rec: Any) -> None:
        if rec is None:
            return
        runtime = finite_seconds(event.get("runtime"))
        if runtime is None:
            if not rec.started_at:
                return
            runtime = max(0.0, event["timestamp"] - rec.started_at)
        if runtime <= self.limit or self._has_limit(rec.name) or \
                (event.get("type") == TASK_FAILED and _limit_exceeded(event)):
            self.counted.pop(rec.uuid, None)
            return
        key = (rec.queue, rec.name)
        tally = self.tallies.get(key)
        if tally is None:
            if len(self.tallies) >= _MAX_KEYS:
                return
            tally = self.tallies[key] = _Tally()
        tally.completed += 1
        tally.max_runtime = max(tally.max_runtime, float(runtime))
        tally.last_seen = event["timestamp"]
        if not self.counted.pop(rec.uuid, None):
            self.count(rec.queue or None, rec.name or None)

    def _running_over_limit(self, now: float) -> dict[tuple[str, str], list[float]]:
        """(queue, task) -> ages of the runs over the limit, from each live worker's
        running tasks (the state's per-worker index); a worker that is gone or restarted
        since holds none here (lost, not long: ``lost_task`` reports them)."""
        running: dict[tuple[str, str], list[float]] = {}
        # a run started before a blind window may have ended unheard: judged at its end
        unsure = self.ctx.state.hearing.unsure
        for worker in self.ctx.state.workers.values():
            if not worker.running_tasks or (worker.online_since and not worker.alive(now)):
                continue
            for rec in worker.running_tasks.values():
                age = now - rec.started_at
                if not rec.started_at or worker.restarted_at > rec.started_at \
                        or age <= self.limit or self._has_limit(rec.name) \
                        or unsure(rec.updated_at):
                    continue
                running.setdefault((rec.queue, rec.name), []).append(age)
                if rec.uuid not in self.counted:
                    self.counted.put(rec.uuid, True)
                    self.count(rec.queue or None, rec.name or None)
        return running

    def evaluate(self, now: float) -> Iterable[Condition]:
        window = self.opts.window_seconds
        for key in [k for k, t in self.tallies.items() if now - t.last_seen > window]:
            del self.tallies[key]
        running = self._running_over_limit(now)
        app = self.ctx.app
        for key in set(self.tallies) | set(running):
            queue, task = key
            tally = self.tallies.get(key)
            ages = running.get(key, [])
            longest = max([tally.max_runtime if tally else 0.0, *ages])
            evidence: dict[str, Any] = {
                "max_runtime_seconds": self.limit,
                "completed_runs_over_limit": tally.completed if tally else 0,
                "running_now_over_limit": len(ages),
                "longest_runtime_seconds": round(longest, 1),
            }
            if app is None:
                evidence["time_limit"] = "time limit unknown (app not loaded)"
                note = "time limit unknown (app not loaded)"
            elif app.task(task) is None:
                evidence["time_limit"] = "unknown (task not registered in the loaded app)"
                note = "time limit unknown"
            else:
                evidence["time_limit"] = "none: no time_limit/soft_time_limit on the task " \
                                         "or in task_time_limit"
                note = "the task has no time limit"
            yield Condition(
                summary=(f"{task or 'a task'} ran {longest:.0f}s (> {self.limit:g}s); "
                         f"{note}"),
                queue=queue or None, task=task or None, evidence=evidence)

    @classmethod
    def static_check(cls, app: AppInfo) -> list[tuple[str | None, str]]:
        """Tasks with no ``time_limit``/``soft_time_limit`` (task or app-wide)."""
        return [(name, "no time_limit/soft_time_limit: a hung call holds a worker slot "
                       "forever")
                for name, task in sorted(app.tasks.items()) if not task.has_time_limit]
