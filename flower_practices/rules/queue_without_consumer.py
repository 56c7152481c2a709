"""queue_without_consumer: a queue holds messages (or receives tasks) and nobody consumes it.

Evaluated per known queue (seen in task-sent events, declared in the app, or probed):
it has demand when the broker probe shows messages waiting, or (where the queue's length
is not probed) a task-sent event targeted it within ``window_seconds``. Its consumers
come from RabbitMQ's consumer count on AMQP, else from the live workers'
``active_queues``. Demand with zero consumers for longer than ``grace_seconds`` is a
finding. Each task-sent into a flagged queue is counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..findings import Condition
from .base import Rule
from .queue_view import counts_consumers, live_workers, queue_consumers, routed_tasks


class QueueWithoutConsumer(Rule):
    id = "queue_without_consumer"
    defaults = {
        #: seconds a queue must have demand and no consumer before it is reported
        "grace_seconds": 60.0,
        #: a task-sent to the queue within this many seconds counts as demand
        "window_seconds": 300.0,
    }

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        self.amqp = counts_consumers(ctx.broker_url)
        #: queue -> since when it has had demand and no consumer
        self.since: dict[str, float] = {}
        self.flagged: set[str] = set()

    def hooks(self):
        return {"task-sent": self._on_sent}

    def _on_sent(self, event: dict, rec: Any) -> None:
        if rec is not None and rec.queue in self.flagged:
            self.count(rec.queue, rec.name or None)

    def coverage(self) -> str:
        if not self.ctx.events_supported:
            return ("unsupported: the broker is a database; neither events nor queue probes "
                    "are possible on this transport")
        return "active"

    def evaluate(self, now: float) -> Iterable[Condition]:
        state = self.ctx.state
        grace = float(self.options["grace_seconds"])
        window = float(self.options["window_seconds"])
        flagged: set[str] = set()
        for name, queue in state.queues.items():
            waiting = queue.length or 0
            # task-sent events are demand only where no probe tells the queue's length:
            # a probed, empty queue was drained by someone (maybe a worker we cannot see)
            recent = queue.length is None and queue.last_sent_at \
                and now - queue.last_sent_at <= window
            if not (waiting > 0 or recent):
                self.since.pop(name, None)
                continue
            consumers, source = queue_consumers(state, queue, now, self.amqp)
            if consumers is None or consumers > 0:
                self.since.pop(name, None)
                continue
            since = self.since.setdefault(name, now)
            unconsumed = now - since
            if unconsumed < grace:
                continue
            flagged.add(name)
            if name not in self.flagged:
                self.count(name, None, max(1, waiting))
            workers = live_workers(state, now)
            consumed = sorted({q for w in workers for q in w.active_queues or ()})
            evidence: dict[str, Any] = {
                "messages_waiting": queue.length, "consumers": 0,
                "consumers_source": source, "unconsumed_for_seconds": round(unconsumed, 1),
                "tasks_sent_seen": queue.sent, "live_workers": len(workers),
                "queues_consumed_by_workers": consumed[:20], "grace_seconds": grace,
            }
            summary = (f"queue '{name}' has "
                       + (f"{waiting} message(s) waiting" if waiting else "tasks sent to it")
                       + f" and no consumer for {unconsumed:.0f}s")
            app = self.ctx.app
            if app is not None:
                evidence["source"] = "app config"
                evidence["routed_tasks"] = routed_tasks(app, name)
                evidence["declared_in_app"] = name in app.queues or name == app.default_queue
            yield Condition(summary=summary, queue=name, evidence=evidence)
        self.flagged = flagged
