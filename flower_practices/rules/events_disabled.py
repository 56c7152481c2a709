"""events_disabled: workers or clients do not send the task events monitoring needs.

Two signals, both from events alone:

- worker side: a live worker's heartbeats show ``processed`` (tasks it accepted) rising
  by at least ``min_processed`` more than the task-started events seen from it (judged on
  ``processed`` as of the *previous* heartbeat, so events a busy worker still buffers
  cannot make it look blind), and still
  rising within ``window_seconds`` (so it runs tasks without ``-E`` /
  ``worker_send_task_events``). Heartbeats are sent even when task events are off.
- client side: at least ``min_received`` task-received events of a task name within
  ``window_seconds``, and no task-sent for that name ever seen (``task_send_sent_event``
  off in the producers).

Worker baselines. ``processed`` is Celery's per-process counter; the rule keeps its own
baseline per worker (at most ``max_workers``) and restarts it -- base = the current
``processed``, task-started count 0 -- on worker-online, on worker-offline, when
``processed`` goes down (the worker restarted; its worker-online may have been missed)
and when heartbeats resume after a gap of more than ``_GAP_HEARTBEATS`` intervals (the
exporter missed events, so task-started events from that time are unknown). Comparing
counts only from an uninterrupted stretch keeps a restarted worker flaggable and tasks
run while we were not listening from looking blind.

Client side and messages published before we listened. A task-received event carries no
publication time, so a message published before the exporter subscribed (a backlog being
drained) cannot be told from one sent with sent events off. Decision: received events
are not counted during a warm-up of ``warmup_seconds`` after the rule starts listening
(the first event), and the warm-up starts again after a silence in the stream (no event
of any kind, heartbeats included, for ``_SILENCE_HEARTBEATS`` heartbeat intervals, at
least ``_MIN_SILENCE_SECONDS``; the state keeps the gaps:
:meth:`~flower_practices.state.RuntimeState.listening_since`): a broker outage is also a
time we were not listening. Counts are per name over ``window_seconds`` (twelve time
buckets), so a name that stops arriving without task-sent clears; a task-sent seen for a
name (the state's ``sent_names``) clears it at the next evaluation. Limitation
(documented in the runbook): a backlog that takes longer than the
warm-up to drain, of a name no producer publishes any more, can be flagged until it has
drained and its count aged out. Deployments that restart the exporter on a busy broker
can raise ``warmup_seconds``; ones with empty queues at start (tests, demos) may set 0.

A worker started ``--without-heartbeat`` sends task events but no heartbeat, so it has
no ``processed`` to compare: it is never reported here (it does send events); a worker
with both heartbeats and task events off sends nothing and is invisible to monitoring.

When the app is loaded its ``worker_send_task_events`` / ``task_send_sent_event`` settings
are added to the evidence (``"source": "app config"``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..bounded import WindowCounter
from ..events.types import (
    TASK_RECEIVED,
    TASK_STARTED,
    WORKER_HEARTBEAT,
    WORKER_OFFLINE,
    WORKER_ONLINE,
)
from ..findings import Condition
from .base import Rule

if TYPE_CHECKING:
    from ..appinfo import AppInfo

_MAX_NAMES = 2000
#: heartbeats resuming after this many missed intervals restart a worker's baseline
_GAP_HEARTBEATS = 3.0
#: no event for this many heartbeat intervals (of the slowest worker) restarts the warm-up
_SILENCE_HEARTBEATS = 5.0
#: ... and never for less than this (Celery's default heartbeat interval is 2 s)
_MIN_SILENCE_SECONDS = 30.0


def _when(event: dict) -> float:
    """Receipt time on the exporter's clock when known (the clock ``evaluate`` uses)."""
    at = event.get("local_received")
    return at if type(at) is float else event["timestamp"]


class _Worker:
    """One worker's baseline: counts since its last restart or gap in our stream."""

    __slots__ = ("base", "processed", "settled", "last_beat", "started", "blind_max",
                 "grew_at", "counted")

    def __init__(self) -> None:
        #: ``processed`` when counting (re)started; None until a heartbeat gives it
        self.base: int | None = None
        self.processed = 0
        #: ``processed`` as of the previous heartbeat: the task events of those tasks have
        #: had a whole heartbeat interval to arrive (workers buffer task events briefly,
        #: so the latest heartbeat can count tasks whose events are still on the way)
        self.settled = 0
        self.last_beat = 0.0
        #: task-started events from the worker since ``base``
        self.started = 0
        #: the largest blind count since ``base``, and when it last grew (evaluation clock)
        self.blind_max = 0
        self.grew_at = 0.0
        #: blind tasks since ``base`` already counted in violations_total
        self.counted = 0

    def restart(self, processed: int | None) -> None:
        self.base = processed
        if processed is not None:
            self.processed = self.settled = processed
        self.started = 0
        self.blind_max = 0
        self.counted = 0


