"""stalled_consumer: live workers list a queue, it holds and gains messages, nobody takes any.

The zombie consumer: after a broker failover or a NAT/firewall timeout the worker's
consuming connection is half-open (a Redis ``BRPOP`` or an AMQP ``basic.consume`` whose
replies never come) while its other connections -- events (heartbeats) and, on Redis,
remote control -- still work. The worker looks healthy (heartbeats; on Redis ``inspect
active_queues`` lists the queue) and consumes nothing. On RabbitMQ Celery's remote
control (pidbox) consumes on the same connection as the tasks, so a zombie stops
answering ``inspect``: its last known ``active_queues`` (kept while it is present) stand,
and a worker that never answered lists the queues it received tasks from.

Evaluated per probed queue (its length from the broker probe, at most
``stale_probe_seconds`` old). The queue is *watched* while it holds messages and live
workers (:meth:`~flower_practices.state.WorkerRecord.alive`, heartbeats) list it: in their
``active_queues`` (remote control probes) or, for a worker whose queues are unknown, by
having received a task from it; the watch starts over when the queue empties or its
length falls below where the watch began (someone consumed). On RabbitMQ the length is
the queue's *ready* messages (passive ``queue.declare``): the broker keeps delivering up
to the zombie's prefetch count into the dead connection (unacknowledged, not counted),
so the queue starts to grow only after that many messages. A finding needs, for
``threshold_seconds``:

- the queue held messages and its length grew by at least ``min_growth`` since the
  watch began;
- no listing worker took a task from it (a task-received or task-started naming the
  queue: the state's ``WorkerRecord.queues_seen``, worker -> queue -> last time), counted
  from the latest of the watch's start, the worker's last task from the queue and when
  it came online;
- at least one listing worker had free capacity all along -- not saturation. A worker
  is *busy* when its running tasks (the larger of the state's per-worker running index
  and the ``active`` count of its heartbeats) reach its pool size (``inspect stats``
  ``pool.max-concurrency``; 1 when unknown), or when its running plus reserved tasks
  without an ETA reach its prefetch count (``inspect stats`` ``prefetch_count``):
  such a worker fetches nothing by design (after a blind window of the event stream the
  reserved tasks are those heard received since: ``RuntimeState.settle``). Only workers
  not seen busy for ``threshold_seconds`` are reported (their stall counted from when
  they were last busy), so a saturated worker between two tasks is never taken for a
  zombie.

A worker holding ``rate_limit`` tasks fills its prefetch count with them and fetches
nothing until its token bucket lets one through: busy by the second criterion, never a
zombie. Workers started ``--without-heartbeat`` are never live by heartbeats: their
queues are not watched (what a silent one does cannot be known).

A queue ``queue_without_consumer`` explains (no known consumer: ``QueueFacts``) is left
to it: one cause, one finding.

Occurrences (``count`` and ``celery_practice_violations_total{task=""}``): the messages
that entered the queue while it was stalled -- the growth since the watch began when it
is first reported, then each increase of the probed length.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..findings import Condition
from .base import Rule
from .queue_view import live_workers, no_consumer

#: seconds between two passes that drop what the state forgot
_FORGET_INTERVAL = 60.0
_MAX_NAMES = 10


class StalledConsumer(Rule):
    id = "stalled_consumer"
    judges_silence = True

    @dataclass(frozen=True, slots=True)
    class Options:
        """Typed options (the documented defaults; each may be overridden in
        ``[practices.stalled_consumer]``)."""

        #: seconds the queue must hold and gain messages while its live, not saturated
        #: consumers receive nothing from it
        threshold_seconds: float = 120.0
        #: messages the queue must have gained since the watch began
        min_growth: int = 1
        #: a queue length probed longer ago than this is not judged
        stale_probe_seconds: float = 60.0

    #: this rule's options, typed (set by :class:`Rule`)
    opts: Options

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        #: queue -> [watch start, length when it began, length last counted, 1.0 once
        #: reported in this watch (its growth is then counted)]
        self.watch: dict[str, list[float]] = {}
        #: worker -> when it was last seen busy (saturated)
        self.busy_at: dict[str, float] = {}
        self.flagged: set[str] = set()
        #: live workers whose queues, in the last evaluation, came from their receipts
        self.from_receipts: set[str] = set()
        self._forgot_at = 0.0

    def coverage(self) -> str:
        if not self.ctx.events_supported:
            return ("unsupported: the broker is a database; neither events nor queue probes "
                    "are possible on this transport")
        return "active"

    # -- evaluation ----------------------------------------------------------------------
    @staticmethod
    def _busy(worker: Any) -> bool:
        running = max(worker.running, worker.active)
        if running >= (worker.concurrency or 1):
            return True
        if worker.prefetch:
            reserved = sum(1 for r in worker.reserved_tasks.values() if not r.eta)
            return running + reserved >= worker.prefetch
        return False

    def _forget(self, now: float) -> None:
        """Drop busy marks and watches of workers and queues the state forgot (at most
        once a minute: the tables are bounded, the pass need not run each round)."""
        if now - self._forgot_at < _FORGET_INTERVAL:
            return
        self._forgot_at = now
        workers = self.ctx.state.workers
        queues = self.ctx.state.queues
        for host in [h for h in self.busy_at if h not in workers]:
            del self.busy_at[host]
        for name in [n for n in self.watch if n not in queues]:
            del self.watch[name]

    def evaluate(self, now: float) -> Iterable[Condition]:
        state = self.ctx.state
        self._forget(now)
        workers = live_workers(state, now)
        for w in workers:
            if self._busy(w):
                self.busy_at[w.hostname] = now
        listing: dict[str, list[Any]] = {}
        self.from_receipts = set()
        for w in workers:
            queues = w.active_queues
            if queues is None:  # never answered remote control: the queues it took from
                queues = list(w.queues_seen)
                if queues:
                    self.from_receipts.add(w.hostname)
            for q in queues:
                listing.setdefault(q, []).append(w)
        flagged: set[str] = set()
        for name, queue in state.queues.items():
            condition = self._judge(name, queue, listing.get(name, ()), now)
            if condition is not None:
                flagged.add(name)
                yield condition
        self.flagged = flagged

    def _judge(self, name: str, queue: Any, consumers: Any, now: float) -> Condition | None:
        length = queue.length
        if not consumers or not length or no_consumer(self.ctx.queue_facts, name):
            self.watch.pop(name, None)  # nothing waiting, or queue_without_consumer's case
            return None
        if now - queue.probed_at > self.opts.stale_probe_seconds:
            return None  # a stale probe keeps the watch and judges nothing
        watch = self.watch.get(name)
        if watch is None or length < watch[1]:
            watch = self.watch[name] = [now, float(length), float(length), 0.0]
        threshold = self.opts.threshold_seconds
        grown = length - watch[1]
        stalled = [(w, self._stalled_since(w, name, watch[0])) for w in consumers]
        if grown < self.opts.min_growth \
                or any(now - since < threshold for _, since in stalled):
            return None
        free = [(w, max(since, busy)) for w, since in stalled
                if now - (busy := self.busy_at.get(w.hostname, 0.0)) >= threshold]
        if not free:
            return None
        self._count(name, length, watch)
        return self._condition(queue, watch, stalled, free, now)

    def _stalled_since(self, worker: Any, queue: str, watch_start: float) -> float:
        """Since when ``worker`` took nothing from ``queue`` while it was watched."""
        last = worker.queues_seen.get(queue, 0.0)
        came = worker.online_since or worker.created_at
        # what it took while the stream was down went unheard
        return self.ctx.state.hearing.heard_from(max(watch_start, last, came),
                                                 self.opts.threshold_seconds)

    def _count(self, name: str, length: int, watch: list[float]) -> None:
        """Count the messages that entered the queue while stalled (once per watch: a
        report that pauses and resumes, or survives a restart, does not count again)."""
        if not watch[3]:
            self.count(name, None, max(1, int(length - watch[1])))
            watch[3] = 1.0
        elif length > watch[2]:
            self.count(name, None, int(length - watch[2]))
        watch[2] = max(watch[2], float(length))

    def _condition(self, queue: Any, watch: list[float], stalled: list[tuple[Any, float]],
                   free: list[tuple[Any, float]], now: float) -> Condition:
        name, length = queue.name, queue.length
        since = max(s for _, s in free)
        details = [{"worker": w.hostname, "nothing_received_since": round(s, 3),
                    "nothing_received_for_seconds": round(now - s, 1),
                    "last_received_from_queue":
                        round(r, 3) if (r := w.queues_seen.get(name, 0.0)) else None,
                    "running": max(w.running, w.active), "pool_size": w.concurrency,
                    "prefetch_count": w.prefetch}
                   for w, s in sorted(free, key=lambda x: x[0].hostname)[:_MAX_NAMES]]
        evidence: dict[str, Any] = {
            "queue_length": length, "queue_length_at_watch_start": int(watch[1]),
            "queue_growth": int(length - watch[1]),
            "watched_since": round(watch[0], 3), "stalled_for_seconds": round(now - since, 1),
            "listing_workers": sorted(w.hostname for w, _ in stalled)[:_MAX_NAMES],
            "stalled_workers": details,
            "saturated_workers": sorted({w.hostname for w, _ in stalled}
                                        - {w.hostname for w, _ in free})[:_MAX_NAMES],
            "queues_known_from_receipts": sorted(
                w.hostname for w, _ in stalled if w.hostname in self.from_receipts
            )[:_MAX_NAMES],
            "consumers_source": "workers' active_queues (inspect), else the queues they "
                                "received tasks from, and heartbeats",
            "busy_source": "running: max(state's running tasks, heartbeat 'active'); pool "
                           "size and prefetch: inspect stats",
            "threshold_seconds": self.opts.threshold_seconds,
            "messages_counted": self.occurrences(name, None, None),
        }
        summary = (f"queue '{name}' holds {length} message(s) (+{int(length - watch[1])}) "
                   f"while {len(free)} live worker(s) listing it with free pool slots "
                   f"received nothing from it for {now - since:.0f}s: a stalled (zombie) "
                   "consumer")
        return Condition(summary=summary, queue=name, evidence=evidence)

    # -- restarts (flower_practices.store) -------------------------------------------------
    def memory(self) -> Any:
        """The reported queues' watch (start, lengths at the start and last counted), so
        a restart does not count the messages again. The workers' receipts are not kept:
        after a restart the stall must last ``threshold_seconds`` again from the workers'
        first heartbeats (the restored finding is held meanwhile, see ``restore_hold``)."""
        return {name: list(self.watch[name]) for name in self.flagged if name in self.watch}

    def restore_memory(self, data: Any, now: float) -> None:
        if not isinstance(data, dict):
            return
        state = self.ctx.state
        for name, item in list(data.items())[:state.settings.max_queues]:
            try:
                start, base, counted = item[:3]
                start, base, counted = float(start), float(base), float(counted)
            except (TypeError, ValueError):
                continue
            if not (0.0 < start <= now) or base < 0 or counted < 0:
                continue
            queue = state.queue(str(name))
            if queue is None:
                continue
            self.watch[queue.name] = [start, base, counted, 1.0]
            self.flagged.add(queue.name)
