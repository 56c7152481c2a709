"""Periodic tasks as the event stream shows them: what ``missed_periodic_task``,
``duplicate_beat`` and ``periodic_overlap`` read.

**Periodic sends.** Only a ``task-sent`` event with no ``parent_id``, no ``eta`` (so no
``countdown`` either) and ``retries`` 0 can be a scheduler's send: a retry, a task sent
from a task, or one delayed on purpose is never learned as periodic. (A task in the
app's ``beat_schedule`` may carry an eta: an entry's ``options`` can set a countdown.) The event's
``hostname`` is the producer's node name (``gen<pid>@host``: one per beat process),
sanitised like every label.

**The period of a task** is, with ``-A proj``, the one of its ``beat_schedule`` entry
(Celery's own schedule object, crontab included: see
:meth:`~flower_practices.appinfo.PeriodicEntry.due_after`); otherwise (and for tasks
not in ``beat_schedule``, e.g. a database-backed scheduler) it is learned from the
cadence of periodic sends, by :class:`Cadence`:

- intervals are measured between consecutive sends of the task *by the same producer*
  (two beats do not blur each other's cadence);
- the first interval is the candidate period P; an interval within ``tolerance`` x P of
  P is *regular* (P then moves a quarter of the way towards it, following slow drift);
- an interval close (within ``tolerance`` x k x P) to k x P for k = 2 or 3 is one or two
  missed runs: it neither confirms nor breaks the cadence;
- any other interval restarts learning with it as the candidate period;
- after ``min_regular_runs`` regular intervals in a row the period is learned, if it is
  at least :data:`MIN_LEARNED_PERIOD` (1 s): a load generator or a producer loop that
  sends a task many times a second is steady, not scheduled (beat's own loop is not that
  precise, and a miss of a sub-second "period" is no page) -- and, if
  ``min_learning_seconds`` is set (0 by default: the contract is "after a few regular
  runs"), once the cadence has held that long (the regular intervals in a row times the
  period): a throttled batch job sending one task on a rhythm for a while and then
  stopping looks like a scheduler dying, and only time tells them apart. Once
  learned, a different interval does not unlearn it at once: ``min_regular_runs``
  consecutive intervals that agree with each other (a changed schedule) replace it, and
  ``min_regular_runs`` intervals in a row that fit neither it (nor 2 or 3 periods) nor
  each other unlearn it (the task is no longer periodic).

Beat sends on time to within its loop's precision, so the defaults are strict
(``tolerance`` 0.1, ``min_regular_runs`` 5): irregular tasks (a web app's) almost never
line up five times in a row within 10 %.

**Applications are not schedulers.** A producer seen sending a task with an ``eta`` (a
``countdown``) that is not in the loaded ``beat_schedule`` is an application process (a
web app, a script): beat sends its entries when they are due, and database schedulers
(django-celery-beat) have no countdown at all. Nothing it sends is learned from then
on, and a learned task all of whose producers are applications is not periodic
(:meth:`PeriodicTracker.periodic`), even if it was learned before the delayed send was
seen. At most :data:`MAX_APPLICATIONS` such producers are remembered.

A producer is *cadenced* for a task when at least 2 of its own intervals for it were
regular and they are at least half of its intervals: a beat process is, a web process
that sometimes sends the same task by hand is not.

The three rules share one tracker per engine (per state) when their ``tolerance`` and
``min_regular_runs`` agree (:func:`shared_tracker`): the first rule built feeds it sends
and keeps it in its memory; ``periodic_overlap`` feeds it starts and ends.

Per-event work is O(1): a dict lookup per event, a record per task name (bounded by the
state's ``max_task_names``), at most :data:`MAX_PRODUCERS` producers and
:data:`MAX_RUNNING` running runs per task. Evaluation reads the periodic tasks only.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from ..bounded import LRUDict
from ..events.types import TASK_SENT
from .base import Rule

if TYPE_CHECKING:
    from ..appinfo import PeriodicEntry
    from .base import RuleContext

#: producers remembered per task (the least recently seen is forgotten)
MAX_PRODUCERS = 8
#: runs of one task tracked as running at once
MAX_RUNNING = 32
#: hosts named in a finding's evidence
MAX_HOSTS = 10
#: producers remembered as applications (seen sending a delayed task), least recent out
MAX_APPLICATIONS = 1000
#: seconds: a shorter steady cadence is never learned as a period (see the docstring)
MIN_LEARNED_PERIOD = 1.0
#: a send this soon after the producer's previous one of the task restarts learning
#: without further work (the common case of tasks sent many times a second)
_BURST = 0.5 * MIN_LEARNED_PERIOD
#: a producer is cadenced after this many regular intervals (and half of them regular)
MIN_PRODUCER_RUNS = 2

#: coverage of the rules that read sends when the loaded app sends no task-sent events
SENT_EVENTS_OFF = ("unsupported: task_send_sent_event is off in the app, so beat's sends "
                   "are invisible (turn it on in the configuration beat loads)")


def sent_events_off(ctx: RuleContext) -> bool:
    """The app is loaded (``-A``) and does not send task-sent events: no send is seen,
    so every scheduled task would look missed."""
    return ctx.app is not None and not ctx.app.send_sent_event


#: what one interval told the learner
FIRST, REGULAR, GAP, EARLY, IRREGULAR = "first", "regular", "gap", "early", "irregular"


class Cadence:
    """The period learned from one task's send intervals (the rule is in the module
    docstring)."""

    __slots__ = ("period", "streak", "learned", "candidate", "candidate_streak", "misfits")

    def __init__(self) -> None:
        self.period = 0.0
        self.streak = 0
        self.learned = False
        self.candidate = 0.0
        self.candidate_streak = 0
        #: intervals in a row that fit neither the learned period nor a candidate
        self.misfits = 0

    def feed(self, interval: float, tolerance: float, min_runs: int,
             min_span: float = 0.0) -> str:
        """Take one interval (seconds); returns what it was: :data:`FIRST`,
        :data:`REGULAR`, :data:`GAP` (missed runs), :data:`EARLY` (shorter than the
        learned period) or :data:`IRREGULAR`. The period is learned after ``min_runs``
        regular intervals in a row that span ``min_span`` seconds together."""
        if interval <= 0.0:
            return EARLY if self.learned else IRREGULAR
        p = self.period
        if p <= 0.0:
            self.period = interval
            return FIRST
        if abs(interval - p) <= tolerance * p:
            self.period = p + (interval - p) / 4.0
            self.streak += 1
            self.candidate_streak = self.misfits = 0
            if self.streak >= min_runs and self.period >= MIN_LEARNED_PERIOD \
                    and self.streak * self.period >= min_span:
                self.learned = True
            return REGULAR
        if self.learned:
            self._reconsider(interval, tolerance, min_runs, min_span)
            return EARLY if interval < p else GAP
        k = round(interval / p)
        if 2 <= k <= 3 and abs(interval - k * p) <= tolerance * k * p:
            return GAP
        self.period = interval
        self.streak = 0
        return IRREGULAR

    def _reconsider(self, interval: float, tolerance: float, min_runs: int,
                    min_span: float) -> None:
        """A learned period is replaced only by ``min_runs`` agreeing other intervals (and
        is learned again once they span ``min_span``)."""
        c = self.candidate
        k = round(interval / self.period)
        if 2 <= k <= 3 and abs(interval - k * self.period) <= tolerance * k * self.period:
            return  # missed runs
        if c > 0.0 and abs(interval - c) <= tolerance * c:
            self.candidate_streak += 1
            if self.candidate_streak >= min_runs:
                self.period, self.streak = c, self.candidate_streak
                self.candidate, self.candidate_streak = 0.0, 0
                self.learned = c >= MIN_LEARNED_PERIOD and self.streak * c >= min_span
            return
        self.candidate, self.candidate_streak = interval, 0
        self.misfits += 1
        if self.misfits >= min_runs:  # no cadence any more: learn again from here
            self.learned = False
            self.period, self.streak, self.misfits = interval, 0, 0


class Producer:
    """One producer (beat process) of one task."""

    __slots__ = ("last", "intervals", "regular")

    def __init__(self, last: float) -> None:
        self.last = last
        self.intervals = 0
        self.regular = 0

    @property
    def cadenced(self) -> bool:
        return self.regular >= MIN_PRODUCER_RUNS and 2 * self.regular >= self.intervals


class PeriodicRecord:
    """What is known of one task name's periodic sends and runs."""

    __slots__ = ("name", "cadence", "first_sent", "last_sent", "producers", "scheduled",
                 "multi_entry", "last_cadenced", "last_cadenced_host", "duplicates",
                 "last_duplicate", "duplicate_hosts", "duplicate_periods", "duplicate_since",
                 "running",
                 "overlaps",
                 "last_overlap", "max_runtime", "schedule_period")

    def __init__(self, name: str) -> None:
        self.name = name
        self.cadence = Cadence()
        self.first_sent = 0.0
        self.last_sent = 0.0
        self.producers: dict[str, Producer] = {}
        #: in the app's beat_schedule (``-A``); in more than one entry
        self.scheduled = False
        self.multi_entry = False
        #: the period from the schedule (refreshed at evaluation; 0: none)
        self.schedule_period = 0.0
        #: the last send by a cadenced producer, and who sent it
        self.last_cadenced = 0.0
        self.last_cadenced_host = ""
        #: sends closer than a period to the previous cadenced send (cumulative)
        self.duplicates = 0
        self.last_duplicate = 0.0
        self.duplicate_hosts: dict[str, float] = {}
        #: periods that had a duplicate send (a burst within one period is one), and the
        #: duplicate that began the last of them
        self.duplicate_periods = 0
        self.duplicate_since = 0.0
        #: task id -> [started, counted]: runs started and not finished
        self.running: dict[str, list] = {}
        #: runs that overlapped (started while another ran, or ran longer than the period)
        self.overlaps = 0
        self.last_overlap = 0.0
        self.max_runtime = 0.0

    def period(self) -> float:
        """The period (seconds): the schedule's, else the learned one; 0.0 if unknown."""
        if self.schedule_period > 0.0:
            return self.schedule_period
        return self.cadence.period if self.cadence.learned else 0.0