class _Unsent:
    """task-received events of one name with no task-sent, over the window."""

    __slots__ = ("window", "total", "counted", "queue", "last_at")

    def __init__(self, window: float, queue: str) -> None:
        self.window = WindowCounter(window)
        #: all counted receipts, and those already in violations_total
        self.total = 0
        self.counted = 0
        self.queue = queue
        self.last_at = 0.0


class EventsDisabled(Rule):
    id = "events_disabled"

    @dataclass(frozen=True, slots=True)
    class Options:
        """Typed options (the documented defaults; each may be overridden in
        ``[practices.events_disabled]``)."""

        #: tasks a worker must process (heartbeat ``processed``) with no task event from it
        min_processed: int = 5
        #: task-received events of one task name within window_seconds, with no task-sent
        #: ever, for a finding
        min_received: int = 5
        #: a worker's finding holds while its blind count grew within this many seconds;
        #: task-received counts per name are taken over this window
        window_seconds: float = 300.0
        #: task-received events are not counted this long after the exporter starts
        #: listening (or the stream resumes): messages published before have no task-sent
        warmup_seconds: float = 60.0

    #: this rule's options, typed (set by :class:`Rule`)
    opts: Options

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        self.window = self.opts.window_seconds
        self.warmup = self.opts.warmup_seconds
        #: worker hostname -> baseline (only workers the state tracks: <= max_workers)
        self.workers: dict[str, _Worker] = {}
        #: task name -> received-without-sent counts (<= _MAX_NAMES)
        self.unsent: dict[str, _Unsent] = {}
        #: a silence this long restarts the warm-up (grows with the heartbeat interval)
        self.silence = _MIN_SILENCE_SECONDS
        #: received-without-sent events ignored because they came during a warm-up
        self.ignored_in_warmup = 0

    def hooks(self):
        return {TASK_RECEIVED: self._on_received,
                TASK_STARTED: self._on_started, WORKER_HEARTBEAT: self._on_heartbeat,
                WORKER_ONLINE: self._on_online, WORKER_OFFLINE: self._on_offline}

    def coverage(self) -> str:
        if not self.ctx.events_supported:
            return "unsupported: the broker is a database; no events can flow"
        return "active"

    # -- hot path -------------------------------------------------------------------------
    def _worker(self, event: dict, create: bool = True) -> _Worker | None:
        host = event.get("hostname")
        if not isinstance(host, str):
            return None
        tally = self.workers.get(host)
        if tally is None and create and host in self.ctx.state.workers \
                and len(self.workers) < self.ctx.settings.max_workers:
            tally = self.workers[host] = _Worker()  # pruned with the state's workers
        return tally

    def _on_online(self, event: dict, rec: Any) -> None:
        tally = self._worker(event)
        if tally is not None:
            processed = event.get("processed")
            tally.restart(processed if type(processed) is int else None)
            tally.last_beat = event["timestamp"]

    def _on_offline(self, event: dict, rec: Any) -> None:
        tally = self._worker(event, create=False)
        if tally is not None:
            tally.restart(None)

    def _on_heartbeat(self, event: dict, rec: Any) -> None:
        freq = event.get("freq")
        if type(freq) in (int, float) and freq > 0:
            silence = freq * _SILENCE_HEARTBEATS
            if silence > self.silence:
                self.silence = silence
        processed = event.get("processed")
        if type(processed) is not int:
            return
        tally = self._worker(event)
        if tally is None:
            return
        ts = event["timestamp"]
        interval = freq if type(freq) in (int, float) and freq > 0 else 2.0
        if tally.base is None or processed < tally.processed \
                or ts - tally.last_beat > interval * _GAP_HEARTBEATS:
            tally.restart(processed)
        tally.settled = tally.processed
        tally.processed = processed
        tally.last_beat = ts

    def _on_started(self, event: dict, rec: Any) -> None:
        tally = self._worker(event, create=False)
        if tally is not None and tally.base is not None:
            tally.started += 1

    def _on_received(self, event: dict, rec: Any) -> None:
        if rec is None or rec.has_sent or not rec.name \
                or rec.name in self.ctx.state.sent_names:
            return
        state = self.ctx.state
        at = state.last_event_at  # this event's arrival (the state applied it)
        since = state.listening_since(self.silence)
        if since is None or at - since < self.warmup:
            self.ignored_in_warmup += 1
            return
        entry = self.unsent.get(rec.name)
        if entry is None:
            if len(self.unsent) >= _MAX_NAMES:
                return
            entry = self.unsent[rec.name] = _Unsent(self.window, rec.queue)
        entry.window.add(at)
        entry.total += 1
        entry.last_at = at
        if rec.queue:
            entry.queue = rec.queue

    # -- evaluation -----------------------------------------------------------------------
    def _app_evidence(self, evidence: dict[str, Any], key: str) -> bool | None:
        app = self.ctx.app
        if app is None:
            return None
        value = getattr(app, key)
        evidence["source"] = "app config"
        evidence[key] = value
        return value

    def _workers(self, now: float) -> Iterable[Condition]:
        """Heartbeat ``processed`` counts task acceptances; compare with task-started."""
        state = self.ctx.state
        min_processed = self.opts.min_processed
        for host in [h for h in self.workers if h not in state.workers]:
            del self.workers[host]
        for host, tally in self.workers.items():
            worker = state.workers[host]
            if tally.base is None:
                continue
            delta = tally.settled - tally.base
            blind = delta - tally.started
            if blind > tally.blind_max:
                tally.blind_max = blind
                tally.grew_at = now
            if blind < min_processed or now - tally.grew_at > self.window \
                    or not worker.alive(now):
                continue
            new = blind - tally.counted
            if new > 0:
                tally.counted = blind
                self.count(None, None, new, worker=host)
            evidence: dict[str, Any] = {
                "processed_without_task_events": blind,
                "heartbeat_processed_delta": delta,
                "task_started_events_from_worker": tally.started,
                "task_events_from_worker": worker.task_events,
            }
            summary = (f"worker {host} processed {blind} task(s) without sending task "
                       "events: start it with -E (worker_send_task_events=True)")
            if self._app_evidence(evidence, "worker_send_task_events") is False:
                summary += "; worker_send_task_events is False in the app config"
            yield Condition(summary=summary, worker=host, evidence=evidence)

    def _clients(self, now: float) -> Iterable[Condition]:
        min_received = self.opts.min_received
        sent_names = self.ctx.state.sent_names  # a task-sent seen for the name clears it
        for name in [n for n, e in self.unsent.items()
                     if now - e.last_at > self.window or n in sent_names]:
            del self.unsent[name]
        for name, entry in self.unsent.items():
            received = entry.window.total(now)
            if received < min_received:
                continue
            if entry.total > entry.counted:
                self.count(entry.queue or None, name, entry.total - entry.counted)
                entry.counted = entry.total
            evidence: dict[str, Any] = {"received_without_sent": received,
                                        "window_seconds": self.window,
                                        "task_sent_events_seen": 0}
            summary = (f"{received} {name} task(s) were received by workers in the last "
                       f"{self.window:g} s but no task-sent event was ever seen: set "
                       "task_send_sent_event=True in the producers")
            if self._app_evidence(evidence, "send_sent_event") is False:
                summary += " (it is False in the app config)"
            yield Condition(summary=summary, queue=entry.queue or None, task=name,
                            evidence=evidence)

    def evaluate(self, now: float) -> Iterable[Condition]:
        yield from self._workers(now)
        yield from self._clients(now)

    @classmethod
    def static_check(cls, app: AppInfo) -> list[tuple[str | None, str]]:
        """``task_send_sent_event`` or ``worker_send_task_events`` is off."""
        off = [setting for setting, on in (("task_send_sent_event", app.send_sent_event),
                                           ("worker_send_task_events",
                                            app.worker_send_task_events)) if not on]
        if not off:
            return []
        seen = "task-sent events" if off == ["task_send_sent_event"] else "tasks"
        return [(None, f"{' and '.join(off)} off: monitoring cannot see {seen}"
                       " (workers may still enable events with -E)")]
