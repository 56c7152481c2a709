"""retry_storm: a task retries too often over a window, or retries with ~zero delay.

Hooks: task-retried counts a retry (per queue and task, in a sliding window). A retry's
message arrives as a task-received with ``retries >= 1``; its ``eta`` minus the time of
the task-retried event (or of the task-received, when that came first) is the delay
the retry was scheduled with. No ``eta`` at all means the retry was scheduled with no
delay. A delay under ``zero_delay_seconds`` is a retry without back-off.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from ..bounded import LRUDict, WindowCounter
from ..findings import Condition
from .base import Rule

_MAX_KEYS = 2000


def eta_timestamp(value: Any) -> float | None:
    """Unix time of an ISO-8601 ``eta`` field; None when absent or unparsable."""
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


class _Stats:
    __slots__ = ("retries", "zero_delay", "delayed", "last_seen", "min_delay")

    def __init__(self, window: float) -> None:
        self.retries = WindowCounter(window)
        self.zero_delay = WindowCounter(window)
        self.delayed = WindowCounter(window)
        self.last_seen = 0.0
        self.min_delay: float | None = None


class RetryStorm(Rule):
    id = "retry_storm"
    defaults = {
        #: sliding window the counts below are taken over
        "window_seconds": 300.0,
        #: more retries than this per task and queue within the window is a storm
        "max_retries_per_window": 100,
        #: a retry scheduled (eta) sooner than this after task-retried has no back-off
        "zero_delay_seconds": 0.5,
        #: zero-delay retries within the window needed for a finding
        "min_zero_delay_retries": 5,
    }

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        self.window = float(options["window_seconds"])
        self.zero = float(options["zero_delay_seconds"])
        #: uuid -> (task-retried time, retry number), awaiting the retry's task-received
        self.pending: LRUDict[str, tuple[float, int]] = LRUDict(20_000)
        #: (task id, retry number) already in violations_total: a retry is counted once,
        #: whether it is first seen over the limit (task-retried) or without delay
        #: (its task-received), in whichever order those events arrive
        self.counted: LRUDict[tuple[str, int], bool] = LRUDict(20_000)
        self.stats: dict[tuple[str, str], _Stats] = {}

    def hooks(self):
        return {"task-retried": self._on_retried, "task-received": self._on_received}

    def _stats(self, queue: str, task: str) -> _Stats | None:
        key = (queue, task)
        st = self.stats.get(key)
        if st is None:
            if len(self.stats) >= _MAX_KEYS:
                return None
            st = self.stats[key] = _Stats(self.window)
        return st

    def _on_retried(self, event: dict, rec: Any) -> None:
        ts = event["timestamp"]
        queue = rec.queue if rec is not None else ""
        task = rec.name if rec is not None else ""
        st = self._stats(queue, task)
        if st is None:
            return
        st.retries.add(ts)
        st.last_seen = ts
        number = None
        if rec is not None:
            if rec.received_at <= rec.started_at:
                # the retry's message is still to come (else it raced ahead of this event)
                number = rec.retries + 1
                self.pending.put(event["uuid"], (ts, number))
            else:
                number = rec.retries
        if st.retries.total(ts) > self.options["max_retries_per_window"]:
            self._count_once(event["uuid"], number, queue, task)

    def _on_received(self, event: dict, rec: Any) -> None:
        retries = event.get("retries")
        if not isinstance(retries, int) or retries < 1 or rec is None:
            return
        ts = event["timestamp"]
        entry = self.pending.pop(event["uuid"], None)
        base = entry[0] if entry is not None and entry[1] == retries else ts
        eta = eta_timestamp(event.get("eta"))
        delay = 0.0 if eta is None else max(0.0, eta - base)
        st = self._stats(rec.queue, rec.name)
        if st is None:
            return
        st.last_seen = max(st.last_seen, ts)
        st.min_delay = delay if st.min_delay is None else min(st.min_delay, delay)
        if delay < self.zero:
            st.zero_delay.add(ts)
            self._count_once(event["uuid"], retries, rec.queue, rec.name)
        else:
            st.delayed.add(ts)

    def _count_once(self, uuid: str, number: int | None, queue: str | None,
                    task: str | None) -> None:
        """Count one offending retry in violations_total, once per (task id, retry)."""
        if number is not None:
            key = (uuid, number)
            if key in self.counted:
                return
            self.counted.put(key, True)
        self.count(queue or None, task or None)

    def evaluate(self, now: float) -> Iterable[Condition]:
        limit = self.options["max_retries_per_window"]
        min_zero = self.options["min_zero_delay_retries"]
        app = self.ctx.app
        for key in [k for k, s in self.stats.items() if now - s.last_seen > self.window]:
            del self.stats[key]
        for (queue, task), st in self.stats.items():
            retries = st.retries.total(now)
            zero = st.zero_delay.total(now)
            reasons = []
            if retries > limit:
                reasons.append(f"{retries} retries in {self.window:g}s (limit {limit})")
            if zero >= min_zero:
                reasons.append(f"{zero} retries with < {self.zero:g}s delay (no back-off)")
            if not reasons:
                continue
            evidence: dict[str, Any] = {
                "retries_in_window": retries, "window_seconds": self.window,
                "zero_delay_retries": zero, "delayed_retries": st.delayed.total(now),
                "min_delay_seconds": round(st.min_delay, 3) if st.min_delay is not None
                else None,
            }
            summary = f"{task or 'a task'}: " + "; ".join(reasons)
            info = app.task(task) if app is not None else None
            if app is None:
                evidence["retry_policy"] = "unknown (app not loaded)"
            elif info is not None:
                evidence["retry_policy"] = {
                    "max_retries": info.max_retries,
                    "retry_backoff": info.retry_backoff,
                    "default_retry_delay": info.default_retry_delay,
                }
                if zero and not info.retry_backoff:
                    summary += "; retry_backoff is not set"
            yield Condition(summary=summary, queue=queue or None, task=task or None,
                            evidence=evidence)
