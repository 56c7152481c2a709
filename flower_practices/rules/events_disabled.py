"""events_disabled: workers or clients do not send the task events monitoring needs.

Two signals, both from events alone:

- worker side: a live worker's heartbeats show ``processed`` (tasks it accepted) rising
  by at least ``min_processed`` more than the task-started events seen from it, and still
  rising within ``window_seconds`` (so it runs tasks without ``-E`` /
  ``worker_send_task_events``). Heartbeats are sent even when task events are off.
- client side: at least ``min_received`` task-received events of a task name arrive and no
  task-sent for that name was ever seen (``task_send_sent_event`` off in the producers).

When the app is loaded its ``worker_send_task_events`` / ``task_send_sent_event`` settings
are added to the evidence (``"source": "app config"``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..findings import Condition
from .base import Rule

_MAX_NAMES = 2000


class EventsDisabled(Rule):
    id = "events_disabled"
    defaults = {
        #: tasks a worker must process (heartbeat ``processed``) with no task event from it
        "min_processed": 5,
        #: task-received events of one task name, with no task-sent ever, for a finding
        "min_received": 5,
        #: a worker's finding holds while its blind count grew within this many seconds
        "window_seconds": 300.0,
    }

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        #: worker -> task-started events seen from it since its first heartbeat
        self.started: dict[str, int] = {}
        #: worker -> (tasks processed without a task-started event, when that last grew)
        self.blind: dict[str, tuple[int, float]] = {}
        #: worker -> blind tasks already counted in violations_total
        self.counted: dict[str, int] = {}
        self.sent_names: set[str] = set()
        #: task name -> [received without task-sent, queue, counted]
        self.unsent: dict[str, list] = {}

    def hooks(self):
        return {"task-sent": self._on_sent, "task-received": self._on_received,
                "task-started": self._on_started}

    def coverage(self) -> str:
        if not self.ctx.events_supported:
            return "unsupported: the broker is a database; no events can flow"
        return "active"

    def _on_sent(self, event: dict, rec: Any) -> None:
        if rec is not None and rec.name and rec.name not in self.sent_names \
                and len(self.sent_names) < _MAX_NAMES:
            self.sent_names.add(rec.name)
            self.unsent.pop(rec.name, None)

    def _on_started(self, event: dict, rec: Any) -> None:
        host = event.get("hostname")
        worker = self.ctx.state.workers.get(host) if isinstance(host, str) else None
        if worker is not None and worker.first_processed is not None:
            self.started[host] = self.started.get(host, 0) + 1

    def _on_received(self, event: dict, rec: Any) -> None:
        if rec is None or rec.has_sent or not rec.name or rec.name in self.sent_names:
            return
        entry = self.unsent.get(rec.name)
        if entry is None:
            if len(self.unsent) >= _MAX_NAMES:
                return
            entry = self.unsent[rec.name] = [0, rec.queue, 0]
        entry[0] += 1
        if rec.queue:
            entry[1] = rec.queue

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
        min_processed = int(self.options["min_processed"])
        window = float(self.options["window_seconds"])
        for host, worker in state.workers.items():
            if worker.first_processed is None:
                continue
            blind = (worker.processed - worker.first_processed) - self.started.get(host, 0)
            last = self.blind.get(host)
            if last is None or blind > last[0]:
                self.blind[host] = last = (blind, now)
            if blind < min_processed or now - last[1] > window \
                    or not state.worker_alive(worker, now):
                continue
            new = blind - self.counted.get(host, 0)
            if new > 0:
                self.counted[host] = blind
                self.count(None, None, new)
            evidence: dict[str, Any] = {
                "processed_without_task_events": blind,
                "heartbeat_processed_delta": worker.processed - worker.first_processed,
                "task_started_events_from_worker": self.started.get(host, 0),
                "task_events_from_worker": worker.task_events,
            }
            summary = (f"worker {host} processed {blind} task(s) without sending task "
                       "events: start it with -E (worker_send_task_events=True)")
            if self._app_evidence(evidence, "worker_send_task_events") is False:
                summary += "; worker_send_task_events is False in the app config"
            yield Condition(summary=summary, worker=host, evidence=evidence)
        for host in [h for h in self.blind if h not in state.workers]:
            self.blind.pop(host, None)
            self.started.pop(host, None)
            self.counted.pop(host, None)

    def _clients(self) -> Iterable[Condition]:
        min_received = int(self.options["min_received"])
        for name, entry in self.unsent.items():
            received, queue, counted = entry
            if received < min_received:
                continue
            if received > counted:
                self.count(queue or None, name, received - counted)
                entry[2] = received
            evidence: dict[str, Any] = {"received_without_sent": received,
                                        "task_sent_events_seen": 0}
            summary = (f"{received} {name} task(s) were received by workers but no "
                       "task-sent event was ever seen: set task_send_sent_event=True in "
                       "the producers")
            if self._app_evidence(evidence, "send_sent_event") is False:
                summary += " (it is False in the app config)"
            yield Condition(summary=summary, queue=queue or None, task=name,
                            evidence=evidence)

    def evaluate(self, now: float) -> Iterable[Condition]:
        yield from self._workers(now)
        yield from self._clients()
