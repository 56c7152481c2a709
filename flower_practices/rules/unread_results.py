"""unread_results: results written to a Redis result backend that nobody reads.

The task-succeeded hook samples task ids into a bounded queue (O(1), no I/O). In
:meth:`evaluate`, ids older than ``grace_seconds`` are checked in one pipelined round
trip of ``OBJECT IDLETIME celery-task-meta-<id>`` (at most ``max_checks_per_evaluation``
per run): an idle time about equal to the age since task-succeeded means the key was
never read. Only key metadata is read, never the stored result.

Limitation: a client blocked in ``AsyncResult.get()`` *before* the task finished receives
the result over pub/sub and never touches the key, so such reads are invisible here.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from ..brokers import scheme
from ..findings import Condition
from .base import Rule

log = logging.getLogger("flower_practices.rules.unread_results")

_MAX_TASKS = 1000


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

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        self.pending: deque[tuple[str, float, str, str]] = deque(
            maxlen=int(options["max_pending"]))
        self.seen: dict[tuple[str, str], int] = {}
        self.verdicts: dict[tuple[str, str], deque[bool]] = {}
        self.unsupported: str | None = None
        self._policy_checked = False
        self._retry_at = 0.0
        self._failing = False
        self.checked = 0
        self.ignore = frozenset(options["ignore_tasks"])

    # -- coverage ---------------------------------------------------------------------------
    def coverage(self) -> str:
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

    # -- evaluation -------------------------------------------------------------------------
    def _check_policy(self) -> None:
        self._policy_checked = True
        try:
            policy = self.ctx.results.client.config_get("maxmemory-policy")
        except Exception as exc:  # CONFIG is often disabled on managed Redis: fine
            log.info("unread_results: cannot read maxmemory-policy (%s); assuming LRU",
                     type(exc).__name__)
            return
        value = str((policy or {}).get("maxmemory-policy", ""))
        if "lfu" in value:
            self.unsupported = (f"Redis maxmemory-policy is {value}: OBJECT IDLETIME is "
                                "unavailable under LFU policies")

    def _due(self, now: float) -> list[tuple[str, float, str, str]]:
        grace = float(self.options["grace_seconds"])
        limit = int(self.options["max_checks_per_evaluation"])
        pending = self.pending
        due = []
        while pending and len(due) < limit and now - pending[0][1] >= grace:
            due.append(pending.popleft())
        return due

    def evaluate(self, now: float) -> Iterable[Condition]:
        results = self.ctx.results
        if results is not None and not self.unsupported and time.time() >= self._retry_at:
            if not self._policy_checked:
                self._check_policy()
            due = self._due(now) if not self.unsupported else []
            if due:
                self._check(due, now)
        yield from self._conditions()

    def _check(self, due: list[tuple[str, float, str, str]], now: float) -> None:
        try:
            idle = self.ctx.results.idle_times([d[0] for d in due])
        except Exception as exc:
            self._retry_at = time.time() + float(self.options["error_backoff_seconds"])
            self.pending.extendleft(reversed(due))
            if not self._failing:
                self._failing = True
                log.warning("unread_results: result backend check failed (%s); retrying "
                            "every %gs (logged once until it works again)",
                            type(exc).__name__, self.options["error_backoff_seconds"])
            return
        if self._failing:
            self._failing = False
            log.info("unread_results: result backend reachable again")
        tolerance = float(self.options["tolerance_seconds"])
        keep = int(self.options["max_samples"])
        for uuid, ts, queue, task in due:
            seconds = idle.get(uuid)
            if seconds is None:  # expired, forgotten, or never stored (ignore_result)
                continue
            unread = seconds >= (now - ts) - tolerance
            key = (queue, task)
            ring = self.verdicts.get(key)
            if ring is None:
                if len(self.verdicts) >= _MAX_TASKS:
                    continue
                ring = self.verdicts[key] = deque(maxlen=keep)
            ring.append(unread)
            self.checked += 1
            if unread:
                self.count(queue or None, task or None)

    def _conditions(self) -> Iterable[Condition]:
        min_samples = int(self.options["min_samples"])
        min_share = float(self.options["min_share"])
        app = self.ctx.app
        for (queue, task), ring in self.verdicts.items():
            n = len(ring)
            if n < min_samples:
                continue
            unread = sum(ring)
            share = unread / n
            if share < min_share:
                continue
            evidence: dict[str, Any] = {
                "sampled_results": n, "unread_results": unread,
                "unread_share": round(share, 3),
                "checked_after_seconds": self.options["grace_seconds"],
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
                            evidence=evidence, count=unread)
