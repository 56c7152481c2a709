"""queue_without_consumer: a queue holds messages (or receives tasks) and nobody consumes it.

Evaluated per known queue (seen in task-sent events, declared in the app, or probed):
it has demand when the broker probe shows messages waiting, or (where the queue's length
is not probed) a task-sent event targeted it within ``window_seconds``. Its consumers
come from RabbitMQ's consumer count on AMQP, else per worker (see
:func:`~flower_practices.rules.queue_view.queue_consumers`): a worker that does not
answer remote control leaves the queue undecided for at most
``unanswered_worker_grace_seconds`` and never resets the condition, whose start is kept
in the rules' shared queue facts (``QueueFacts.unconsumed_since``, read by
``queue_starvation`` through
:func:`~flower_practices.rules.queue_view.no_consumer`). Demand with no consumer for
longer than ``grace_seconds`` is a finding; the evidence names the workers that did not
answer.

Occurrences (``count`` and ``celery_practice_violations_total{task=""}``, one series per
queue): the messages that entered the queue while it had no consumer. When it is first
reported, the messages waiting (or, where the length is not probed, the tasks sent to it
since it lost its consumers); then each increase of the probed length, or each task-sent
into it where the length is not probed. How long it has lasted is ``active_seconds`` /
``unconsumed_for_seconds``, never a count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..events.types import TASK_SENT
from ..findings import Condition
from .base import Rule
from .queue_view import (
    ConsumerIndex,
    Consumers,
    counts_consumers,
    live_workers,
    queue_consumers,
    routed_tasks,
)

_MAX_NAMES = 10


class QueueWithoutConsumer(Rule):
    id = "queue_without_consumer"
    judges_silence = True

    @dataclass(frozen=True, slots=True)
    class Options:
        """Typed options (the documented defaults; each may be overridden in
        ``[practices.queue_without_consumer]``)."""

        #: seconds a queue must have demand and no consumer before it is reported
        grace_seconds: float = 60.0
        #: a task-sent to the queue within this many seconds counts as demand
        window_seconds: float = 300.0
        #: a worker whose queues are unknown (it did not answer remote control) may
        #: consume any queue for this long after it came online; later, not having taken
        #: a single task from a queue with messages waiting, it is taken not to consume it
        unanswered_worker_grace_seconds: float = 60.0
        #: a worker whose heartbeats stopped without a worker-offline (a busy solo pool,
        #: or a worker killed with -9) keeps its last known queues this long
        silent_worker_grace_seconds: float = 300.0

    #: this rule's options, typed (set by :class:`Rule`)
    opts: Options

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        self.amqp = counts_consumers(ctx.broker_url)
        #: queue -> since when it has had demand and no known consumer (the shared fact)
        self.since = ctx.queue_facts.unconsumed_since
        self.flagged: set[str] = set()
        #: queue -> (probed length last counted, tasks sent when the condition began)
        self.baseline: dict[str, tuple[int, int]] = {}
        #: this round's consumers per queue (None until a queue with demand asks)
        self._index: ConsumerIndex | None = None
        #: this round's live workers and the queues they consume (built when first needed)
        self._live: tuple[int, list[str]] | None = None

    def hooks(self):
        return {TASK_SENT: self._on_sent}

    def _on_sent(self, event: dict, rec: Any) -> None:
        if rec is None or rec.queue not in self.flagged:
            return
        queue = self.ctx.state.queues.get(rec.queue)
        if queue is not None and queue.length is None:  # else counted from the length
            self.count(rec.queue, None)

    def coverage(self) -> str:
        if not self.ctx.events_supported:
            return ("unsupported: the broker is a database; neither events nor queue probes "
                    "are possible on this transport")
        return "active"

    def evaluate(self, now: float) -> Iterable[Condition]:
        state = self.ctx.state
        grace = self.opts.grace_seconds
        flagged: set[str] = set()
        # every queue's consumers from one pass over the workers, built when first needed
        self._index = None
        self._live = None
        for name, queue in state.queues.items():
            consumers = self._consumers(queue, now)
            if consumers is None or consumers.count != 0:
                if consumers is None or consumers.count:  # no demand, or a known consumer
                    self._reset(queue)
                elif name in self.flagged:  # RabbitMQ's count not probed this round:
                    flagged.add(name)  # keep what was reported
                continue
            since = self.since.get(name)
            if since is None:
                since = self.since[name] = now
                self.baseline[name] = (queue.length or 0, queue.sent)
            if now - since < grace or (consumers.undecided and name not in self.flagged):
                continue  # not yet; or a worker too new to rule out: not reported anew
            flagged.add(name)
            self._count(name, queue, queue.length or 0)
            yield self._condition(queue, consumers, since, now, grace)
        self.flagged = flagged
        for name in [n for n in self.baseline if n not in state.queues]:
            del self.baseline[name]
        for name in [n for n in self.since if n not in state.queues]:
            del self.since[name]

    def _consumers(self, queue: Any, now: float) -> Consumers | None:
        """The queue's consumers when it has demand, else None. Task-sent events are
        demand only where no probe tells the queue's length: a probed, empty queue was
        drained by someone (maybe a worker we cannot see)."""
        recent = queue.length is None and queue.last_sent_at \
            and now - queue.last_sent_at <= self.opts.window_seconds
        if not ((queue.length or 0) > 0 or recent):
            return None
        if self._index is None and not self.amqp:
            self._index = ConsumerIndex(self.ctx.state, now,
                                        self.opts.unanswered_worker_grace_seconds,
                                        self.opts.silent_worker_grace_seconds)
        return queue_consumers(self.ctx.state, queue, now, self.amqp, index=self._index)

    def _condition(self, queue: Any, consumers: Consumers, since: float, now: float,
                   grace: float) -> Condition:
        name, waiting, unconsumed = queue.name, queue.length or 0, now - since
        if self._live is None:  # once per round, for every queue reported in it
            workers = live_workers(self.ctx.state, now)
            self._live = (len(workers),
                          sorted({q for w in workers for q in w.active_queues or ()}))
        n_live, consumed = self._live
        evidence: dict[str, Any] = {
            "messages_waiting": queue.length,
            "consumers": consumers.count if not consumers.undecided else "unknown",
            "consumers_source": consumers.source,
            "unconsumed_for_seconds": round(unconsumed, 1),
            "unconsumed_since": round(since, 3),
            "tasks_sent_seen": queue.sent, "live_workers": n_live,
            "queues_consumed_by_workers": consumed[:20], "grace_seconds": grace,
            "workers_not_answering": sorted(consumers.unanswered)[:_MAX_NAMES],
            "messages_counted": self.occurrences(name, None, None),
        }
        summary = (f"queue '{name}' has "
                   + (f"{waiting} message(s) waiting" if waiting else "tasks sent to it")
                   + f" and no consumer for {unconsumed:.0f}s")
        if consumers.undecided:
            summary += (f" ({len(consumers.unanswered)} worker(s) not answering remote "
                        "control yet)")
        app = self.ctx.app
        if app is not None:
            evidence["source"] = "app config"
            evidence["routed_tasks"] = routed_tasks(app, name)
            evidence["declared_in_app"] = name in app.queues or name == app.default_queue
        return Condition(summary=summary, queue=name, evidence=evidence)

    # -- restarts (flower_practices.store) -------------------------------------------------
    def memory(self) -> Any:
        """The reported queues with the condition's start and the length last counted, so
        a restart keeps ``unconsumed_since`` and does not count the waiting messages again."""
        queues = self.ctx.state.queues
        return {name: [self.since.get(name, 0.0), self.baseline.get(name, (0, 0))[0]]
                for name in self.flagged if name in queues}

    def restore_memory(self, data: Any, now: float) -> None:
        if not isinstance(data, dict):
            return
        state = self.ctx.state
        for name, (since, length) in list(data.items())[:state.settings.max_queues]:
            since, length = float(since), int(length)
            if not (0.0 < since <= now) or length < 0:
                continue
            queue = state.queue(str(name))
            if queue is None:
                continue
            self.since[queue.name] = since
            self.baseline[queue.name] = (length, queue.sent)
            self.flagged.add(queue.name)

    def _reset(self, queue: Any) -> None:
        self.since.pop(queue.name, None)
        self.baseline.pop(queue.name, None)

    def _count(self, name: str, queue: Any, waiting: int) -> None:
        """Count the messages that entered the queue while unconsumed (module docstring)."""
        length, sent_at_start = self.baseline.get(name, (waiting, queue.sent))
        if name not in self.flagged:  # first reported now
            n = waiting if queue.length is not None else queue.sent - sent_at_start
            self.count(name, None, max(1, n))
            self.baseline[name] = (waiting, queue.sent)
            return
        if queue.length is not None:
            if waiting > length:
                self.count(name, None, waiting - length)
            self.baseline[name] = (waiting, queue.sent)
