"""periodic_overlap: a periodic task whose runs last longer than its period, so runs
pile up.

For the periodic tasks (see :mod:`~flower_practices.rules.periodic`), task-started
registers a run and its completion (task-succeeded, -failed, -retried, -revoked,
-rejected) ends it. A run *overlaps* when it starts while an earlier run of the same
task is still running and has been for about a period (at least (1 - ``tolerance``) x
the period), or when it finishes after running longer than the period (one worker slot:
the next run waits behind it). Runs of a backlog that start together (a worker back
after a restart drains the sends it missed) do not overlap in this sense. Each such run
is counted once. Runs whose worker died are forgotten after ``window_seconds``. The
finding holds for ``window_seconds`` after the last overlapping run; the evidence gives
the period and the longest runtime.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..events.types import (
    TASK_FAILED,
    TASK_REJECTED,
    TASK_RETRIED,
    TASK_REVOKED,
    TASK_STARTED,
    TASK_SUCCEEDED,
)
from ..findings import Condition
from .periodic import PeriodicRule


class PeriodicOverlap(PeriodicRule):
    id = "periodic_overlap"
    judges_silence = True

    @dataclass(frozen=True, slots=True)
    class Options:
        """Typed options (the documented defaults; each may be overridden in
        ``[practices.periodic_overlap]``)."""

        #: a finding stays active this long after the last overlapping run
        window_seconds: float = 3600.0
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

    def hooks(self):
        t = self.tracker
        return {**super().hooks(), TASK_STARTED: t.on_started,
                TASK_SUCCEEDED: t.on_ended, TASK_FAILED: t.on_ended,
                TASK_RETRIED: t.on_ended, TASK_REVOKED: t.on_ended,
                TASK_REJECTED: t.on_ended}

    def evaluate(self, now: float) -> Iterable[Condition]:
        tracker = self.tracker
        window = self.opts.window_seconds
        for rec in tracker.periodic():
            if rec.running:
                tracker.prune(rec, now, window)
            if not rec.overlaps:
                continue
            counted = self.counted.get(rec.name, 0)
            if rec.overlaps > counted:
                self.count(None, rec.name, rec.overlaps - counted)
                self.counted[rec.name] = rec.overlaps
            if now - rec.last_overlap > window:
                continue
            tracker.refresh(rec, now)
            period = rec.period()
            longest = max([rec.max_runtime, *(now - run[0] for run in rec.running.values())])
            evidence = {"period_seconds": round(period, 3),
                        "longest_runtime_seconds": round(longest, 1),
                        "running_now": len(rec.running),
                        "overlapping_runs": rec.overlaps,
                        "last_overlap_at": round(rec.last_overlap, 3)}
            summary = (f"runs of periodic task {rec.name} last about its period "
                       f"({period:.3g}s) or longer (longest {longest:.3g}s) and pile up: "
                       f"{len(rec.running)} running now")
            yield Condition(summary=summary, task=rec.name, evidence=evidence)
