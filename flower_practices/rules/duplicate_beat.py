"""duplicate_beat: a periodic task sent more than once per period, or by more than one
producer host.

A *duplicate send* is a periodic send (see :mod:`~flower_practices.rules.periodic`) by a
cadenced producer that comes less than (1 - ``tolerance``) x the period after the
previous send of the same task by a cadenced producer: two beat processes (each is its
own producer node, ``gen<pid>@host``), or one beat sending the task twice per period.
A task sent by hand now and then (its producer has no cadence) is never a duplicate, nor
is a task in several ``beat_schedule`` entries (``-A``: each entry sends it once per its
period), nor a failover from one beat to another (their sends do not interleave). Sends
of one producer host count only once they recur: duplicates in at least two periods (a
beat that sends twice per period does so every period), so a regular producer loop that
once sends a burst is not taken for a second beat; two producer hosts interleaving are
reported at once.

The finding holds while duplicates keep coming (the last one within two periods plus
``grace_seconds``); its evidence names the producer hosts involved (at most 10,
sanitised like every label). The count is the number of duplicate sends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..findings import Condition
from .periodic import MAX_HOSTS, SENT_EVENTS_OFF, PeriodicRule, sent_events_off

if TYPE_CHECKING:
    from ..appinfo import AppInfo


class DuplicateBeat(PeriodicRule):
    id = "duplicate_beat"

    @dataclass(frozen=True, slots=True)
    class Options:
        """Typed options (the documented defaults; each may be overridden in
        ``[practices.duplicate_beat]``)."""

        #: a finding holds while the last duplicate send is within two periods plus this
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
        """beat_schedule entries that send the same task with the same arguments and
        options on the same schedule: each run is sent twice."""
        out: list[tuple[str | None, str]] = []
        seen: dict[tuple[str, str, str], str] = {}
        for entry in app.beat_schedule:
            if not entry.task or entry.schedule is None:
                continue
            key = (entry.task, entry.call, repr(entry.schedule)[:500])
            first = seen.setdefault(key, entry.name)
            if first != entry.name:
                out.append((entry.task, f"beat_schedule entries {first!r} and {entry.name!r} "
                                        f"both send {entry.task!r} with the same arguments "
                                        f"on the same schedule"))
        return out

    def coverage(self) -> str:
        events = super().coverage()
        return SENT_EVENTS_OFF if events == "active" and sent_events_off(self.ctx) else events

    def evaluate(self, now: float) -> Iterable[Condition]:
        if sent_events_off(self.ctx):
            return
        tracker = self.tracker
        for rec in tracker.periodic():
            if not rec.duplicates or (len(rec.duplicate_hosts) < 2
                                      and rec.duplicate_periods < 2):
                continue  # none, or one producer's burst within one period (docstring)
            tracker.refresh(rec, now)
            counted = self.counted.get(rec.name, 0)
            if rec.duplicates > counted:
                self.count(None, rec.name, rec.duplicates - counted)
                self.counted[rec.name] = rec.duplicates
            period = rec.period()
            if now - rec.last_duplicate > 2 * period + self.opts.grace_seconds:
                continue
            hosts = sorted(rec.duplicate_hosts)[:MAX_HOSTS]
            active = tracker.active_producers(rec, now, 2 * period + self.opts.grace_seconds)
            evidence = {"hosts": hosts, "active_producers": active,
                        "period_seconds": round(period, 3),
                        "duplicate_sends": rec.duplicates,
                        "last_duplicate_at": round(rec.last_duplicate, 3)}
            if len(hosts) > 1:
                summary = (f"periodic task {rec.name} (every {period:.3g}s) is sent by "
                           f"{len(hosts)} producers ({', '.join(hosts[:3])}): more than "
                           f"one celery beat is running")
            else:
                summary = (f"periodic task {rec.name} (every {period:.3g}s) is sent more "
                           f"than once per period by {hosts[0] if hosts else 'one producer'}")
            yield Condition(summary=summary, task=rec.name, evidence=evidence)
