"""retry_storm: a task retries too often over a window, or retries with ~zero delay.

Hooks: task-retried counts a retry (per queue and task, in a sliding window);
task-received of a first attempt (``retries`` 0) counts a first attempt (per queue and
task, in the same window; not task-started: a threads worker may send a run's
task-started after the retry it published was received, when the record already carries
the retry's number; one received before its task-sent, its queue not known yet, counts
for the task in every queue). A count storm needs both more than ``max_retries_per_window``
retries *and* retries making more than ``max_retry_share`` of the task's attempts in the
window (first attempts plus retries; a retry counts when it is scheduled, not when its
delayed run starts, so a burst of back-off retries does not read high while their runs
wait). The default share, 0.75, is more than 3 retries per first attempt: more than
Celery's default ``max_retries`` allows. A busy task whose occasional transient failures
retry (with back-off) retries many times in absolute terms but a small share of its
attempts, and is not a storm; nor is a burst of tasks that each retry once or twice with
back-off; a task whose every message retries many times is. Each retry's
delay is measured on the worker's own clock, from the retry message's ``eta`` minus the
moment it was published: the retry's ``task-sent`` event (sent events on) is that
moment; without it, the ``task-retried`` event (or the retry's ``task-received``, when
that came first) stands in, which comes *after* the publish and reads the delay short
by the time between them (the backend write of the RETRY state, often tens of
milliseconds); a received retry waits up to 2 s for its task-sent before that fallback is
used. ``delay_measured_from`` in the evidence says which. No ``eta`` at all
means the retry was scheduled with no delay. A delay under ``zero_delay_seconds`` is a
zero-delay retry.

A retry loop is a storm by itself, however busy the task is otherwise: one message
(task id) retried more than ``max_retries_per_message`` times within the window (a poison
message retried without limit on a short countdown hammers its dependency while the
task's other messages keep its share low). Each retried message's retries are counted in
a tumbling window of its own (bounded table of the latest 20,000 retried ids), O(1) per
task-retried; the looping ids (at most :data:`MAX_TASK_IDS` newest per task and queue)
are the evidence. A message polling with ``countdown=60`` retries 5 times per default
window, a jittered exponential back-off about 8: neither is a loop.

A zero-delay storm needs at least ``min_zero_delay_retries`` zero-delay retries that make
at least ``min_zero_delay_share`` of the retries whose delay was measured in the window:
Celery's jittered back-off (``retry_backoff`` with the default ``retry_jitter=True``)
draws a delay uniformly from 0..2^n·factor whole seconds, so it schedules *some* retries
with 0 s on purpose. When the app is loaded (``-A``) and the task's policy has
``retry_backoff`` with jitter, the zero-delay retries are also compared with what that
policy draws by chance (P(0) = 1/(countdown+1) for each retry number): only clearly
more than that expectation (by ``3·sqrt(expected) + 1``) is a storm.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..bounded import LRUDict, WindowCounter
from ..events.types import TASK_RECEIVED, TASK_RETRIED, TASK_SENT
from ..findings import Condition
from .base import Rule

if TYPE_CHECKING:
    from ..appinfo import AppInfo

_MAX_KEYS = 2000
#: looping task ids kept per (queue, task), the newest; also the most in a finding
MAX_TASK_IDS = 10
#: retried task ids whose own retries are counted (the latest)
_MAX_RETRIED_IDS = 20_000
#: (queue, task) pairs whose first attempts are counted; idle ones are forgotten
_MAX_RUN_KEYS = 10_000
#: seconds a received retry waits for its own task-sent before task-retried stands in
_SENT_WAIT = 2.0


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


def zero_delay_chance(backoff: bool | float, maximum: int, jitter: bool,
                      number: int) -> float:
    """Chance that Celery's exponential back-off draws 0 s for retry ``number`` (1-based).

    Celery: ``countdown = min(maximum, factor * 2 ** retries)``, then with full jitter
    ``randrange(countdown + 1)`` (``retries`` counts the attempts before this retry). A
    true ``retry_backoff`` below 1 (``retry_backoff=0.5``) backs off with factor 1, as
    Celery's ``int(max(1.0, retry_backoff))`` does.
    """
    try:
        value = float(backoff)
    except (TypeError, ValueError):
        return 1.0
    if not value > 0:  # also NaN
        return 1.0
    factor = int(max(1.0, min(value, 2.0 ** 31)))
    countdown = min(maximum, factor * 2 ** min(max(number - 1, 0), 30))
    if not jitter:
        return 0.0 if countdown > 0 else 1.0
    return 1.0 / (countdown + 1)


class _Stats:
    __slots__ = ("retries", "zero_delay", "delayed", "expected_zero_milli", "last_seen",
                 "min_delay", "max_delay", "from_sent", "from_retried", "seen",
                 "counted_upto", "storming", "looping")

    def __init__(self, window: float) -> None:
        self.retries = WindowCounter(window)
        self.zero_delay = WindowCounter(window)
        self.delayed = WindowCounter(window)
        #: zero-delay retries the task's jittered back-off draws by chance (x1000)
        self.expected_zero_milli = WindowCounter(window)
        self.last_seen = 0.0
        self.min_delay: float | None = None
        self.max_delay: float | None = None
        #: delays measured from the retry's task-sent / from task-retried (fallback)
        self.from_sent = 0
        self.from_retried = 0
        #: task-retried events ever seen; how many of them were judged; in a storm now
        self.seen = 0
        self.counted_upto = 0
        self.storming = False
        #: task id -> when it last retried past ``max_retries_per_message`` (newest last)
        self.looping: dict[str, float] = {}


class RetryStorm(Rule):
    id = "retry_storm"

    @dataclass(frozen=True, slots=True)
    class Options:
        """Typed options (the documented defaults; each may be overridden in
        ``[practices.retry_storm]``)."""

        #: sliding window the counts below are taken over
        window_seconds: float = 300.0
        #: a count storm needs more retries than this per task and queue within the
        #: window (an absolute floor) ...
        max_retries_per_window: int = 100
        #: ... and retries making more than this share of the task's attempts (first
        #: attempts received plus retries) in the window; 0.75 is more than 3 retries
        #: per first attempt. A busy task retrying a few per cent with back-off is not a
        #: storm
        max_retry_share: float = 0.75
        #: a retry scheduled (eta) sooner than this after task-retried has no back-off
        zero_delay_seconds: float = 0.5
        #: zero-delay retries within the window needed for a finding
        min_zero_delay_retries: int = 5
        #: ... and the share of measured retries they must make (jittered back-off
        #: draws some 0 s delays on purpose: it is not a storm)
        min_zero_delay_share: float = 0.8
        #: one message (task id) retried more than this many times within the window is
        #: a retry loop, a storm whatever the task's share (50 per 300 s: a retry every
        #: 6 s; a countdown=60 poll retries 5 times, a jittered back-off about 8)
        max_retries_per_message: int = 50

    #: this rule's options, typed (set by :class:`Rule`)
    opts: Options

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        self.window = self.opts.window_seconds
        self.zero = self.opts.zero_delay_seconds
        #: uuid -> (task-retried time, retry number), awaiting the retry's task-received
        self.pending: LRUDict[str, tuple[float, int]] = LRUDict(20_000)
        self.stats: dict[tuple[str, str], _Stats] = {}
        #: (task id, retry number) whose delay is already measured
        self.measured: LRUDict[tuple[str, int], bool] = LRUDict(20_000)
        #: retries received whose task-sent may still come: (task id, retry number) ->
        #: (arrived, eta, queue, task, task-retried time, event time)
        self.provisional: LRUDict[tuple[str, int], tuple] = LRUDict(20_000)
        #: (queue, task) -> first attempts received (task-received, ``retries`` 0) in the
        #: window, for every task: those before its first retry count too
        self.runs: dict[tuple[str, str], WindowCounter] = {}
        #: task id -> [its retries counted, since when]: each retried message's retries
        #: in a tumbling window of its own (a retry loop)
        self.per_message: LRUDict[str, list[float]] = LRUDict(_MAX_RETRIED_IDS)
        self._runs_pruned = 0.0

    @classmethod
    def static_check(cls, app: AppInfo) -> list[tuple[str | None, str]]:
        """Tasks that retry with no delay (``self.retry(countdown=0)`` in the body,
        ``default_retry_delay=0`` without back-off, or ``autoretry_for`` with a back-off
        capped at ``retry_backoff_max=0``) or without limit (``max_retries=None``
        with ``autoretry_for`` or a ``self.retry()`` call that sets no limit); tasks with no
        retry policy at all are ``retryless_failure``'s."""
        out: list[tuple[str | None, str]] = []
        for name, task in sorted(app.tasks.items()):
            if not task.has_retry_policy:
                continue
            reasons = []
            if task.retries_without_delay:
                reasons.append("calls self.retry(countdown=0): retries hammer the failing "
                               "dependency; use a countdown with back-off (or retry_backoff)")
            elif not task.retry_backoff and task.default_retry_delay is not None \
                    and task.default_retry_delay <= 0:
                reasons.append("retries with default_retry_delay=0 and no retry_backoff: "
                               "retries hammer the failing dependency")
            elif task.autoretry_for and task.retry_backoff and task.retry_backoff_max <= 0:
                reasons.append("retry_backoff with retry_backoff_max=0: every automatic "
                               "retry is scheduled with no delay; raise retry_backoff_max")
            if task.unbounded_retries:
                reasons.append("retries without limit (max_retries=None): a persistent "
                               "failure retries forever; set max_retries")
            if reasons:
                out.append((name, "; ".join(reasons)))
        return out

    def hooks(self):
        return {TASK_RETRIED: self._on_retried, TASK_RECEIVED: self._on_received,
                TASK_SENT: self._on_sent}

    def _first_attempt(self, event: dict, rec: Any) -> None:
        """A first attempt of the task delivered to a worker of its queue: O(1)."""
        key = (rec.queue, rec.name)
        counter = self.runs.get(key)
        if counter is None:
            if len(self.runs) >= _MAX_RUN_KEYS:
                return
            counter = self.runs[key] = WindowCounter(self.window)
        counter.add(event["timestamp"])

    def _first_attempts(self, queue: str, task: str, now: float) -> int | None:
        """First attempts of ``task`` in ``queue`` in the window, plus those received
        while the task's queue was not known yet (a task-received that overtook its
        task-sent is counted under no queue: ``("", task)``); a task routed to several
        queues then counts them in each, which can only lower its share. No counter:
        none in the window (idle ones are pruned) -- unless the key cap refused it: None
        (unknown, no count storm)."""
        runs = self.runs
        counter = runs.get((queue, task))
        if counter is None and len(runs) >= _MAX_RUN_KEYS:
            return None
        first = counter.total(now) if counter is not None else 0
        if queue:
            unqueued = runs.get(("", task))
            if unqueued is not None:
                first += unqueued.total(now)
        return first

    def _prune_runs(self, now: float) -> None:
        """Forget the run counters idle for a whole window (once per window/12)."""
        if now - self._runs_pruned < self.window / 12:
            return
        self._runs_pruned = now
        for key in [k for k, c in self.runs.items() if c.idle(now)]:
            del self.runs[key]

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
        st.seen += 1
        st.last_seen = ts
        self._per_message(event["uuid"], ts, st)
        if rec is not None and rec.received_at <= rec.started_at:
            # the retry's message is still to come (else it raced ahead of this event)
            self.pending.put(event["uuid"], (ts, rec.retries + 1))

    def _per_message(self, uuid: str, ts: float, st: _Stats) -> None:
        """Count one retry of message ``uuid``; past ``max_retries_per_message`` within
        its window it is looping (kept in ``st.looping``, the newest ids). O(1)."""
        mine = self.per_message.get(uuid)
        if mine is None or not 0.0 <= ts - mine[1] <= self.window:
            self.per_message.put(uuid, [1, ts])
            return
        mine[0] += 1
        if mine[0] > self.opts.max_retries_per_message:
            looping = st.looping
            looping.pop(uuid, None)
            looping[uuid] = ts
            if len(looping) > MAX_TASK_IDS:
                del looping[next(iter(looping))]

    def _on_sent(self, event: dict, rec: Any) -> None:
        """A retry's own message published: ``eta`` minus this event's time (both on the
        publishing worker's clock) is exactly the delay it was scheduled with."""
        retries = event.get("retries")
        if not isinstance(retries, int) or retries < 1 or rec is None:
            return
        key = (event["uuid"], retries)
        if key in self.measured:
            return
        self.measured.put(key, True)
        self.provisional.pop(key, None)
        ts = event["timestamp"]
        self._delay(event.get("eta"), rec.queue, rec.name, retries, ts, ts, from_sent=True)

    def _on_received(self, event: dict, rec: Any) -> None:
        """A first attempt's message reached a worker: counted. A retry's: its delay is
        measured from task-retried unless the retry's own task-sent arrives within
        ``_SENT_WAIT`` (see evaluate)."""
        retries = event.get("retries")
        if rec is None:
            return
        if not isinstance(retries, int) or retries < 1:
            self._first_attempt(event, rec)
            return
        ts = event["timestamp"]
        entry = self.pending.pop(event["uuid"], None)
        key = (event["uuid"], retries)
        if key in self.measured or key in self.provisional:
            return
        base = entry[0] if entry is not None and entry[1] == retries else ts
        arrived = event.get("local_received")
        self.provisional.put(key, (arrived if isinstance(arrived, float) else ts,
                                   event.get("eta"), rec.queue, rec.name, base, ts))

    def _settle(self, now: float) -> None:
        """Measure the retries whose task-sent did not come (sent events off)."""
        provisional = self.provisional
        while provisional:
            key, (arrived, eta, queue, task, base, ts) = next(iter(provisional.items()))
            if now - arrived < _SENT_WAIT:
                break
            del provisional[key]
            self.measured.put(key, True)
            self._delay(eta, queue, task, key[1], base, ts, from_sent=False)

    def _delay(self, eta_value: Any, queue: str, task: str, number: int, base: float,
               ts: float, *, from_sent: bool) -> None:
        eta = eta_timestamp(eta_value)
        delay = 0.0 if eta is None else max(0.0, eta - base)
        st = self._stats(queue, task)
        if st is None:
            return
        st.last_seen = max(st.last_seen, ts)
        st.min_delay = delay if st.min_delay is None else min(st.min_delay, delay)
        st.max_delay = delay if st.max_delay is None else max(st.max_delay, delay)
        if from_sent:
            st.from_sent += 1
        else:
            st.from_retried += 1
        app = self.ctx.app
        info = app.task(task) if app is not None and task else None
        if info is not None and info.retry_backoff:
            chance = zero_delay_chance(info.retry_backoff, info.retry_backoff_max,
                                       info.retry_jitter, number)
            st.expected_zero_milli.add(ts, int(chance * 1000))
        if delay < self.zero:
            st.zero_delay.add(ts)
        else:
            st.delayed.add(ts)

    def _storm_share(self, st: _Stats, now: float) -> bool:
        """Zero-delay retries are (still) the storm kind: most of the measured ones, and
        more than the task's jittered back-off draws by chance."""
        zero = st.zero_delay.total(now)
        measured = zero + st.delayed.total(now)
        if not measured or zero / measured < self.opts.min_zero_delay_share:
            return False
        expected = st.expected_zero_milli.total(now) / 1000.0
        return not expected or zero > expected + 3.0 * math.sqrt(expected) + 1.0

    def _count_storm(self, queue: str, task: str, st: _Stats, retries: int,
                     storming: bool) -> None:
        """Occurrences: the retries of a storm. When it is first found, the retries in
        the window (they made it); then each retry while it lasts; none outside."""
        if storming:
            n = st.seen - st.counted_upto if st.storming else retries
            if n > 0:
                self.count(queue or None, task or None, n)
        st.storming = storming
        st.counted_upto = st.seen

    def evaluate(self, now: float) -> Iterable[Condition]:
        self._settle(now)
        self._prune_runs(now)
        limit = self.opts.max_retries_per_window
        max_share = self.opts.max_retry_share
        min_zero = self.opts.min_zero_delay_retries
        app = self.ctx.app
        for key in [k for k, s in self.stats.items() if now - s.last_seen > self.window]:
            del self.stats[key]
        for (queue, task), st in self.stats.items():
            retries = st.retries.total(now)
            zero = st.zero_delay.total(now)
            delayed = st.delayed.total(now)
            measured = zero + delayed
            expected = st.expected_zero_milli.total(now) / 1000.0
            first = self._first_attempts(queue, task, now)
            attempts = first + retries if first is not None else None
            share = retries / attempts if attempts else None
            reasons = []
            if retries > limit and share is not None and share > max_share:
                reasons.append(f"{retries} retries in {self.window:g}s (limit {limit}) for "
                               f"{first} first attempts: {share:.0%} of the attempts are "
                               f"retries (limit {max_share:.0%})")
            if zero >= min_zero and self._storm_share(st, now):
                reasons.append(f"{zero} of {measured} retries with < {self.zero:g}s delay "
                               "(no back-off)")
            looping = self._looping(st, now)
            if looping:
                reasons.append(f"{len(looping)} message(s) retried more than "
                               f"{self.opts.max_retries_per_message} times each within "
                               f"{self.window:g}s (a retry loop)")
            self._count_storm(queue, task, st, retries, bool(reasons))
            if not reasons:
                continue
            evidence: dict[str, Any] = {
                "retries_in_window": retries, "window_seconds": self.window,
                "first_attempts_in_window": first,
                "retry_share": round(share, 3) if share is not None else None,
                "max_retry_share": max_share,
                "zero_delay_retries": zero, "delayed_retries": delayed,
                "zero_delay_share": round(zero / measured, 3) if measured else None,
                "min_zero_delay_share": self.opts.min_zero_delay_share,
                "min_delay_seconds": _round(st.min_delay),
                "max_delay_seconds": _round(st.max_delay),
                "delay_measured_from": _measured_from(st),
                "looping_messages": len(looping),
                "max_retries_per_message": self.opts.max_retries_per_message,
                "looping_task_ids": list(reversed(looping)),
            }
            if expected:
                evidence["zero_delay_expected_from_jitter"] = round(expected, 1)
            summary = f"{task or 'a task'}: " + "; ".join(reasons)
            info = app.task(task) if app is not None else None
            if app is None:
                evidence["retry_policy"] = "unknown (app not loaded)"
            elif info is not None:
                evidence["retry_policy"] = {
                    "max_retries": info.max_retries,
                    "retry_backoff": info.retry_backoff,
                    "retry_backoff_max": info.retry_backoff_max,
                    "retry_jitter": info.retry_jitter,
                    "default_retry_delay": info.default_retry_delay,
                }
                if zero and not info.retry_backoff:
                    summary += "; retry_backoff is not set"
            yield Condition(summary=summary, queue=queue or None, task=task or None,
                            evidence=evidence)

    def _looping(self, st: _Stats, now: float) -> list[str]:
        """The task ids that retried in a loop within the window (oldest first); the
        older ones are dropped."""
        looping = st.looping
        for uuid in [u for u, at in looping.items() if now - at > self.window]:
            del looping[uuid]
        return list(looping)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _measured_from(st: _Stats) -> str:
    if st.from_sent and not st.from_retried:
        return "the retry's task-sent event"
    if st.from_retried and not st.from_sent:
        return ("the task-retried event (sent events off: delays read short by the "
                "retry's publish time)")
    return "the retry's task-sent event where seen, else task-retried"
