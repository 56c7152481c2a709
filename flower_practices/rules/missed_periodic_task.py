"""missed_periodic_task: a periodic task not sent within its period plus a grace.

The tasks and their periods come from :mod:`~flower_practices.rules.periodic`: with
``-A proj`` the app's ``beat_schedule`` (interval and crontab entries, due times as beat
computes them), and for every task the period learned from its periodic sends' cadence
(so database-backed schedulers are covered without ``-A``). A task is overdue when the
run after its last send was due more than ``grace_seconds`` ago: beat is down, stuck,
or lost its schedule. Nothing is judged before a period and the grace have passed since
the exporter started (it cannot know what it did not watch); a task scheduled with
``-A`` but never seen sent is overdue once a period and the grace passed since then.
A task whose period was *learned* (not in the loaded ``beat_schedule``) is not missed
while a producer cadenced for it (its ``celery beat``) has sent another of its periodic
tasks since the run was due (from ``tolerance`` x period before: beat sends the runs of
one tick together) and that one is not overdue: that scheduler is running, and a learned
period cannot tell a schedule's pause (``crontab(hour="9-17")``, weekdays only, an entry
disabled in a database scheduler) from a miss. A beat that sends nothing else is judged
as before.
A run that fell due while the event stream was down may have been sent unheard
(:class:`~flower_practices.events.status.Hearing`): nothing is judged while it is down,
and afterwards the first run due after it came back is judged instead -- unless the task
was overdue already when the stream went down.

The count is the number of runs missed (one more per further period). The learned
periods and last sends are this rule's memory across restarts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..findings import Condition
from .periodic import (
    MAX_HOSTS,
    SENT_EVENTS_OFF,
    PeriodicRecord,
    PeriodicRule,
    sent_events_off,
)

if TYPE_CHECKING:
    from ..appinfo import AppInfo


class MissedPeriodicTask(PeriodicRule):
    id = "missed_periodic_task"
    judges_silence = True

    @dataclass(frozen=True, slots=True)
    class Options:
        """Typed options (the documented defaults; each may be overridden in
        ``[practices.missed_periodic_task]``)."""

        #: seconds past a run's due time before it counts as missed
        grace_seconds: float = 60.0
        #: share of the period a send may be early or late and still be on time (jitter)
        tolerance: float = 0.1
        #: regular intervals in a row before a period is learned from the sends
        min_regular_runs: int = 5
        #: seconds the cadence must also have held (regular intervals in a row x the
        #: period) before a period is learned from the sends; raise it (e.g. 600) where
        #: throttled batch jobs send one task on a steady rhythm and then stop
        min_learning_seconds: float = 0.0

    #: this rule's options, typed (set by :class:`Rule`)
    opts: Options

    @classmethod
    def static_check(cls, app: AppInfo) -> list[tuple[str | None, str]]:
        """beat_schedule entries that can never be sent as meant: a task name the app
        does not register, or a schedule Celery cannot use."""
        out: list[tuple[str | None, str]] = []
        for entry in app.beat_schedule:
            if not entry.task:
                out.append((None, f"beat_schedule entry {entry.name!r} names no task"))
                continue
            if entry.task not in app.tasks and not entry.task.startswith("celery."):
                out.append((entry.task, f"beat_schedule entry {entry.name!r} sends "
                                        f"{entry.task!r}, which the app does not register: "
                                        f"workers reject it as unregistered"))
            if entry.schedule is None:
                out.append((entry.task, f"beat_schedule entry {entry.name!r} has a schedule "
                                        f"of type {entry.kind!r} Celery cannot use (a "
                                        f"positive number of seconds, timedelta, schedule, "
                                        f"crontab or solar)"))
        return out

    #: task -> (last send the count is for, runs missed counted since it)
    counted: dict[str, tuple[float, int]]

    def counted_memory(self) -> Any:
        return [[k, v[0], v[1]] for k, v in self.counted.items()]

    def restore_counted(self, data: Any) -> None:
        for item in data if isinstance(data, list) else ():
            try:
                name, last, n = item
                self.counted[str(name)[:200]] = (float(last), int(n))
            except (TypeError, ValueError):
                continue

    def restore_hold(self, finding, now: float) -> float:
        return now  # the last sends are restored: evaluate() decides

    def coverage(self) -> str:
        events = super().coverage()
        return SENT_EVENTS_OFF if events == "active" and sent_events_off(self.ctx) else events

    def evaluate(self, now: float) -> Iterable[Condition]:
        if sent_events_off(self.ctx):
            return
        tracker = self.tracker
        grace = self.opts.grace_seconds
        hearing = self.ctx.state.hearing
        for rec in tracker.periodic():
            tracker.refresh(rec, now)
            period = rec.period()
            if period <= 0.0 or now < tracker.started + period + grace:
                continue
            # a run due while the stream was down may have been sent unheard: the run
            # after the blind window is judged instead (unless it was overdue already)
            last = rec.last_sent or tracker.started
            heard = hearing.heard_from(last, period + grace)
            if heard == math.inf:
                continue  # the stream is down: unknown, not missed
            due = tracker.due(rec, now, heard if heard != last else None)
            if due is None or now <= due + grace:
                continue
            if not rec.scheduled and tracker.still_sending(
                    rec, due - tracker.tolerance * period, now, grace):
                # a learned period is one fixed interval: its producer sent another of
                # its periodic tasks since this run was due (or at its tick, within the
                # jitter), so it runs, and this one paused (a crontab with hours or
                # weekdays) or left its schedule -- not a scheduler down
                continue
            yield self._condition(rec, now, due, period)

    def _condition(self, rec: PeriodicRecord, now: float, due: float,
                   period: float) -> Condition:
        grace = self.opts.grace_seconds
        missed = 1 + int((now - grace - due) // period)
        last, counted = self.counted.get(rec.name, (rec.last_sent, 0))
        if last != rec.last_sent:
            counted = 0
        if missed > counted:
            self.count(None, rec.name, missed - counted)
            self.counted[rec.name] = (rec.last_sent, missed)
        source = "beat_schedule" if rec.schedule_period > 0.0 else "learned from sends"
        evidence: dict[str, Any] = {
            "period_seconds": round(period, 3), "period_source": source,
            "due_at": round(due, 3), "overdue_seconds": round(now - due, 1),
            "missed_runs": missed, "grace_seconds": grace,
            "last_sent_at": round(rec.last_sent, 3) if rec.last_sent else None,
            "last_producers": sorted(rec.producers, key=lambda h: -rec.producers[h].last)
            [:MAX_HOSTS],
        }
        entries = self.tracker.entries.get(rec.name)
        if entries:
            evidence["beat_entries"] = [e.name for e in entries][:MAX_HOSTS]
        seen = "never sent since the exporter started" if not rec.last_sent else \
            f"last sent {now - rec.last_sent:.0f}s ago"
        summary = (f"periodic task {rec.name} (every {period:.3g}s) is overdue by "
                   f"{now - due:.0f}s, {seen}: is celery beat running?")
        return Condition(summary=summary, task=rec.name, evidence=evidence)
