"""lost_task: a task started on a worker that went offline without a completion event.

:meth:`evaluate` scans the bounded in-flight task records for STARTED tasks whose worker
sent worker-offline ``offline_grace_seconds`` ago, whose heartbeats expired (Celery's
2 x freq rule) more than ``grace_seconds`` ago, or which restarted after the task started
(worker-online, a heartbeat after worker-offline, or ``processed`` going down, as the
state records them) -- a restart the task did not survive.

Each lost task is counted once: its record is marked ``LOST`` in the state
(:meth:`~flower_practices.state.RuntimeState.mark_lost`), so it is never judged again,
even after it left this rule's window. A lost task that shows up again (redelivered with
``acks_late``, or finishing late) is no longer reported; the state handles its events as
usual.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..bounded import LRUDict
from ..findings import Condition
from .base import Rule


class LostTask(Rule):
    id = "lost_task"
    defaults = {
        #: seconds after a worker's heartbeats expired before its started tasks count as lost
        "grace_seconds": 10.0,
        #: seconds after worker-offline: a warm shutdown sends worker-offline first and
        #: then lets running tasks finish, so give them this long
        "offline_grace_seconds": 60.0,
        #: a finding stays active this long after the last lost task was detected
        "window_seconds": 3600.0,
    }

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        #: uuid -> (detected_at, queue, task, worker, reason)
        self.lost: LRUDict[str, tuple[float, str, str, str, str]] = LRUDict(10_000)

    def hooks(self):
        return {"task-received": self._on_task, "task-started": self._on_task,
                "task-succeeded": self._on_task, "task-failed": self._on_task,
                "task-revoked": self._on_task, "task-rejected": self._on_task}

    def _on_task(self, event: dict, rec: Any) -> None:
        lost = self.lost
        if lost and event["uuid"] in lost:  # redelivered or finished: not lost after all
            del lost[event["uuid"]]

    def _reason(self, rec: Any, now: float, grace: float, offline_grace: float) -> str | None:
        state = self.ctx.state
        worker = state.workers.get(rec.hostname)
        if worker is None or worker.last_seen == 0.0:
            return None
        if worker.restarted_at > rec.started_at:
            return "worker restarted after the task started"
        if worker.offline_at and not worker.online:
            return "worker-offline event" if now - worker.offline_at >= offline_grace else None
        if worker.online_since == 0.0:
            return None  # never saw a heartbeat from it: cannot judge
        expiry = max(worker.freq * 2.0, 4.0)
        if now - worker.last_seen > expiry + grace:
            return f"heartbeats expired ({now - worker.last_seen:.0f}s since the last one)"
        return None

    def evaluate(self, now: float) -> Iterable[Condition]:
        grace = float(self.options["grace_seconds"])
        offline_grace = float(self.options["offline_grace_seconds"])
        state = self.ctx.state
        for rec in state.tasks.values():  # marking a record does not resize the dict
            if rec.state != "STARTED" or not rec.hostname:
                continue
            reason = self._reason(rec, now, grace, offline_grace)
            if reason is None:
                continue
            self.lost.put(rec.uuid, (now, rec.queue, rec.name, rec.hostname, reason))
            self.count(rec.queue or None, rec.name or None, worker=rec.hostname)
            state.mark_lost(rec, now)
        window = float(self.options["window_seconds"])
        groups: dict[tuple[str, str, str], list[tuple[float, str]]] = {}
        for uuid in [u for u, v in self.lost.items() if now - v[0] > window]:
            del self.lost[uuid]
        for detected, queue, task, worker, reason in self.lost.values():
            groups.setdefault((queue, task, worker), []).append((detected, reason))
        app = self.ctx.app
        for (queue, task, worker), items in groups.items():
            reasons = sorted({r if not r.startswith("heartbeats") else "heartbeats expired"
                              for _, r in items})
            evidence: dict[str, Any] = {"lost_tasks": len(items), "reasons": reasons}
            summary = (f"{len(items)} {task or 'task'} task(s) started on {worker} were lost: "
                       f"{'; '.join(reasons)}")
            info = app.task(task) if app is not None else None
            if app is None:
                evidence["acks_late"] = "unknown (app not loaded)"
            elif info is not None:
                evidence["acks_late"] = info.acks_late
                if not info.acks_late:
                    summary += " (acks_late is not set: the message was already acknowledged)"
            yield Condition(summary=summary, queue=queue or None, task=task or None,
                            worker=worker, evidence=evidence)