#: state -> (tolerance, min_runs, min_span) -> the tracker the periodic rules of that
#: engine share
_SHARED: WeakKeyDictionary[Any, dict[tuple[float, int, float], PeriodicTracker]] = \
    WeakKeyDictionary()


def shared_tracker(ctx: RuleContext, tolerance: float, min_runs: int,
                   min_span: float = 0.0) -> tuple[PeriodicTracker, bool]:
    """The tracker of ``ctx``'s engine for these learning options, and whether the caller
    created it (then it feeds it sends and keeps it in its memory)."""
    per_state = _SHARED.setdefault(ctx.state, {})
    key = (tolerance, min_runs, min_span)
    tracker = per_state.get(key)
    if tracker is not None:
        return tracker, False
    tracker = per_state[key] = PeriodicTracker(ctx, tolerance, min_runs, min_span)
    return tracker, True


class PeriodicTracker:
    """Per-task records of periodic sends and runs, fed by a rule's hooks."""

    def __init__(self, ctx: RuleContext, tolerance: float, min_runs: int,
                 min_span: float = 0.0) -> None:
        self.tolerance = tolerance
        self.min_runs = min_runs
        #: seconds a cadence must hold before its period is learned
        self.min_span = min_span
        #: producers seen sending a delayed task not in the schedule -> when (see the
        #: module docstring: applications, not schedulers)
        self.applications: LRUDict[str, float] = LRUDict(MAX_APPLICATIONS)
        self.state = ctx.state
        self.records: LRUDict[str, PeriodicRecord] = LRUDict(
            max(1, ctx.settings.max_task_names))
        #: the records with a known period (scheduled or learned): what evaluation reads
        self.known: dict[str, PeriodicRecord] = {}
        #: when watching began (a restart starts again): nothing is overdue before a
        #: period and the grace have passed since
        self.started = time.time()
        #: task name -> its beat_schedule entries (``-A``)
        self.entries: dict[str, list[PeriodicEntry]] = {}
        app = ctx.app
        for entry in app.beat_schedule if app is not None else ():
            if entry.task and entry.schedule is not None:
                self.entries.setdefault(entry.task, []).append(entry)
        for name in self.entries:
            self.record(name)

    def record(self, name: str) -> PeriodicRecord:
        """The record of ``name`` (created, and touched: the least recently sent task
        is forgotten first)."""
        records = self.records
        rec = records.get(name)
        if rec is not None:
            records.move_to_end(name)
            return rec
        rec = PeriodicRecord(name)
        entries = self.entries.get(name)
        if entries:
            rec.scheduled = True
            rec.multi_entry = len(entries) > 1
            self.refresh(rec, self.started)
            self.known[name] = rec
        evicted = records.put(name, rec)
        if evicted is not None:
            self.known.pop(evicted.name, None)
        return rec

    def refresh(self, rec: PeriodicRecord, now: float) -> None:
        """The schedule's period around the task's last send (crontab periods vary)."""
        entries = self.entries.get(rec.name)
        if not entries:
            return
        periods = [p for e in entries if (p := e.period_at(rec.last_sent or now))]
        rec.schedule_period = min(periods) if periods else 0.0

    def due(self, rec: PeriodicRecord, now: float, after: float | None = None) -> float | None:
        """When the run after the last one seen was due (from ``started`` when none was
        seen; from ``after`` when given: a send before it may have gone unheard); None
        when the task has no known period."""
        last = after if after is not None else rec.last_sent or self.started
        entries = self.entries.get(rec.name)
        if entries:
            dues = [d for e in entries if (d := e.due_after(last)) is not None]
            return min(dues) if dues else None
        period = rec.period()
        return last + period if period > 0.0 and rec.last_sent else None

    def periodic(self) -> list[PeriodicRecord]:
        """The tasks with a known period (scheduled, or learned from a producer that is
        not known as an application), never the others. O(periodic tasks x producers)."""
        apps = self.applications
        if not apps:
            return list(self.known.values())
        return [rec for rec in self.known.values()
                if rec.scheduled or any(host not in apps for host in rec.producers)]

    # -- hooks (O(1)) ---------------------------------------------------------------------
    def on_sent(self, event: dict, task: Any) -> None:
        if event.get("parent_id") or event.get("retries"):
            return
        name = getattr(task, "name", "") or event.get("name")
        if not name or not isinstance(name, str):
            return
        host = event.get("hostname") or ""
        if not isinstance(host, str):
            host = ""
        if name not in self.entries:
            if event.get("eta"):
                # delayed on purpose (a beat entry's own countdown option is not): and
                # its producer is an application, not a scheduler
                if host:
                    self.applications.put(host, event["timestamp"])
                return
            if host in self.applications:
                return
        ts = event["timestamp"]
        rec = self.record(name)
        if not rec.first_sent:
            rec.first_sent = ts
        producer = rec.producers.get(host)
        if producer is None:
            producer = self._new_producer(rec, host, ts)
        else:
            interval = ts - producer.last
            cadence = rec.cadence
            if 0.0 < interval < _BURST and not rec.scheduled and not cadence.learned:
                # far below any period that can be learned: a burst, not a schedule (what
                # Cadence.feed would conclude, without its work: learning restarts here)
                cadence.period, cadence.streak = interval, 0
                producer.intervals += 1
            else:
                self._interval(rec, producer, interval)
            producer.last = ts
        if producer.cadenced:
            self._judge_duplicate(rec, host, ts)
        if ts > rec.last_sent:
            rec.last_sent = ts

    def _new_producer(self, rec: PeriodicRecord, host: str, ts: float) -> Producer:
        producers = rec.producers
        if len(producers) >= MAX_PRODUCERS:
            oldest = min(producers, key=lambda h: producers[h].last)  # at most 8
            del producers[oldest]
        producer = producers[host] = Producer(ts)
        return producer

    def _interval(self, rec: PeriodicRecord, producer: Producer, interval: float) -> None:
        verdict = rec.cadence.feed(interval, self.tolerance, self.min_runs, self.min_span)
        if rec.cadence.learned or rec.scheduled:
            self.known[rec.name] = rec
        else:
            self.known.pop(rec.name, None)
        period = rec.period()
        producer.intervals += 1
        if period > 0.0:
            if abs(interval - period) <= self.tolerance * period:
                producer.regular += 1
        elif verdict == REGULAR:
            producer.regular += 1

    def _judge_duplicate(self, rec: PeriodicRecord, host: str, ts: float) -> None:
        period = rec.period()
        last = rec.last_cadenced
        if period > 0.0 and last and not rec.multi_entry \
                and 0.0 <= ts - last < (1.0 - self.tolerance) * period:
            if not rec.duplicate_since \
                    or ts - rec.duplicate_since >= (1.0 - self.tolerance) * period:
                rec.duplicate_periods += 1
                rec.duplicate_since = ts
            rec.duplicates += 1
            rec.last_duplicate = ts
            self._duplicate_host(rec, rec.last_cadenced_host, ts)
            self._duplicate_host(rec, host, ts)
        rec.last_cadenced = max(last, ts)
        rec.last_cadenced_host = host

    @staticmethod
    def _duplicate_host(rec: PeriodicRecord, host: str, ts: float) -> None:
        hosts = rec.duplicate_hosts
        if host in hosts or len(hosts) < MAX_HOSTS:
            hosts[host] = ts

    def on_started(self, event: dict, task: Any) -> None:
        """A run starting while an earlier run of the task has already been running for
        about a period (within ``tolerance``) overlaps. Runs of a backlog starting
        together (a worker back after a restart) do not: none has run that long."""
        rec = self.records.get(getattr(task, "name", "") or "")
        if rec is None or not (rec.scheduled or rec.cadence.learned):
            return
        running = rec.running
        uuid = event["uuid"]
        ts = event["timestamp"]
        running.pop(uuid, None)  # a retry of a run starting again
        self._drop_dead(running)
        period = rec.period()
        counted = False
        if running and period > 0.0:
            oldest = next(iter(running.values()))  # runs are kept in start order
            if ts - oldest[0] >= (1.0 - self.tolerance) * period:
                counted = True
                rec.overlaps += 1
                rec.last_overlap = ts
        if len(running) < MAX_RUNNING:
            running[uuid] = [ts, counted]

    def _drop_dead(self, running: dict[str, list]) -> None:
        """Forget the oldest runs the state no longer knows as started (lost with their
        worker, or evicted): ``lost_task``'s, not a pile-up. Amortised O(1)."""
        tasks = self.state.tasks
        while running:
            uuid = next(iter(running))
            rec = tasks.get(uuid)
            if rec is not None and rec.state == "STARTED":
                return
            del running[uuid]

    def on_ended(self, event: dict, task: Any) -> None:
        rec = self.records.get(getattr(task, "name", "") or "")
        if rec is None or not rec.running:
            return
        run = rec.running.pop(event["uuid"], None)
        if run is None:
            return
        runtime = event["timestamp"] - run[0]
        rec.max_runtime = max(rec.max_runtime, runtime)
        period = rec.period()
        if not run[1] and period > 0.0 and runtime > period:
            rec.overlaps += 1
            rec.last_overlap = event["timestamp"]

    # -- evaluation -----------------------------------------------------------------------
    def prune(self, rec: PeriodicRecord, now: float, keep: float) -> None:
        """Forget runs that started more than ``keep`` seconds ago (their worker died)."""
        stale = [u for u, run in rec.running.items() if now - run[0] > keep]
        for uuid in stale:
            del rec.running[uuid]
        self._drop_dead(rec.running)

    def still_sending(self, rec: PeriodicRecord, after: float, now: float,
                      grace: float) -> str | None:
        """A producer cadenced for ``rec`` that is still running: it sent another periodic
        task after ``after``, and that task is not overdue from it at ``now`` (its period
        plus ``grace``); its node name, else None. O(periodic tasks x producers), for a
        task judged overdue only."""
        hosts = [h for h, p in rec.producers.items() if p.cadenced]
        if not hosts:
            return None
        for other in self.known.values():
            period = other.period()
            if other is rec or period <= 0.0:
                continue
            for host in hosts:
                p = other.producers.get(host)
                if p is not None and p.cadenced and p.last > after \
                        and now - p.last <= period + grace:
                    return host
        return None

    def active_producers(self, rec: PeriodicRecord, now: float, within: float) -> list[str]:
        return sorted(h for h, p in rec.producers.items()
                      if p.cadenced and now - p.last <= within)[:MAX_HOSTS]

    # -- persistence ----------------------------------------------------------------------
    def memory(self) -> list:
        out = []
        for rec in self.periodic():
            c = rec.cadence
            out.append({
                "name": rec.name, "period": c.period, "streak": c.streak,
                "learned": c.learned, "first_sent": rec.first_sent,
                "last_sent": rec.last_sent,
                "producers": [[h, p.last, p.intervals, p.regular]
                              for h, p in rec.producers.items()],
                "duplicates": rec.duplicates, "last_duplicate": rec.last_duplicate,
                "duplicate_hosts": dict(rec.duplicate_hosts),
                "duplicate_periods": rec.duplicate_periods,
                "overlaps": rec.overlaps, "last_overlap": rec.last_overlap,
                "max_runtime": rec.max_runtime,
            })
        return out

    def restore(self, data: Any) -> None:
        for item in data if isinstance(data, list) else ():
            try:
                self._restore_one(item)
            except (TypeError, ValueError, KeyError, AttributeError):
                continue

    def restore_applications(self, data: Any) -> None:
        for item in data if isinstance(data, list) else ():
            try:
                host, at = item
                self.applications.put(str(host)[:200], float(at))
            except (TypeError, ValueError):
                continue

    def _restore_one(self, item: dict) -> None:
        name = str(item["name"])[:200]
        rec = self.record(name)
        c = rec.cadence
        c.period, c.streak = float(item["period"]), int(item["streak"])
        c.learned = bool(item["learned"])
        rec.first_sent = float(item["first_sent"])
        rec.last_sent = float(item["last_sent"])
        for host, last, intervals, regular in item["producers"][:MAX_PRODUCERS]:
            p = rec.producers[str(host)[:200]] = Producer(float(last))
            p.intervals, p.regular = int(intervals), int(regular)
        rec.duplicates = int(item["duplicates"])
        rec.last_duplicate = float(item["last_duplicate"])
        for host, ts in list(item["duplicate_hosts"].items())[:MAX_HOSTS]:
            rec.duplicate_hosts[str(host)[:200]] = float(ts)
        # saved before the field existed: a reported duplicate counts as confirmed
        rec.duplicate_periods = int(item.get("duplicate_periods",
                                             2 if rec.duplicates else 0))
        rec.duplicate_since = rec.last_duplicate
        rec.overlaps = int(item["overlaps"])
        rec.last_overlap = float(item["last_overlap"])
        rec.max_runtime = float(item["max_runtime"])
        self.refresh(rec, rec.last_sent or self.started)
        if c.learned or rec.scheduled:
            self.known[name] = rec


