"""Helpers the queue and worker rules share: consumer counts, ETA tracking, app routing.

- :func:`queue_consumers` gives a queue's consumers: RabbitMQ's own count when the broker
  is AMQP (from the probes), else per worker: a present worker consumes the queue when
  its last known ``active_queues`` (kept while it is present) include it, or when it took
  a task from it (task-received/started: knowledge that needs no remote control). A
  worker is present while its heartbeats are fresh, and for ``silent_grace`` seconds
  after they stopped without a worker-offline (a busy solo pool sends nothing until its
  task is done; a worker killed with -9 looks the same, and ``lost_task`` reports it). A worker
  whose queues are unknown (just started, a busy solo pool that cannot answer, remote
  control off) is *unanswered*: it leaves only the queues it might consume undecided, and
  only for ``unanswered_grace`` seconds after it came online (an idle worker consuming a
  queue with messages waiting would have received one by then). It never makes every
  queue unknown.
- :func:`no_consumer` reads the one fact "no consumer of this queue is known":
  ``QueueFacts.unconsumed_since``, set and reset by ``queue_without_consumer`` only
  (with its options), which reports such a queue once it is decided (see above), while
  ``queue_starvation`` leaves it alone: one cause, one finding. The condition's start
  survives probe gaps and undecided rounds; only a known consumer (or no demand) resets
  it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..brokers import is_amqp_broker

if TYPE_CHECKING:
    from ..appinfo import AppInfo
    from ..state import QueueRecord, RuntimeState, WorkerRecord

def counts_consumers(broker_url: str) -> bool:
    """True when the broker itself reports consumer counts (RabbitMQ)."""
    return is_amqp_broker(broker_url)


def live_workers(state: RuntimeState, now: float) -> list[WorkerRecord]:
    return [w for w in state.workers.values() if w.alive(now)]


def present(state: RuntimeState, worker: WorkerRecord, now: float,
            silent_grace: float = 0.0) -> bool:
    """Alive by its heartbeats, or silent for less than ``silent_grace`` seconds without
    having said goodbye (no worker-offline): a solo pool running a long task sends no
    heartbeat and no event until it is done, yet it still consumes its queues. A worker
    that never sent a worker event (``--without-heartbeat``: no heartbeat, no
    worker-online) is known from its task events only: present for ``silent_grace``
    seconds after its last one."""
    return worker.alive(now) or (
        (worker.online or not worker.heartbeats) and now - worker.last_seen <= silent_grace)


#: default seconds an unanswered worker may still turn out to consume a queue
UNANSWERED_GRACE = 60.0
#: default seconds a silent worker (heartbeats stopped, no worker-offline) keeps its queues
SILENT_GRACE = 300.0


@dataclass(slots=True)
class Consumers:
    """What is known about one queue's consumers."""

    #: known consumers (None: RabbitMQ's count not probed yet)
    count: int | None
    source: str
    #: present workers known to consume it
    workers: list[str] = field(default_factory=list)
    #: present workers whose queues are unknown (they did not answer remote control);
    #: listed only while no consumer is known (else the queue is decided)
    unanswered: list[str] = field(default_factory=list)
    #: True when an unanswered worker came online too recently to rule it out
    undecided: bool = False


_PER_WORKER = "workers' active_queues and the tasks they took"


class ConsumerIndex:
    """Every queue's consumers per worker at one instant, from one pass over the workers
    (the evaluation asks for each known queue: a pass per queue would be queues x
    workers under the engine lock). See :func:`queue_consumers` for the rules."""

    __slots__ = ("by_queue", "unanswered", "any_new")

    def __init__(self, state: RuntimeState, now: float,
                 unanswered_grace: float = UNANSWERED_GRACE,
                 silent_grace: float = SILENT_GRACE) -> None:
        #: queue -> present workers known to consume it
        self.by_queue: dict[str, list[str]] = {}
        #: present workers whose queues are unknown
        self.unanswered: list[str] = []
        #: one of them came online within ``unanswered_grace``
        self.any_new = False
        by_queue = self.by_queue
        for worker in state.workers.values():
            if not present(state, worker, now, silent_grace):
                continue
            host = worker.hostname
            active = worker.active_queues
            if active is not None:
                for name in active:
                    by_queue.setdefault(name, []).append(host)
            for name in worker.queues_seen:
                if active is None or name not in active:
                    by_queue.setdefault(name, []).append(host)
            if active is None:
                self.unanswered.append(host)
                came = worker.online_since or worker.created_at
                if now - came < unanswered_grace:
                    self.any_new = True

    def consumers(self, name: str) -> Consumers:
        """The queue's consumers (per worker, never the broker's count). Where it has
        none, every unanswered worker might be one (none took a task from it: that would
        make it a consumer); where it has some, the queue is decided and ``unanswered``
        is left empty (no rule reads it then)."""
        workers = self.by_queue.get(name)
        if workers:
            return Consumers(len(workers), _PER_WORKER, list(workers))
        return Consumers(0, _PER_WORKER, [], list(self.unanswered), self.any_new)


def queue_consumers(state: RuntimeState, queue: QueueRecord, now: float, amqp: bool,
                    unanswered_grace: float = UNANSWERED_GRACE,
                    silent_grace: float = SILENT_GRACE,
                    index: ConsumerIndex | None = None) -> Consumers:
    """The queue's consumers: RabbitMQ's count on AMQP, else per worker (see the module
    docstring), from ``index`` when given (one pass over the workers for many queues)."""
    if amqp:
        return Consumers(queue.consumers, "rabbitmq consumer count",
                         undecided=queue.consumers is None)
    if index is None:
        index = ConsumerIndex(state, now, unanswered_grace, silent_grace)
    return index.consumers(queue.name)


@dataclass(slots=True)
class QueueFacts:
    """Facts about queues that one rule establishes and others read, kept in the rules
    layer (``RuleContext.queue_facts``), never on the state's records."""

    #: queue -> since when no consumer of it is known while it has demand (set and reset
    #: by ``queue_without_consumer`` only)
    unconsumed_since: dict[str, float] = field(default_factory=dict)


def no_consumer(facts: QueueFacts, queue: str) -> bool:
    """The fact "no consumer of this queue is known" (none, or only unanswered workers
    that might consume it) while it has demand, as ``queue_without_consumer`` last
    established it (it runs first; with that rule disabled the fact is never set)."""
    return facts.unconsumed_since.get(queue, 0.0) > 0.0


def routed_tasks(app: AppInfo | None, queue: str, limit: int = 10) -> list[str] | None:
    """Task names the app routes to ``queue`` (None when the app is not loaded)."""
    if app is None:
        return None
    return sorted(name for name, t in app.tasks.items() if t.queue == queue)[:limit]
