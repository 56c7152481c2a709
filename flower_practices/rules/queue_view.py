"""Helpers the queue and worker rules share: consumer counts, ETA tracking, app routing.

- :func:`queue_consumers` gives a queue's consumers: RabbitMQ's own count when the broker
  is AMQP (from the probes), else the live workers whose ``active_queues`` include it;
  ``None`` when that cannot be known yet (a live worker's queues not probed).
- :class:`EtaTasks` remembers (bounded) which task ids carry an ``eta``/``countdown``:
  they wait on purpose and must not count as waiting for a consumer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..bounded import LRUDict
from ..brokers import scheme

if TYPE_CHECKING:
    from ..appinfo import AppInfo
    from ..state import QueueRecord, RuntimeState, WorkerRecord

AMQP_SCHEMES = frozenset(("amqp", "amqps", "pyamqp", "librabbitmq"))


def counts_consumers(broker_url: str) -> bool:
    """True when the broker itself reports consumer counts (RabbitMQ)."""
    return scheme(broker_url) in AMQP_SCHEMES


def live_workers(state: RuntimeState, now: float) -> list[WorkerRecord]:
    return [w for w in state.workers.values() if state.worker_alive(w, now)]


def queue_consumers(state: RuntimeState, queue: QueueRecord, now: float,
                    amqp: bool) -> tuple[int | None, str]:
    """(consumers or None when unknown, where the number comes from)."""
    if amqp:
        return queue.consumers, "rabbitmq consumer count"
    n = 0
    for worker in state.workers.values():
        if not state.worker_alive(worker, now):
            continue
        if worker.active_queues is None:
            return None, "workers' active_queues (not probed yet)"
        if queue.name in worker.active_queues:
            n += 1
    return n, "workers' active_queues"


def routed_tasks(app: AppInfo | None, queue: str, limit: int = 10) -> list[str] | None:
    """Task names the app routes to ``queue`` (None when the app is not loaded)."""
    if app is None:
        return None
    return sorted(name for name, t in app.tasks.items() if t.queue == queue)[:limit]


class EtaTasks:
    """Task ids seen with an ``eta`` (countdown/retry delay), bounded LRU."""

    __slots__ = ("ids",)

    def __init__(self, limit: int = 20_000) -> None:
        self.ids: LRUDict[str, bool] = LRUDict(limit)

    def observe(self, event: dict) -> None:
        if event.get("eta"):
            self.ids.put(event["uuid"], True)

    def __contains__(self, uuid: str) -> bool:
        return uuid in self.ids