class PeriodicRule(Rule):
    """What the three periodic rules share: the engine's :class:`PeriodicTracker` for
    their learning options (``tolerance``, ``min_regular_runs``; the first rule to ask
    feeds it task-sent events and keeps it in its memory), and their memory of what was
    counted (``counted``: task name -> occurrences, unless a rule says otherwise)."""

    def __init__(self, ctx: RuleContext, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        self.tracker, self.owner = shared_tracker(ctx, self.opts.tolerance,
                                                  self.opts.min_regular_runs,
                                                  self.opts.min_learning_seconds)
        self.counted: dict[str, Any] = {}

    def hooks(self):
        return {TASK_SENT: self.tracker.on_sent} if self.owner else {}

    def counted_memory(self) -> Any:
        return dict(self.counted)

    def restore_counted(self, data: Any) -> None:
        for name, n in (data.items() if isinstance(data, dict) else ()):
            if isinstance(n, int):
                self.counted[str(name)[:200]] = n

    def memory(self) -> Any:
        tracker = self.tracker
        return {"tasks": tracker.memory() if self.owner else [],
                "applications": [[h, at] for h, at in tracker.applications.items()]
                if self.owner else [],
                "counted": self.counted_memory()}

    def restore_memory(self, data: Any, now: float) -> None:
        if not isinstance(data, dict):
            return
        self.tracker.restore(data.get("tasks"))
        self.tracker.restore_applications(data.get("applications"))
        self.restore_counted(data.get("counted"))

    def restore_hold(self, finding, now: float) -> float:
        return now  # what was counted is restored: evaluate() decides
