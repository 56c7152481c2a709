"""prefetch_starvation: tasks wait reserved on a busy worker while a peer sits idle.

No hooks: the state keeps when each worker was last active (``last_task_at``: the
worker's timestamp of its last task event). ``evaluate``
reads each live worker's reserved tasks (the state's per-worker index; tasks with an
``eta``, and those of tasks with a ``rate_limit`` in the app's configuration, wait on
purpose and are left out) for tasks received but not started on a live
worker that is busy (running >= its pool
size, from ``inspect stats``; >= 1 when unknown) and that have waited at least
``min_wait_seconds``, and looks for another live worker consuming the same queue
(``active_queues`` from the probes) that has had nothing to do for at least as long.

After a blind window of the event stream the reserved index holds only tasks heard
received since its end (``RuntimeState.settle``): one received before it may have run
unheard, so it is not taken for waiting -- no page on a phantom backlog; tasks received
after the return page as usual.

Tasks held by a ``rate_limit`` wait reserved on purpose (with the app loaded they are
left out, as above; without it, the worker holding them has free pool slots: not busy).
Workers started ``--without-heartbeat`` are never live
by heartbeats and are not judged (neither as busy nor as idle peers).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..bounded import LRUDict
from ..findings import Condition
from .base import Rule
from .queue_view import live_workers


class PrefetchStarvation(Rule):
    id = "prefetch_starvation"
    judges_silence = True

    @dataclass(frozen=True, slots=True)
    class Options:
        """Typed options (the documented defaults; each may be overridden in
        ``[practices.prefetch_starvation]``)."""

        #: a reserved task must have waited this long (and a peer been idle this long)
        min_wait_seconds: float = 30.0

    #: this rule's options, typed (set by :class:`Rule`)
    opts: Options

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        self.counted: LRUDict[str, bool] = LRUDict(20_000)

    def coverage(self) -> str:
        if not self.ctx.events_supported:
            return "unsupported: the broker is a database; no events or worker probes"
        return "active"

    @staticmethod
    def _reserved(state: Any, workers: dict[str, Any], now: float, min_wait: float
                  ) -> tuple[dict[tuple[str, str], list[Any]], dict[str, int]]:
        """From each live worker's reserved tasks (the state's per-worker index, never
        every tracked task), tasks with an ``eta`` left out: (worker, queue) -> tasks
        reserved for at least ``min_wait`` (not those of a rate-limited task: they wait
        for their rate, not for a slot), and worker -> tasks reserved."""
        throttled = state.rate_limited
        waiting: dict[tuple[str, str], list[Any]] = {}
        reserved: dict[str, int] = {}
        for host, worker in workers.items():
            for rec in worker.reserved_tasks.values():
                if rec.eta:
                    continue
                reserved[host] = reserved.get(host, 0) + 1
                if rec.queue and now - rec.received_at >= min_wait \
                        and rec.name not in throttled:
                    waiting.setdefault((host, rec.queue), []).append(rec)
        return waiting, reserved

    def evaluate(self, now: float) -> Iterable[Condition]:
        state = self.ctx.state
        min_wait = self.opts.min_wait_seconds
        workers = {w.hostname: w for w in live_workers(state, now)}
        if len(workers) < 2:
            return
        waiting, reserved = self._reserved(state, workers, now, min_wait)
        # workers with nothing to do for min_wait: once per round, not per busy worker
        idle_workers = [w for name, w in workers.items()
                        if w.active_queues is not None and not w.running
                        and not reserved.get(name)
                        and now - (w.last_task_at or w.online_since) >= min_wait]
        if not idle_workers:
            return
        for (host, queue), recs in sorted(waiting.items()):
            busy = workers[host]
            if busy.running < (busy.concurrency or 1):
                continue  # it has a free slot: the wait is not prefetch
            idle = [w for w in idle_workers
                    if w.hostname != host and queue in (w.active_queues or ())]
            if idle:
                self._count_waiting(host, queue, recs)
                yield self._condition(busy, queue, recs, idle, now, min_wait)

    def _count_waiting(self, host: str, queue: str, recs: list[Any]) -> None:
        """Count each starved reserved task once."""
        for r in recs:
            if r.uuid not in self.counted:
                self.counted.put(r.uuid, True)
                self.count(queue, r.name or None, worker=host)

    def _condition(self, busy: Any, queue: str, recs: list[Any], idle: list[Any],
                   now: float, min_wait: float) -> Condition:
        oldest = max(now - r.received_at for r in recs)
        tasks = sorted({r.name for r in recs if r.name})
        evidence: dict[str, Any] = {
            "reserved_waiting": len(recs), "oldest_reserved_seconds": round(oldest, 1),
            "tasks": tasks[:10], "busy_worker_running": busy.running,
            "busy_worker_concurrency": busy.concurrency,
            "busy_worker_prefetch_count": busy.prefetch,
            "idle_workers": sorted(w.hostname for w in idle)[:10],
            "min_wait_seconds": min_wait,
        }
        prefetch = busy.prefetch if busy.prefetch is not None else "?"
        summary = (f"{len(recs)} task(s) of queue '{queue}' wait reserved on busy worker "
                   f"{busy.hostname} (running {busy.running}/{busy.concurrency or '?'}, "
                   f"prefetch {prefetch}) while {len(idle)} worker(s) consuming '{queue}' "
                   "sit idle: set worker_prefetch_multiplier=1 with task_acks_late=True")
        app = self.ctx.app
        if app is not None:
            evidence["source"] = "app config"
            evidence["prefetch_multiplier"] = app.prefetch_multiplier
            evidence["acks_late"] = {t: bool(app.tasks[t].acks_late)
                                     for t in tasks[:10] if t in app.tasks}
        return Condition(summary=summary, queue=queue, worker=busy.hostname,
                         evidence=evidence)
