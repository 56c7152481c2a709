"""queue_starvation: tasks of a queue wait too long before they start.

The waits are the state's (each queue's ring of task-sent -> task-started waits, or
task-received -> task-started when sent events are off; tasks that carry an ``eta`` wait
on purpose and are left out, and so do tasks with a ``rate_limit`` in the app's
configuration: a worker keeps them reserved until their rate allows). Hooks:
task-started counts each wait over ``max_wait_seconds``; task runtimes are added per
(worker, queue) to windowed counters of busy time. ``evaluate`` flags a queue whose wait
p95 over ``window_seconds`` (at least ``min_samples`` waits), or whose oldest waiting
task, exceeds ``max_wait_seconds``. A queue with no consumer
(:func:`~flower_practices.rules.queue_view.no_consumer`, the fact
``queue_without_consumer`` reports) is never reported here: one cause, one finding.
The evidence names the queues whose tasks occupied the workers that consume the starved
queue (``occupied_by``: runs finished in the window, ``busy_seconds``, and runs going on,
``running_now``/``running_seconds``); the summary calls it a priority inversion only when
another queue's tasks held those workers at least ``max_wait_seconds`` in all (a few short
runs on a loaded machine are not what starved the queue). And the backlog both ways:
``queue_length`` (the broker's count) and ``reserved_on_workers`` (received by live
workers, not started: prefetched messages the broker no longer counts).

Rate limits: Celery keeps a task that waits for its rate limit reserved, in the worker's
prefetch, so a worker full of them fetches nothing else -- other queues it consumes
starve (a well-known pitfall; the fix is a worker of their own for the rate-limited
tasks). Such a starved queue is reported, with ``rate_limited_reserved`` (rate-limited
tasks held by its workers now) in the evidence and the cause in the summary; the
rate-limited queue itself is not (its tasks wait for their rate). Without the app
(``-A``) rate limits are unknown and such waits count like any other.
A backlog growing without bound behind a rate limit (fed faster than the limits let
through) is not starvation by other work: it shows as the queue's length and reserved
tasks (``celery_queue_length``, ``celery_queue_reserved_tasks``, the Queues dashboard).
``prefetch_starvation`` and ``stalled_consumer`` do not take such held tasks for their
cases either.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..bounded import WindowCounter, percentile
from ..events.types import (
    TASK_FAILED,
    TASK_RECEIVED,
    TASK_RETRIED,
    TASK_SENT,
    TASK_STARTED,
    TASK_SUCCEEDED,
)
from ..findings import Condition
from .base import Rule
from .queue_view import live_workers, no_consumer, routed_tasks

_MAX_PAIRS = 5000


class QueueStarvation(Rule):
    id = "queue_starvation"
    judges_silence = True

    @dataclass(frozen=True, slots=True)
    class Options:
        """Typed options (the documented defaults; each may be overridden in
        ``[practices.queue_starvation]``)."""

        #: a queue's wait p95 (or its oldest waiting task) above this is starvation
        max_wait_seconds: float = 60.0
        #: window the p95 and the workers' busy time are taken over
        window_seconds: float = 300.0
        #: waits needed in the window before the p95 is judged
        min_samples: int = 5
        #: percentile of the wait compared with max_wait_seconds
        percentile: float = 95.0

    #: this rule's options, typed (set by :class:`Rule`)
    opts: Options

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        self.window = self.opts.window_seconds
        self.max_wait = self.opts.max_wait_seconds
        #: (worker, queue) -> (tasks started, busy milliseconds) in the window
        self.busy: dict[tuple[str, str], tuple[WindowCounter, WindowCounter]] = {}
        #: worker -> queue -> tasks running now (live workers, as of this round)
        self._running: dict[str, dict[str, int]] = {}
        #: this round's totals of the workers asked for: worker -> (queue, tasks started,
        #: busy seconds) of its pairs busy in the window (the evidence of a starved queue
        #: reads its workers' pairs only, never all of them)
        self._busy_now: dict[str, list[tuple[str, int, float]]] = {}
        #: this round's index of ``busy``: worker -> its queues, queue -> its workers
        self._pairs: tuple[dict[str, list[str]], dict[str, list[str]]] | None = None
        #: this round's live workers by hostname (built when a queue is reported)
        self._live: dict[str, Any] | None = None
        #: queue -> tasks prefetched by live workers, as of this round (built on demand)
        self._reserved: dict[str, int] | None = None
        #: this round's occupancy evidence per set of shared workers: starved queues
        #: consumed by the same workers (the usual inversion) share one computation
        self._occupancy: dict[frozenset[str], tuple[list[str], list[dict[str, Any]], int]] = {}

    def hooks(self):
        return {TASK_STARTED: self._on_started, TASK_SUCCEEDED: self._on_done,
                TASK_FAILED: self._on_done, TASK_RETRIED: self._on_done}

    def coverage(self) -> str:
        if not self.ctx.events_supported:
            return "unsupported: the broker is a database; no task events can flow"
        return "active"

    def _pair(self, worker: str, queue: str) -> tuple[WindowCounter, WindowCounter] | None:
        key = (worker, queue)
        pair = self.busy.get(key)
        if pair is None:
            if len(self.busy) >= _MAX_PAIRS:
                return None
            pair = self.busy[key] = (WindowCounter(self.window), WindowCounter(self.window))
        return pair

    def _on_started(self, event: dict, rec: Any) -> None:
        if rec is None or not rec.queue:
            return
        host = event.get("hostname")
        if isinstance(host, str) and host:
            pair = self.busy.get((host, rec.queue)) or self._pair(host, rec.queue)
            if pair is not None:
                pair[0].add(event["timestamp"])
        wait = rec.wait  # measured by the state; None: no base or not waiting
        if wait is not None and wait > self.max_wait and not rec.eta \
                and rec.name not in self.ctx.state.rate_limited:
            self.count(rec.queue, rec.name or None)

    def _on_done(self, event: dict, rec: Any) -> None:
        if rec is None or not rec.queue or not rec.started_at:
            return
        host = event.get("hostname") or rec.hostname
        if not isinstance(host, str) or not host:
            return
        pair = self.busy.get((host, rec.queue)) or self._pair(host, rec.queue)
        if pair is not None:
            ms = int(max(0.0, event["timestamp"] - rec.started_at) * 1000)
            pair[1].add(event["timestamp"], ms)

    def _scan(self, now: float) -> dict[str, tuple[float, int]]:
        """queue -> (oldest waiting age, tasks waiting), from the state's indexes (never
        every tracked task): each queue's pending tasks (sent, no eta, not taken yet;
        left out when the probe shows the queue empty: consumed without events) and each
        live worker's reserved tasks; also fills ``self._running`` with (worker, queue)
        -> tasks running now."""
        state = self.ctx.state
        throttled = state.rate_limited
        out: dict[str, tuple[float, int]] = {}
        unsure = state.hearing.unsure
        for name, q in state.queues.items():
            if q.pending and q.length != 0:
                # pending is oldest first; a few heads cover re-sent (retried) records
                ages = [now - rec.sent_at for rec in state.waiting_heads(q, 8)
                        if rec.name not in throttled]
                if ages:
                    out[name] = (max(ages), len(q.pending))
        running: dict[str, dict[str, list[float]]] = {}
        self._running = running
        for worker in state.workers.values():
            if not worker.alive(now):
                continue
            if worker.running_tasks:
                mine = running[worker.hostname] = {}
                for rec in worker.running_tasks.values():
                    if rec.queue:
                        acc = mine.get(rec.queue)
                        if acc is None:
                            acc = mine[rec.queue] = [0, 0.0]
                        acc[0] += 1
                        if rec.started_at and not unsure(rec.updated_at):
                            acc[1] += max(0.0, now - rec.started_at)
            for rec in worker.reserved_tasks.values():
                base = rec.sent_at or rec.received_at
                if not rec.queue or rec.eta or not base or rec.name in throttled \
                        or unsure(rec.updated_at):  # it may have started unheard
                    continue
                age, n = out.get(rec.queue, (0.0, 0))
                out[rec.queue] = (max(age, now - base), n + 1)
        return out

    def _unconsumed(self, queue: str, now: float) -> bool:
        """The queue has no consumer: queue_without_consumer's finding, not this one's."""
        return no_consumer(self.ctx.queue_facts, queue)

    def _worker_totals(self, worker: str, now: float) -> list[tuple[str, int, float]]:
        """(queue, tasks started, busy seconds) of ``worker``'s pairs busy in the window
        (memoised for the round)."""
        totals = self._busy_now.get(worker)
        if totals is None:
            totals = self._busy_now[worker] = []
            busy = self.busy
            for q in self._pair_index()[0].get(worker, ()):
                started, busy_ms = busy[worker, q]
                n, ms = started.total(now), busy_ms.total(now)
                if n or ms:
                    totals.append((q, n, ms / 1000.0))
        return totals

    def _pair_index(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """worker -> queues and queue -> workers of the busy pairs, once per round."""
        if self._pairs is None:
            by_worker: dict[str, list[str]] = {}
            by_queue: dict[str, list[str]] = {}
            for worker, q in self.busy:
                by_worker.setdefault(worker, []).append(q)
                by_queue.setdefault(q, []).append(worker)
            self._pairs = (by_worker, by_queue)
        return self._pairs

    def _inversion(self, queue: str, now: float) -> dict[str, Any]:
        """Which queues' tasks occupied the workers that consume ``queue``: their busy
        pairs and running tasks only (never every pair: churned pods leave thousands)."""
        if self._live is None:
            self._live = {w.hostname: w for w in live_workers(self.ctx.state, now)}
        live = self._live
        shared = {host for host, w in live.items()
                  if w.active_queues is not None and queue in w.active_queues}
        if not shared:  # queues unknown (no remote control): the workers that took its
            # tasks in the window, the live ones when there are (churned pods are not)
            busy = self.busy
            took = [w for w in self._pair_index()[1].get(queue, ())
                    if not busy[w, queue][0].idle(now)]
            shared = {w for w in took if w in live} or set(took)
        key = frozenset(shared)
        memo = self._occupancy.get(key)
        if memo is None:
            memo = self._occupancy[key] = self._occupied(shared, now)
        workers, occupied, held = memo
        # copies: each finding's evidence is its own
        return {"shared_workers": list(workers), "occupied_by": [dict(o) for o in occupied],
                "rate_limited_reserved": held}

    def _occupied(self, shared: set[str], now: float
                  ) -> tuple[list[str], list[dict[str, Any]], int]:
        """The evidence :meth:`_inversion` gives for the workers ``shared``: the first ten
        of them by name, the five busiest queues that occupied them (busy in the window
        or running now) and the rate-limited tasks they hold reserved."""
        per_queue: dict[str, list[float]] = {}
        running: dict[str, list[float]] = {}
        for worker in shared:
            for q, started, busy_seconds in self._worker_totals(worker, now):
                acc = per_queue.setdefault(q, [0.0, 0.0])
                acc[0] += started
                acc[1] += busy_seconds
            for q, (n, seconds) in self._running.get(worker, {}).items():
                acc = running.setdefault(q, [0, 0.0])
                acc[0] += n
                acc[1] += seconds
        total_busy = sum(v[1] for v in per_queue.values()) or 0.0
        occupied = []
        for q in {**per_queue, **running}:  # the queues busy in the window or running now
            started, busy = per_queue.get(q, (0.0, 0.0))
            n, seconds = running.get(q, (0, 0.0))
            occupied.append({
                "queue": q, "tasks_started": int(started), "busy_seconds": round(busy, 1),
                "busy_share": round(busy / total_busy, 3)
                if total_busy and q in per_queue else None,
                "running_now": int(n), "running_seconds": round(seconds, 1)})
        occupied.sort(key=lambda d: (-d["busy_seconds"], -d["running_now"], d["queue"]))
        return sorted(shared)[:10], occupied[:5], self._rate_limited_reserved(shared)

    def _rate_limited_reserved(self, shared: set[str]) -> int:
        """Tasks with a rate limit held reserved (prefetched) by ``shared`` workers."""
        state = self.ctx.state
        throttled = state.rate_limited
        if not throttled:
            return 0
        n = 0
        for host in shared:
            worker = state.workers.get(host)
            if worker is not None:
                n += sum(1 for rec in worker.reserved_tasks.values()
                         if rec.name in throttled)
        return n

    def evaluate(self, now: float) -> Iterable[Condition]:
        cutoff = now - self.window
        pct = self.opts.percentile
        min_samples = self.opts.min_samples
        # pairs with nothing in the window, or of a worker the state forgot (pods gone),
        # dropped (O(1) each); totals are asked for per pair
        busy = self.busy
        workers = self.ctx.state.workers
        for key in [k for k, (started, ms) in busy.items()
                    if k[0] not in workers or (started.idle(now) and ms.idle(now))]:
            del busy[key]
        self._busy_now = {}
        self._pairs = None
        self._live = None
        self._occupancy = {}
        oldest = self._scan(now)
        self._reserved = None  # built once per round, when something is flagged
        queues = self.ctx.state.queues
        for queue in sorted({n for n, q in queues.items() if q.waits.filled} | set(oldest)):
            if self._unconsumed(queue, now):
                continue  # one cause, one finding: queue_without_consumer reports it
            qrec = queues.get(queue)
            values = qrec.waits.since(cutoff) if qrec is not None else []
            p = percentile(values, pct) if len(values) >= min_samples else math.nan
            age, waiting = oldest.get(queue, (0.0, 0))
            reasons = []
            if not math.isnan(p) and p > self.max_wait:
                reasons.append(f"wait p{pct:g} {p:.1f}s over {len(values)} task(s)")
            if age > self.max_wait:
                reasons.append(f"oldest waiting task {age:.0f}s old")
            if reasons:
                evidence: dict[str, Any] = {
                    f"wait_p{pct:g}_seconds": None if math.isnan(p) else round(p, 2),
                    "samples": len(values), "oldest_waiting_seconds": round(age, 1),
                    "tasks_waiting": waiting,
                }
                yield self._condition(queue, reasons, evidence, now)

    def _condition(self, queue: str, reasons: list[str], evidence: dict[str, Any],
                   now: float) -> Condition:
        inversion = self._inversion(queue, now)
        if self._reserved is None:
            self._reserved = {q.name: n for q, n in
                              self.ctx.state.reserved_by_queue(now).items()}
        qrec = self.ctx.state.queues.get(queue)
        evidence.update({
            "max_wait_seconds": self.max_wait, "window_seconds": self.window,
            # the backlog as the operator sees it: in the broker, and prefetched by live
            # workers but not started (celery_queue_reserved_tasks)
            "queue_length": qrec.length if qrec is not None else None,
            "reserved_on_workers": self._reserved.get(queue, 0),
            "wait_measured_from": TASK_RECEIVED
            if qrec is not None and qrec.waits_from_received else TASK_SENT,
            **inversion,
        })
        # an inversion only when another queue's tasks held the shared workers at least
        # as long as the wait limit (finished runs in the window plus the runs going on):
        # a few short runs on a loaded machine are not what starved the queue
        others = [o for o in inversion["occupied_by"] if o["queue"] != queue
                  and o["busy_seconds"] + o["running_seconds"] >= self.max_wait]
        others.sort(key=lambda o: -(o["busy_seconds"] + o["running_seconds"]))
        summary = f"queue '{queue}' is starved: " + "; ".join(reasons) + \
            f" (limit {self.max_wait:g}s)"
        held = inversion["rate_limited_reserved"]
        if held:
            summary += (f"; its workers hold {held} rate-limited task(s) in their prefetch "
                        "(a task waiting for its rate_limit stays reserved, so the worker "
                        "fetches nothing else)")
        elif others:
            top = others[0]
            share = top["busy_share"]
            summary += (f"; its workers are occupied by '{top['queue']}' tasks"
                        + (f" ({share:.0%} of their busy time)" if share else "")
                        + " (priority inversion)")
        app = self.ctx.app
        if app is not None:
            evidence["source"] = "app config"
            evidence["routed_tasks"] = routed_tasks(app, queue)
            evidence["prefetch_multiplier"] = app.prefetch_multiplier
        return Condition(summary=summary, queue=queue, evidence=evidence)
