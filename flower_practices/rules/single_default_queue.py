"""single_default_queue: two or more distinct tasks, all routed to the one default queue.

Hooks record, per queue, the task names seen in task-sent (``queue``/``routing_key``)
and task-received (queue known from the worker's single active queue) over a sliding
window. When task-sent events are off the queue comes from workers' ``active_queues``:
every live worker consuming only the default queue means every task runs there. The
default queue is the app's ``task_default_queue`` when the app is loaded, else the
``default_queue`` option (``celery``).

A live worker whose queues are not known yet (it came online, or the exporter first saw
it, less than ``unanswered_worker_grace_seconds`` ago, and remote control has not
answered) may consume another queue: until it answers or the grace passes the condition
is undecided, its messages kept pending, nothing reported. Otherwise tasks sent to the
default queue in the first seconds after a deployment (or an exporter restart) read as
"everything in one queue" while the routed queue's workers are still unknown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..events.types import TASK_RECEIVED, TASK_SENT
from ..findings import Condition
from .base import Rule
from .queue_view import UNANSWERED_GRACE, live_workers

if TYPE_CHECKING:
    from ..appinfo import AppInfo

_MAX_NAMES = 2000


class SingleDefaultQueue(Rule):
    id = "single_default_queue"

    @dataclass(frozen=True, slots=True)
    class Options:
        """Typed options (the documented defaults; each may be overridden in
        ``[practices.single_default_queue]``)."""

        #: distinct task names needed before "everything in one queue" is a finding
        min_tasks: int = 2
        #: task names not seen for this long are forgotten
        window_seconds: float = 3600.0
        #: the default queue when the app is not loaded ("" = Celery's "celery")
        default_queue: str = ""
        #: a live worker whose queues are unknown this long after it came online (or was
        #: first seen) no longer defers the judgement (remote control off)
        unanswered_worker_grace_seconds: float = UNANSWERED_GRACE

    #: this rule's options, typed (set by :class:`Rule`)
    opts: Options

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        #: (queue or "", task) -> last seen; "" = queue unknown (no task-sent)
        self.seen: dict[tuple[str, str], float] = {}
        #: messages per (queue, task) since the last evaluation, counted once confirmed
        self.pending: dict[tuple[str, str], int] = {}

    def hooks(self):
        return {TASK_SENT: self._on_task, TASK_RECEIVED: self._on_task}

    def _on_task(self, event: dict, rec: Any) -> None:
        if rec is None or not rec.name:
            return
        if event["type"] == TASK_RECEIVED and rec.has_sent:
            return  # already seen through its task-sent
        key = (rec.queue, rec.name)
        seen = self.seen
        if key in seen or len(seen) < _MAX_NAMES:
            seen[key] = event["timestamp"]
            self.pending[key] = self.pending.get(key, 0) + 1

    def coverage(self) -> str:
        if not self.ctx.events_supported:
            return "unsupported: the broker is a database; no task events can flow"
        return "active"

    def default_queue(self) -> tuple[str, str]:
        app = self.ctx.app
        if app is not None:
            return app.default_queue, "app config"
        return self.opts.default_queue or "celery", "default"

    def evaluate(self, now: float) -> Iterable[Condition]:
        window = self.opts.window_seconds
        for key in [k for k, ts in self.seen.items() if now - ts > window]:
            del self.seen[key]
        default, default_source = self.default_queue()
        live = live_workers(self.ctx.state, now)
        workers = [w for w in live if w.active_queues is not None]
        grace = self.opts.unanswered_worker_grace_seconds
        undecided = any(w.active_queues is None
                        and now - (w.online_since or w.created_at) < grace for w in live)
        source = self._only_default(default, workers, undecided)
        if source is None:
            return
        names = sorted({t for _, t in self.seen})
        pending, self.pending = self.pending, {}
        for (queue, task), n in pending.items():
            self.count(queue or default, task, n)
        evidence: dict[str, Any] = {
            "default_queue": default, "default_queue_source": default_source,
            "distinct_tasks": len(names), "tasks": names[:20], "queue_source": source,
            "workers_consuming": len(workers), "window_seconds": window,
        }
        yield self._condition(default, names, evidence)

    def _only_default(self, default: str, workers: list[Any], undecided: bool
                      ) -> str | None:
        """Where the default queue was seen to be the only one in use, or None: no
        traffic, a second queue in use or consumed (pending occurrences dropped), fewer
        than ``min_tasks`` task names or a new worker's queues still unknown (kept
        pending), or no queue known at all."""
        queues = {q for q, _ in self.seen if q}
        consumed = {q for w in workers for q in w.active_queues or ()}
        if not self.seen or queues - {default} or consumed - {default}:
            self.pending.clear()
            return None
        if len({t for _, t in self.seen}) < self.opts.min_tasks:
            return None  # messages stay pending: they count once a second task shows up
        if undecided:
            return None  # a new worker may consume another queue: pending until known
        if queues:
            return "task-sent queue"
        return "workers' active_queues" if consumed else None

    def _condition(self, default: str, names: list[str], evidence: dict[str, Any]
                   ) -> Condition:
        summary = (f"{len(names)} distinct tasks all run through the default queue "
                   f"'{default}': slow or bulk work delays everything else")
        app = self.ctx.app
        if app is not None:
            evidence["source"] = "app config"
            evidence["task_routes_set"] = app.has_routes
            evidence["task_queues_declared"] = list(app.queues)
            if not app.has_routes:
                summary += " (task_routes is not set)"
        return Condition(summary=summary, queue=default, evidence=evidence)

    @classmethod
    def static_check(cls, app: AppInfo) -> list[tuple[str | None, str]]:
        """Two or more tasks and every one goes to the default queue."""
        tasks = app.tasks
        routed = {t.queue or app.default_queue for t in tasks.values()}
        if len(tasks) < 2 or not routed <= {app.default_queue}:
            return []
        return [(None, f"all {len(tasks)} tasks go to the default queue "
                       f"'{app.default_queue}' (no task_routes, no per-task queue)")]
