"""unread_results: results written to a Redis result backend that nobody reads.

The task-succeeded hook samples task ids into a bounded queue (O(1), no I/O). In
:meth:`prepare` (outside the engine lock), ids older than ``grace_seconds`` are checked in
one pipelined round trip of ``OBJECT IDLETIME celery-task-meta-<id>`` (at most
``max_checks_per_evaluation`` per run); :meth:`evaluate` (under the lock) turns the
replies into verdicts: an idle time about equal to the age since task-succeeded means
the key was never read. Only key metadata is read, never the stored result.

Verdicts are kept per (queue, task), at most ``max_samples`` of them and none older than
``window_seconds``; the unread share is taken over the *judged* ones (read or unread) and
a finding needs at least ``min_samples`` of those. So a finding clears once its task
stops running (its verdicts age out), and once results stop being stored (below).

A key that is absent at check time is *missing*: neither read nor unread. It means the
result was never stored (``ignore_result=True``: the advised fix), was read and deleted
(``AsyncResult.forget()``), expired (``result_expires`` shorter than ``grace_seconds``) or
was evicted under ``maxmemory``. None of these is a result sitting unread in Redis now, but
an eviction may well hide one, so a missing key never counts as read: it only takes a
slot in the task's existing verdicts (it opens none) and is reported as
``missing_results``. After the fix, missing verdicts push out the unread ones and the
finding clears within about ``max_samples - min_samples`` successes, or
``window_seconds`` at the latest. Should most unread results be evicted before
``grace_seconds``, the task can drop below ``min_samples`` and go unflagged: lower
``grace_seconds`` there.

A Redis that is slow or gone never blocks events: the I/O runs without the engine lock.
A failed round trip is logged once, counted in
``flower_practices_probe_errors_total{probe="result_backend"}``, its ids are kept for
later, and no call is made for ``error_backoff_seconds``.

Limitation: a client blocked in ``AsyncResult.get()`` *before* the task finished receives
the result over pub/sub and never touches the key, so such reads are invisible here.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any, NoReturn

from ..brokers import scheme
from ..findings import Condition
from .base import ProbeFailed, Rule, RuleContext

log = logging.getLogger("flower_practices.rules.unread_results")

_MAX_TASKS = 1000
#: the ``probe`` label of flower_practices_probe_errors_total for result backend calls
PROBE = "result_backend"

#: (task id, task-succeeded time, queue, task name)
Sample = tuple[str, float, str, str]
#: (checked at, verdict): True unread, False read, None result key missing
Verdict = tuple[float, bool | None]


class UnreadResults(Rule):
    id = "unread_results"
    defaults = {
        #: a result is checked this long after its task-succeeded event
        "grace_seconds": 60.0,
        #: share of sampled results left unread needed for a finding
        "min_share": 0.9,
        #: checked results (per task and queue) needed before judging
        "min_samples": 20,
        #: verdicts kept per task and queue (the share is taken over these)
        "max_samples": 100,
        #: verdicts older than this are forgotten, so a finding clears once a task stops running
        "window_seconds": 3600.0,
        #: sample one success in every N per task (1: every success)
        "sample_every": 1,
        #: sampled ids waiting for their check, at most (older ones are dropped)
        "max_pending": 5000,
        #: OBJECT IDLETIME lookups per evaluation (one pipelined round trip)
        "max_checks_per_evaluation": 500,
        #: slack (seconds) for clock skew and Redis' 1-second idle-time resolution
        "tolerance_seconds": 2.0,
        #: after a failed Redis call, wait this long before trying again
        "error_backoff_seconds": 60.0,
        #: task names never sampled (e.g. results confirmed read over pub/sub)
        "ignore_tasks": [],
    }

    def __init__(self, ctx: RuleContext, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        # pending and seen are shared with the hook; the rest is touched by the
        # evaluation only (prepare holds the engine lock whenever it touches any of it)
        self.pending: deque[Sample] = deque(maxlen=int(options["max_pending"]))
        self.seen: dict[tuple[str, str], int] = {}
        self.verdicts: dict[tuple[str, str], deque[Verdict]] = {}
        #: round trips done by prepare, applied by evaluate: (checked at, ids, idle times)
        self._fetched: list[tuple[float, list[Sample], dict[str, int | None]]] = []
        self.unsupported: str | None = None
        self._policy_checked = False
        self._retry_at = 0.0
        self._failing = False
        self.checked = 0
        self.ignore = frozenset(options["ignore_tasks"])

    # -- coverage ---------------------------------------------------------------------------
    def coverage(self) -> str:
        events = super().coverage()
        if events != "active":
            return events
        backend = self.ctx.result_backend
        if not backend:
            return "unsupported: no result backend configured (give --result-backend or -A)"
        if self.ctx.results is None:
            return (f"unsupported: result backend '{scheme(backend)}' is not Redis "
                    "(OBJECT IDLETIME is Redis-only)")
        if self.unsupported:
            return f"unsupported: {self.unsupported}"
        return "active"

    # -- hot path ---------------------------------------------------------------------------
    def hooks(self):
        if self.ctx.results is None:
            return {}
        return {"task-succeeded": self._on_succeeded}

    def _on_succeeded(self, event: dict, rec: Any) -> None:
        if rec is None or not rec.name or rec.name in self.ignore:
            return
        key = (rec.queue, rec.name)
        n = self.seen.get(key)
        if n is None:
            if len(self.seen) >= _MAX_TASKS:
                return
            n = 0
        self.seen[key] = n + 1
        if n % self.options["sample_every"]:
            return
        at = event.get("local_received")
        if not isinstance(at, float):
            at = event["timestamp"]
        self.pending.append((event["uuid"], at, rec.queue, rec.name))

    # -- I/O, outside the engine lock ---------------------------------------------------------
    def prepare(self, now: float, lock: AbstractContextManager[Any]) -> None:
        """Check the eviction policy once, then the idle times of the due ids."""
        results = self.ctx.results
        if results is None:
            return
        with lock:
            if self.unsupported or time.time() < self._retry_at:
                return
            policy_checked = self._policy_checked
        if not policy_checked:
            try:
                policy = results.eviction_policy()
            except Exception as exc:
                self._failed(exc, [], lock)
            with lock:
                self._policy_checked = True
                if policy is not None and "lfu" in policy:
                    self.unsupported = (f"Redis maxmemory-policy is {policy}: OBJECT "
                                        "IDLETIME is unavailable under LFU policies")
                    self.pending.clear()
                    return
            if policy is None:  # CONFIG is often disabled on managed Redis: fine
                log.info("unread_results: cannot read maxmemory-policy (CONFIG refused); "
                         "assuming an LRU policy")
        with lock:
            due = self._due(now)
        if not due:
            return
        try:
            idle = results.idle_times([d[0] for d in due])
        except Exception as exc:
            self._failed(exc, due, lock)
        with lock:
            self._fetched.append((now, due, idle))
            if self._failing:
                self._failing = False
                log.info("unread_results: result backend reachable again")

    def _failed(self, exc: Exception, due: list[Sample],
                lock: AbstractContextManager[Any]) -> NoReturn:
        """Keep ``due`` for later, back off, log once, and raise :class:`ProbeFailed`."""
        backoff = float(self.options["error_backoff_seconds"])
        with lock:
            self.pending.extendleft(reversed(due))
            self._retry_at = time.time() + backoff
            first = not self._failing
            self._failing = True
        if first:
            log.warning("unread_results: result backend check failed (%s: %s); retrying "
                        "every %gs (counted in flower_practices_probe_errors_total"
                        "{probe=\"%s\"}, logged once until it works again)",
                        type(exc).__name__, exc, backoff, PROBE)
        raise ProbeFailed(PROBE) from exc

    def _due(self, now: float) -> list[Sample]:
        grace = float(self.options["grace_seconds"])
        limit = int(self.options["max_checks_per_evaluation"])
        pending = self.pending
        due = []
        while pending and len(due) < limit and now - pending[0][1] >= grace:
            due.append(pending.popleft())
        return due

    # -- evaluation, under the engine lock --------------------------------------------------
    def evaluate(self, now: float) -> Iterable[Condition]:
        fetched, self._fetched = self._fetched, []
        for checked_at, due, idle in fetched:
            self._judge(checked_at, due, idle)
        self._age(now)
        if len(self.seen) >= _MAX_TASKS:
            # the per-task counters only pace sample_every: restarting them is harmless,
            # and it lets tasks first seen after the table filled up be sampled too
            self.seen.clear()
        yield from self._conditions()

    def _judge(self, now: float, due: list[Sample], idle: dict[str, int | None]) -> None:
        tolerance = float(self.options["tolerance_seconds"])
        keep = int(self.options["max_samples"])
        for uuid, ts, queue, task in due:
            if uuid not in idle:  # error reply for this key: no verdict
                continue
            seconds = idle[uuid]
            key = (queue, task)
            ring = self.verdicts.get(key)
            if seconds is None:  # missing: see the module docstring
                if ring is not None:
                    ring.append((now, None))
                continue
            unread = seconds >= (now - ts) - tolerance
            if ring is None:
                if len(self.verdicts) >= _MAX_TASKS:
                    continue
                ring = self.verdicts[key] = deque(maxlen=keep)
            ring.append((now, unread))
            self.checked += 1
            if unread:
                self.count(queue or None, task or None)

    def _age(self, now: float) -> None:
        """Forget verdicts older than ``window_seconds`` (rings are in check order)."""
        oldest = now - float(self.options["window_seconds"])
        for key in list(self.verdicts):
            ring = self.verdicts[key]
            while ring and ring[0][0] <= oldest:
                ring.popleft()
            if not ring:
                del self.verdicts[key]

    def verdict_counts(self, task: str, queue: str = "") -> dict[str, int]:
        """Current verdicts of one task: ``{"unread": n, "read": n, "missing": n}``."""
        ring = self.verdicts.get((queue, task), ())
        values = [v for _, v in ring]
        return {"unread": values.count(True), "read": values.count(False),
                "missing": values.count(None)}

    def _conditions(self) -> Iterable[Condition]:
        min_samples = int(self.options["min_samples"])
        min_share = float(self.options["min_share"])
        app = self.ctx.app
        for (queue, task), ring in self.verdicts.items():
            verdicts = [v for _, v in ring]
            unread = verdicts.count(True)
            n = unread + verdicts.count(False)
            if n < min_samples:
                continue
            share = unread / n
            if share < min_share:
                continue
            evidence: dict[str, Any] = {
                "sampled_results": n, "unread_results": unread,
                "unread_share": round(share, 3),
                "missing_results": len(ring) - n,
                "checked_after_seconds": self.options["grace_seconds"],
                "window_seconds": self.options["window_seconds"],
            }
            summary = (f"{task}: {unread} of {n} sampled results were never read "
                       f"({share:.0%}); set ignore_result=True")
            info = app.task(task) if app is not None else None
            if app is None:
                evidence["ignore_result"] = "unknown (app not loaded)"
            elif info is not None:
                evidence["ignore_result"] = info.ignore_result
                if not info.ignore_result:
                    summary += " (ignore_result is not set on this task)"
            yield Condition(summary=summary, queue=queue or None, task=task,
                            evidence=evidence)
