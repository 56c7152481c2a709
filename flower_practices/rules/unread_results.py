"""unread_results: results written to a Redis result backend that nobody reads.

The task-succeeded hook samples task ids into a bounded queue (O(1), no I/O). In
:meth:`prepare` (outside the engine lock), every evaluation takes one snapshot of the
result channels clients are subscribed to (``PUBSUB CHANNELS celery-task-meta-*``, at
most ``max_subscribed_per_evaluation`` names), and ids older than ``grace_seconds`` are
checked in one pipelined round trip of ``OBJECT IDLETIME celery-task-meta-<id>`` (at most
``max_checks_per_evaluation`` per run). Only key metadata and channel names are read,
never the stored result. :meth:`evaluate` (under the lock) turns the replies into
verdicts, each saying how it was decided:

- ``read_over_pubsub``: a snapshot showed a client subscribed to the result's channel.
  Celery's Redis backend subscribes when the task is sent (``on_task_call``) and
  unsubscribes once ``AsyncResult.get()`` consumed the result (or the AsyncResult was
  dropped), never touching the key: ``.get()`` waiting before the task finished, or
  called seconds later on the AsyncResult it kept, reads this way;
- ``passed_on``: another task named it as its ``parent_id`` (task-sent/task-received): a
  chain's next link, a chord's callback (sent by the header task that finished last) or a
  ``link=`` callback got its return value in the message, which is what the result was
  for. ``chain(a.s(), b.s(), c.s()).delay().get()`` reads ``c`` over pub/sub and passes
  ``a`` and ``b`` on: no finding. (A task that sends other tasks from its body passes
  this way too, whether its own result is read or not: a blind spot, in the direction
  of not reporting.);
- ``read_by_key``: the key was read after it was written. Either its idle time is
  shorter than its age (``tolerance_seconds`` slack: ``AsyncResult(id).get()`` seconds
  later), or Redis' LRU clock places the last access in a later second than the write,
  which catches reads well under a second after it (a status endpoint polling
  ``AsyncResult(id).ready()``): the check reads Redis' ``TIME`` in its round trip and
  runs once Redis' LRU clock is known to the second (see
  :meth:`~flower_practices.probes.results.ResultStore.idle_times_clocked`); the write is
  bounded on the exporter's clock by the task-succeeded timestamp plus the smallest
  arrival-minus-timestamp of that worker's recent events (its clock offset plus the
  shortest transit). Every bound errs towards "not read", so a result nobody read is
  never taken for read; a read within the same second as the write is not seen, so a
  caller polling by id (a status endpoint calling ``AsyncResult(id).ready()``) is caught
  reading only sometimes: about half of the time polling once a second, much less
  polling several times a second. Once a result of a task was seen read this way (within
  about a second of its write), the task's results that look unread may be that
  poller's unseen reads: the task is not reported for ``window_seconds`` after
  (``fast_key_seen``; its "unread" verdicts do not count). A task whose results are
  read that fast by a poller *and* also dropped unread by other callers goes unreported:
  the blind spot is on the side of not paging. A poller several times a second may be
  caught on none of the sampled results for a while, and its task reported until it is
  (the summary says a poller by id is invisible);
- ``unread``: neither, and a complete snapshot taken while the task was pending (between
  its task-sent and task-succeeded, ``tolerance_seconds`` inside each end) showed nobody
  subscribed: the caller did not keep the AsyncResult;
- ``unread_unobserved``: neither, but no snapshot fell while it was pending (fast tasks):
  a ``.get()`` caller may have received it over pub/sub unseen.

**Two looks.** A result judged ``unread`` or ``unread_unobserved`` is not counted yet: a
caller that kept only the task id may fetch it later (``AsyncResult(id).get()`` when a
report is downloaded, a status page polled by id a minute on). It is looked up once
more ``grace_seconds`` after that first check (in the same pipelined round trip as the
first checks, within ``max_checks_per_evaluation``): read since (its idle time shorter
than the time since the first check, less ``tolerance_seconds``, or its channel seen
subscribed) it is ``read_by_key`` or ``read_over_pubsub``; gone since it is ``missing``;
untouched, the first verdict stands and counts. So a result counts as unread only when
nobody read it within about twice ``grace_seconds`` of its write (raise it for callers
that fetch later than that), and a finding comes that much later. With ``grace_seconds``
0 there is no second look (it would see the same).

Snapshots are samples, one per evaluation: a fast task waited on with ``.get()`` is
mostly finished between two of them. So ``unread_unobserved`` verdicts count as unread
only when the task's callers are known not to wait: its results were seen read over
pub/sub within ``window_seconds`` too seldom for callers that wait (below), *and* enough
snapshots fell while its results were
pending that a waiting caller would have been caught. Each unobserved result adds the
chance a snapshot fell while it was pending (its task-sent to task-succeeded time over the
snapshots' spacing, at most 1; an ``unread`` verdict adds 1); once the sum reaches
``min_unread_evidence`` (3: a caller waiting on every one of them goes unseen with a
chance of about e^-3 = 5 %), they count. Until then only ``unread`` verdicts count. So a
task whose results are consumed with ``.get()`` is not reported (its callers are either
seen, or not enough was observed to tell), while fire-and-forget results (callers, beat or
workers that never keep the AsyncResult) are reported once enough of them went by: the
faster the task, the more calls that takes (about 3 × evaluation interval / task time).

A sighting is no proof that callers wait: a caller that drops its AsyncResult at once
holds the channel for the milliseconds between the send and the drop, and a snapshot
can fall there. Callers that wait on the task's judged results would have been seen
about ``expected`` times (each result's time from its worker's receipt to its success,
both on the worker's clock, over the snapshots' spacing, at most 1; 1 per ``unread``
verdict): they count as waiting unless the ``read_over_pubsub`` verdicts are so few that
waiting callers show that few with a chance below e^-``min_unread_evidence``
(:func:`too_few_sightings`). The bound is low (queue time before the receipt is left
out), which errs towards "they wait": a stray sighting still hides a fast task whose
results never add up that much.

Verdicts are kept per (queue, task), at most ``max_samples`` of them and none older than
``window_seconds``; the unread share is taken over the *judged* ones (read or unread) and
a finding needs at least ``min_samples`` of those. So a finding clears once its task
stops running (its verdicts age out), and once results stop being stored (below).
Occurrences (``count``, ``celery_practice_violations_total``): the unread results of a
task while it is reported (when first reported, the unread ones among its verdicts).

Chord headers (Redis backend, native join): each header task's result also goes to the
chord's ``<group>.j`` list, from which the callback gets them; the header result keys are
never read. When the chord's caller waits on it (``.get()``), the header results' channels
are subscribed (read over pub/sub); when nobody waits (a chord started from a task, or
fire and forget), the headers other than the one that finished last (``passed_on``) are
reported once they make ``min_share`` of the task's results. That is fixable: with the
Redis backend a simple header task may set ``ignore_result=True`` and the chord still
joins (tested with Celery 5.7); the runbook says so.

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
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from ..bounded import LRUDict
from ..brokers import scheme
from ..events.types import TASK_RECEIVED, TASK_SENT, TASK_SUCCEEDED
from ..findings import Condition
from .base import ProbeFailed, Rule, RuleContext

if TYPE_CHECKING:
    from ..appinfo import AppInfo
    from ..probes.results import Clock

log = logging.getLogger("flower_practices.rules.unread_results")

_MAX_TASKS = 1000
#: the ``probe`` label of flower_practices_probe_errors_total for result backend calls
PROBE = "result_backend"

#: (task id, task-succeeded time, queue, task name, pending from, pending to, latest
#: time the result can have been written on the exporter's clock or None, received by
#: the worker -- on the clock of the task-succeeded timestamp, 0.0 when unknown)
Sample = tuple[str, float, str, str, float, float, float | None, float]
#: (checked at, verdict, chance that a snapshot caught a caller waiting on it, the same
#: from the worker's receipt on: a lower bound free of clock skew)
Verdict = tuple[float, str, float, float]
#: a result that looked unread at its first check, awaiting the second: (its sample, the
#: first check's verdict, when that was, the verdict's two chances)
Recheck = tuple[Sample, str, float, float, float]
READ_PUBSUB, READ_KEY, PASSED_ON, UNREAD, UNOBSERVED, MISSING = (
    "read_over_pubsub", "read_by_key", "passed_on", "unread", "unread_unobserved",
    "missing")
#: verdicts that count as read
READ = (READ_PUBSUB, READ_KEY, PASSED_ON)
#: workers whose clock offset is tracked, at most
_MAX_HOSTS = 1000
#: task-succeeded events per block of the per-worker minimum of arrival minus timestamp
_OFFSET_BLOCK = 128
#: task ids seen as the parent of another task (a chain link, a chord callback, a
#: link=), remembered at most
_MAX_PARENTS = 50_000
#: ids seen subscribed, remembered at most
_MAX_SUBSCRIBED = 50_000
#: complete snapshot times remembered (for "was one taken while it was pending?")
_MAX_SNAPSHOTS = 4096


class UnreadResults(Rule):
    id = "unread_results"

    @dataclass(frozen=True, slots=True)
    class Options:
        """Typed options (the documented defaults; each may be overridden in
        ``[practices.unread_results]``)."""

        #: a result is checked this long after its task-succeeded event, and one that
        #: looks unread again this long later (only then does it count as unread)
        grace_seconds: float = 60.0
        #: share of sampled results left unread needed for a finding
        min_share: float = 0.9
        #: checked results (per task and queue) needed before judging
        min_samples: int = 20
        #: verdicts kept per task and queue (the share is taken over these)
        max_samples: int = 100
        #: verdicts older than this are forgotten, so a finding clears once a task stops running
        window_seconds: float = 3600.0
        #: sample one success in every N per task (1: every success)
        sample_every: int = 1
        #: sampled ids waiting for their check, at most (older ones are dropped)
        max_pending: int = 5000
        #: OBJECT IDLETIME lookups per evaluation (one pipelined round trip)
        max_checks_per_evaluation: int = 500
        #: slack (seconds) for clock skew and Redis' 1-second idle-time resolution
        tolerance_seconds: float = 2.0
        #: after a failed Redis call, wait this long before trying again
        error_backoff_seconds: float = 60.0
        #: task-name glob patterns never sampled, counted or reported (the ``ignore_tasks``
        #: every practice has)
        ignore_tasks: tuple[str, ...] = tuple([])
        #: result channels read per snapshot of the clients' subscriptions
        max_subscribed_per_evaluation: int = 10_000
        #: results never seen subscribed count as unread only once this many snapshots
        #: would have caught a caller waiting on them (expected catches, summed over
        #: the task's results: a caller waiting on all of them goes unseen with a chance
        #: of about e^-N); before that, only results seen unsubscribed while pending count
        min_unread_evidence: float = 3.0

    #: this rule's options, typed (set by :class:`Rule`)
    opts: Options

    def __init__(self, ctx: RuleContext, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        # pending and seen are shared with the hook; the rest is touched by the
        # evaluation only (prepare holds the engine lock whenever it touches any of it)
        self.pending: deque[Sample] = deque(maxlen=self.opts.max_pending)
        #: results that looked unread at their first check, in check order (evaluation
        #: only): each is looked up once more ``grace_seconds`` later
        self.rechecks: deque[Recheck] = deque(maxlen=self.opts.max_pending)
        self.seen: dict[tuple[str, str], int] = {}
        self.verdicts: dict[tuple[str, str], deque[Verdict]] = {}
        #: round trips done by prepare, applied by evaluate: (checked at, ids, idle times,
        #: Redis' clock, the second checks among them)
        self._fetched: list[tuple[float, list[Sample], dict[str, int | None],
                                  Clock | None, list[Recheck]]] = []
        #: ids named as ``parent_id`` by a task-sent/task-received (shared with the hooks)
        self.parents: LRUDict[str, bool] = LRUDict(_MAX_PARENTS)
        #: sampled ids that had a child when they succeeded (their value was passed on)
        self.passed_on: LRUDict[str, bool] = LRUDict(2 * self.opts.max_pending)
        #: worker -> [events in this block, this block's and the last block's minimum of
        #: arrival minus event timestamp] (see :meth:`_written_by`)
        self.offsets: LRUDict[str, list] = LRUDict(_MAX_HOSTS)
        #: subscription snapshots done by prepare: (taken at, ids, complete)
        self._snapshots: list[tuple[float, set[str], bool]] = []
        #: ids seen subscribed by a client, and when complete snapshots were taken
        self.subscribed: LRUDict[str, bool] = LRUDict(_MAX_SUBSCRIBED)
        self.snapshot_times: list[float] = []
        #: (queue, task) -> when one of its results was last seen held over pub/sub
        self.pubsub_seen: dict[tuple[str, str], float] = {}
        #: (queue, task) -> when one of its results was last seen read by key within
        #: about a second of its write (a poller): such reads are mostly invisible
        self.fast_key_seen: dict[tuple[str, str], float] = {}
        #: (queue, task) -> (unread verdicts ever, how many were counted, reported now)
        self.unread_total: dict[tuple[str, str], list] = {}
        self.unsupported: str | None = None
        #: what the result backend's Redis refused at the last try (an ACL, a renamed
        #: command): the rule is blind until it answers again
        self.refused: str | None = None
        self._policy_checked = False
        self._retry_at = 0.0
        self._failing = False
        self.checked = 0

    # -- coverage ---------------------------------------------------------------------------
    def coverage(self) -> str:
        events = super().coverage()
        if events != "active":
            return events
        backend = self.ctx.result_backend
        if not backend:
            return "unsupported: no result backend configured (give --result-backend or -A)"
        if self.ctx.results is None:
            if self.ctx.results_unusable:
                return (f"unsupported: cannot use the result backend "
                        f"({self.ctx.results_unusable})")
            return (f"unsupported: result backend '{scheme(backend)}' is not Redis "
                    "(OBJECT IDLETIME is Redis-only)")
        if self.unsupported:
            return f"unsupported: {self.unsupported}"
        if self.refused:
            return f"unsupported: {self.refused}"
        return "active"

    # -- hot path ---------------------------------------------------------------------------
    def hooks(self):
        if self.ctx.results is None:
            return {}
        return {TASK_SUCCEEDED: self._on_succeeded, TASK_SENT: self._on_child,
                TASK_RECEIVED: self._on_child}

    def _on_child(self, event: dict, rec: Any) -> None:
        """Remember the task this one was sent by (a chain's next link, a chord's
        callback, a ``link=`` callback, or a task sent from another task's body)."""
        parent = event.get("parent_id")
        if type(parent) is str and parent and parent != event["uuid"]:
            self.parents.put(parent, True)

    def _on_succeeded(self, event: dict, rec: Any) -> None:
        if rec is None or not rec.name or (self.task_ignore is not None
                                           and self.task_ignore.ignored(rec.name)):
            return
        key = (rec.queue, rec.name)
        n = self.seen.get(key)
        if n is None:
            if len(self.seen) >= _MAX_TASKS:
                return
            n = 0
        self.seen[key] = n + 1
        if n % self.opts.sample_every:
            return
        at = event.get("local_received")
        stamp = event["timestamp"]
        written_by = None
        if isinstance(at, float):
            written_by = self._written_by(event.get("hostname") or rec.hostname, at, stamp)
        else:
            at = stamp
        since = rec.sent_at or rec.received_at or stamp
        uuid = event["uuid"]
        if uuid in self.parents:
            self.passed_on.put(uuid, True)
        self.pending.append((uuid, at, rec.queue, rec.name, since, stamp, written_by,
                             rec.received_at))

    def _written_by(self, host: Any, arrived: float, stamp: float) -> float:
        """The latest the result can have been stored, on the exporter's clock.

        The worker stores the result, then stamps and sends task-succeeded, which arrives
        here at ``arrived``. Every event's arrival minus its timestamp is its transit time
        plus the worker's clock offset, so their minimum (over this and the last block of
        ``_OFFSET_BLOCK`` events of that worker) bounds the offset from above: ``stamp``
        plus that minimum is a moment after the store, usually within milliseconds of it,
        on the exporter's clock (never later than ``arrived``).
        """
        key = host if isinstance(host, str) else ""
        entry = self.offsets.get(key)
        delta = arrived - stamp
        if entry is None:
            entry = [0, delta, delta]
            self.offsets.put(key, entry)
        entry[0] += 1
        if entry[0] > _OFFSET_BLOCK:
            entry[0], entry[2], entry[1] = 1, entry[1], delta
        elif delta < entry[1]:
            entry[1] = delta
        return min(arrived, stamp + min(entry[1], entry[2]))

    # -- I/O, outside the engine lock ---------------------------------------------------------
    def prepare(self, now: float, lock: AbstractContextManager[Any]) -> None:
        """Check the eviction policy once; then snapshot the clients' subscriptions to
        result channels, and check the idle times of the due ids."""
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
        try:  # who holds results right now (clients waiting over pub/sub)
            held, complete = results.subscribed(
                self.opts.max_subscribed_per_evaluation)
        except Exception as exc:
            self._failed(exc, [], lock)
        taken = time.time()
        with lock:
            self._snapshots.append((taken, held, complete))
            self._recovered()
            # second checks first (they are older), then first checks, in one budget
            limit = self.opts.max_checks_per_evaluation
            again = self._take_due(self.rechecks, 2, now, limit)
            due = self._take_due(self.pending, 1, now, limit - len(again))
        if not due and not again:
            return
        try:
            idle, clock = results.idle_times_clocked([d[0] for d in due]
                                                     + [r[0][0] for r in again])
        except Exception as exc:
            self._failed(exc, due, lock, again)
        with lock:
            self._fetched.append((now, due, idle, clock, again))
            self._recovered(checked=True)

    def _recovered(self, checked: bool = False) -> None:
        """A call answered; ``checked``: the idle-time lookups did (only they end a
        refusal: the snapshot alone does not show that ``OBJECT`` is allowed)."""
        if checked:
            self.refused = None
        if self._failing:
            self._failing = False
            log.info("unread_results: result backend reachable again")

    def _failed(self, exc: Exception, due: list[Sample],
                lock: AbstractContextManager[Any],
                again: list[Recheck] | None = None) -> NoReturn:
        """Keep ``due`` (and the second checks ``again``) for later, back off, log once,
        and raise :class:`ProbeFailed`.
        A command Redis refused (an error reply, not a lost connection) is also what
        :meth:`coverage` says until it answers again."""
        import redis

        backoff = self.opts.error_backoff_seconds
        refused = None
        if isinstance(exc, redis.ResponseError):
            refused = (f"the result backend's Redis refuses the checks "
                       f"({str(exc)[:120]}); retried every {backoff:g}s")
        with lock:
            self.refused = refused
            self.pending.extendleft(reversed(due))
            if again:
                self.rechecks.extendleft(reversed(again))
            self._retry_at = time.time() + backoff
            first = not self._failing
            self._failing = True
        if first:
            log.warning("unread_results: result backend check failed (%s: %s); retrying "
                        "every %gs (counted in flower_practices_probe_errors_total"
                        "{probe=\"%s\"}, logged once until it works again)",
                        type(exc).__name__, exc, backoff, PROBE)
        raise ProbeFailed(PROBE) from exc

    def _take_due(self, queue: deque[Any], at: int, now: float, limit: int) -> list[Any]:
        """Up to ``limit`` entries from the front of ``queue`` (in time order) whose time,
        field ``at``, is ``grace_seconds`` old or more: the sampled successes (their
        first check) or the first checks (their second)."""
        grace = self.opts.grace_seconds
        due = []
        while queue and len(due) < limit and now - queue[0][at] >= grace:
            due.append(queue.popleft())
        return due

    # -- evaluation, under the engine lock --------------------------------------------------
    def evaluate(self, now: float) -> Iterable[Condition]:
        snapshots, self._snapshots = self._snapshots, []
        for taken, held, complete in snapshots:
            self._apply_snapshot(taken, held, complete)
        fetched, self._fetched = self._fetched, []
        for checked_at, due, idle, clock, again in fetched:
            self._confirm(checked_at, again, idle)
            self._judge(checked_at, due, idle, clock)
        self._age(now)
        if len(self.seen) >= _MAX_TASKS:
            # the per-task counters only pace sample_every: restarting them is harmless,
            # and it lets tasks first seen after the table filled up be sampled too
            self.seen.clear()
        yield from self._conditions(now)

    def _apply_snapshot(self, taken: float, held: set[str], complete: bool) -> None:
        tasks = self.ctx.state.tasks
        for task_id in held:
            self.subscribed.put(task_id, True)
            rec = tasks.get(task_id)
            if rec is not None and rec.name and (
                    (rec.queue, rec.name) in self.pubsub_seen
                    or len(self.pubsub_seen) < _MAX_TASKS):
                self.pubsub_seen[(rec.queue, rec.name)] = taken
        if complete:
            times = self.snapshot_times
            times.append(taken)
            if len(times) > _MAX_SNAPSHOTS:
                del times[: len(times) - _MAX_SNAPSHOTS]

    def _observed(self, start: float, end: float) -> bool:
        """A complete snapshot was taken within [start, end]."""
        times = self.snapshot_times
        i = bisect_left(times, start)
        return i < len(times) and times[i] <= end

    def _judge(self, now: float, due: list[Sample], idle: dict[str, int | None],
               clock: Clock | None = None) -> None:
        tolerance = self.opts.tolerance_seconds
        spacing = self._spacing()  # the snapshots do not change while judging
        second_look = self.opts.grace_seconds > 0.0  # with none, it would see the same
        for sample in due:
            uuid, ts, queue, task, since, until, written_by, received = sample
            if uuid not in idle:  # error reply for this key: no verdict
                continue
            seconds = idle[uuid]
            key = (queue, task)
            ring = self.verdicts.get(key)
            if seconds is None:  # missing: see the module docstring
                if ring is not None:
                    ring.append((now, MISSING, 0.0, 0.0))
                continue
            if uuid in self.subscribed:
                verdict = READ_PUBSUB
                self.pubsub_seen[key] = now
            elif uuid in self.passed_on or uuid in self.parents:
                verdict = PASSED_ON
            elif seconds < (now - ts) - tolerance:
                verdict = READ_KEY
            elif (written_by is not None and clock is not None
                    and _read_in_later_second(seconds, written_by, clock)):
                verdict = READ_KEY  # read within about a second of the write
                if key in self.fast_key_seen or len(self.fast_key_seen) < _MAX_TASKS:
                    self.fast_key_seen[key] = now
            elif self._observed(since + tolerance, until - tolerance):
                verdict = UNREAD
            else:
                verdict = UNOBSERVED
            chance = self._chance(since, until, spacing)
            floor = self._chance(received or until, until, spacing)
            if verdict in (UNREAD, UNOBSERVED) and second_look:
                # not read yet: a caller may fetch it later by id (a report downloaded
                # a minute on); it is looked at once more before it counts
                self.rechecks.append((sample, verdict, now, chance, floor))
                continue
            self._record(key, ring, (now, verdict, chance, floor))

    def _record(self, key: tuple[str, str], ring: deque[Verdict] | None,
                verdict: Verdict) -> None:
        """Keep one verdict of task ``key`` (its ring created if new, within
        ``_MAX_TASKS``); an unread one adds to the task's tally."""
        if ring is None:
            if len(self.verdicts) >= _MAX_TASKS:
                return
            ring = self.verdicts[key] = deque(maxlen=self.opts.max_samples)
        ring.append(verdict)
        self.checked += 1
        if verdict[1] in (UNREAD, UNOBSERVED):
            tally = self.unread_total.setdefault(key, [0, 0, False])
            tally[0] += 1

    def _confirm(self, now: float, again: list[Recheck],
                 idle: dict[str, int | None]) -> None:
        """The second look at results that looked unread: read since the first check
        (by key, or seen subscribed: ``AsyncResult(id).get()`` a while later) makes it a
        read, gone since makes it missing (read and forgotten, or expired: unknown),
        still untouched confirms the first verdict."""
        tolerance = self.opts.tolerance_seconds
        for sample, verdict, first, chance, floor in again:
            uuid, queue, task = sample[0], sample[2], sample[3]
            if uuid not in idle:  # error reply for this key: no verdict
                continue
            seconds = idle[uuid]
            key = (queue, task)
            ring = self.verdicts.get(key)
            if seconds is None:
                if ring is not None:
                    ring.append((now, MISSING, 0.0, 0.0))
                continue
            if uuid in self.subscribed:
                verdict = READ_PUBSUB
            elif seconds < (now - first) - tolerance:
                verdict = READ_KEY
            self._record(key, ring, (now, verdict, chance, floor))

    def _spacing(self) -> float:
        """The recent snapshots' spacing (seconds; the evaluation interval before two)."""
        times = self.snapshot_times[-20:]
        period = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0.0
        if period <= 0.0:
            period = float(self.ctx.settings.evaluation_interval) or 1.0
        return period

    @staticmethod
    def _chance(since: float, until: float, spacing: float) -> float:
        """Chance that a snapshot fell while this result was pending: its pending time
        over the snapshots' ``spacing`` (at most 1)."""
        return min(1.0, max(0.0, until - since) / spacing)

    def _pubsub(self, key: tuple[str, str], now: float) -> bool:
        """Results of this task were seen read over pub/sub within the window."""
        seen = self.pubsub_seen.get(key)
        return seen is not None and now - seen <= self.opts.window_seconds

    def _fast_key(self, key: tuple[str, str], now: float) -> bool:
        """Results of this task were seen read by key within about a second of their
        write, within the window: a caller polls for them (a status endpoint)."""
        seen = self.fast_key_seen.get(key)
        return seen is not None and now - seen <= self.opts.window_seconds

    def _age(self, now: float) -> None:
        """Forget verdicts older than ``window_seconds`` (rings are in check order)."""
        oldest = now - self.opts.window_seconds
        for key in list(self.verdicts):
            ring = self.verdicts[key]
            while ring and ring[0][0] <= oldest:
                ring.popleft()
            if not ring:
                del self.verdicts[key]
        for key in [k for k in self.pubsub_seen if not self._pubsub(k, now)]:
            del self.pubsub_seen[key]
        for key in [k for k in self.fast_key_seen if not self._fast_key(k, now)]:
            del self.fast_key_seen[key]
        for key in [k for k in self.unread_total if k not in self.verdicts]:
            del self.unread_total[key]
        cut = bisect_left(self.snapshot_times, oldest)
        if cut:
            del self.snapshot_times[:cut]

    def verdict_counts(self, task: str, queue: str = "") -> dict[str, int]:
        """Current verdicts of one task: ``{"unread": n, "read": n, "missing": n}``
        (unread includes unobserved ones, read both ways of reading)."""
        ring = self.verdicts.get((queue, task), ())
        values = [entry[1] for entry in ring]
        return {"unread": values.count(UNREAD) + values.count(UNOBSERVED),
                "read": sum(values.count(v) for v in READ),
                "missing": values.count(MISSING)}

    def _conditions(self, now: float) -> Iterable[Condition]:
        min_samples = self.opts.min_samples
        min_share = self.opts.min_share
        min_evidence = self.opts.min_unread_evidence
        for key, ring in self.verdicts.items():
            stats = self._stats(key, ring, now, min_evidence)
            if self._tally(key, stats, stats["n"] >= min_samples
                           and stats["share"] >= min_share):
                yield self._condition(key, stats, min_evidence)

    def _stats(self, key: tuple[str, str], ring: Any, now: float,
               min_evidence: float) -> dict[str, Any]:
        """One task's verdicts in the window, and how many count as unread."""
        values = [entry[1] for entry in ring]
        by_key, by_pubsub = values.count(READ_KEY), values.count(READ_PUBSUB)
        passed = values.count(PASSED_ON)
        confirmed, unobserved = values.count(UNREAD), values.count(UNOBSERVED)
        pubsub = self._pubsub(key, now)
        # a caller reading by key within the second of the write is seen only when the
        # read falls in a later second of Redis' clock: once one was seen, the results
        # that look unread may well be its unseen reads, and no snapshot can tell
        poller = self._fast_key(key, now)
        # snapshots that would have caught a caller waiting, had there been one
        weight = confirmed + sum(c for _, v, c, _ in ring if v == UNOBSERVED)
        # a result seen held is no proof that callers wait: one that drops its
        # AsyncResult holds the channel for milliseconds after the send, and a snapshot
        # may fall there. Callers waiting on these results would have been seen about
        # ``waiting`` times (counted from the worker's receipt on: skew-free, low)
        waiting = confirmed + sum(floor for _, v, _, floor in ring
                                  if v in (UNOBSERVED, READ_PUBSUB))
        wait = pubsub and not too_few_sightings(by_pubsub, waiting, min_evidence)
        decided = not wait and not poller and weight >= min_evidence
        unread = 0 if poller else confirmed + unobserved if decided else confirmed
        n = unread + by_key + by_pubsub + passed
        return {"values": values, "by_key": by_key, "by_pubsub": by_pubsub,
                "passed": passed,
                "confirmed": confirmed, "unobserved": unobserved, "pubsub": pubsub,
                "waiting": waiting,
                "weight": weight, "unread": unread, "n": n, "poller": poller,
                "share": unread / n if n else 0.0}

    def _tally(self, key: tuple[str, str], stats: dict[str, Any], holds: bool) -> bool:
        """Count the unread results new since the last round the condition held; return
        ``holds``."""
        tally = self.unread_total.get(key)
        if not holds:
            if tally is not None:
                tally[1], tally[2] = tally[0], False
            return False
        unread = stats["unread"]
        if tally is None:
            tally = self.unread_total[key] = [unread, 0, False]
        new = tally[0] - tally[1] if tally[2] else unread
        if new > 0:
            self.count(key[0] or None, key[1] or None, new)
        tally[1], tally[2] = tally[0], True
        return True

    def _condition(self, key: tuple[str, str], stats: dict[str, Any],
                   min_evidence: float) -> Condition:
        queue, task = key
        unread, n, share = stats["unread"], stats["n"], stats["share"]
        evidence: dict[str, Any] = {
            "sampled_results": n, "unread_results": unread,
            "unread_share": round(share, 3),
            "read_by_key": stats["by_key"], "read_over_pubsub": stats["by_pubsub"],
            "passed_to_child_task": stats["passed"],
            "unread_seen_unsubscribed_while_pending": stats["confirmed"],
            "unread_unobserved": stats["unobserved"],
            "pubsub_readers_seen": stats["pubsub"],
            "expected_pubsub_sightings": round(stats["waiting"], 1),
            "unread_evidence": round(stats["weight"], 1),
            "min_unread_evidence": min_evidence,
            "method": ("OBJECT IDLETIME of the result key, and snapshots of the "
                       "clients' subscriptions to its pub/sub channel"),
            "missing_results": stats["values"].count(MISSING),
            "checked_after_seconds": self.opts.grace_seconds,
            "unread_confirmed_after_seconds": 2 * self.opts.grace_seconds,
            "window_seconds": self.opts.window_seconds,
        }
        summary = (f"{task}: {unread} of {n} sampled results were never read "
                   f"({share:.0%}), neither by key nor over pub/sub; "
                   "set ignore_result=True (unless a process polls them by id: a read "
                   "within a second of the write is invisible to Redis)")
        app = self.ctx.app
        info = app.task(task) if app is not None else None
        if app is None:
            evidence["ignore_result"] = "unknown (app not loaded)"
        elif info is not None:
            evidence["ignore_result"] = info.ignore_result
            if not info.ignore_result:
                summary += " (ignore_result is not set on this task)"
        return Condition(summary=summary, queue=queue or None, task=task,
                         evidence=evidence)

    @classmethod
    def static_check(cls, app: AppInfo) -> list[tuple[str | None, str]]:
        """A result backend is configured and no task ignores its result."""
        tasks = app.tasks
        if not app.result_backend or not tasks or any(t.ignore_result for t in tasks.values()):
            return []
        return [(None, f"a result backend is configured and all {len(tasks)} tasks store "
                       "their results: set ignore_result=True on tasks whose results "
                       "nobody reads (or task_ignore_result=True)")]


def too_few_sightings(seen: int, expected: float, evidence: float) -> bool:
    """``seen`` sightings of held results are too few for callers that wait on them,
    who would have been seen ``expected`` times on average: fewer or as many as that
    has a chance below e^-``evidence`` (Poisson: an upper bound of the chance for a sum
    of independent catches, so this errs towards "they wait"). With nothing seen that
    is ``expected > evidence``, the rule's ``min_unread_evidence``."""
    if seen >= expected:
        return False
    # log P(X <= seen) for X ~ Poisson(expected), summed in log space (no underflow)
    log_expected = math.log(expected)
    terms = [k * log_expected - math.lgamma(k + 1) for k in range(seen + 1)]
    top = max(terms)
    log_p = -expected + top + math.log(sum(math.exp(t - top) for t in terms))
    return log_p < -evidence


def _read_in_later_second(idle: int, written_by: float, clock: Clock) -> bool:
    """The key was last touched in a later second of Redis' LRU clock than the one it
    was written in: read after the write, even when less than a second after it.

    ``written_by`` (exporter's clock) is a moment after the write: on Redis' clock that
    is at most ``written_by + offset_max``, and the write's LRU second is at most its
    floor. The LRU clock at the check is at least the floor of ``TIME`` minus its lag,
    so the last access was at least that minus ``idle``. Both bounds err towards "not
    read": a result nobody read is never taken for read.
    """
    last_access = math.floor(clock.redis_time - clock.lru_lag) - idle
    return last_access > math.floor(written_by + clock.offset_max)
