"""lost_task: a task started on a worker that went offline without a completion event.

:meth:`evaluate` reads each worker's running tasks and orphans (the state's per-worker
indexes, never every tracked task) for STARTED tasks whose worker sent worker-offline
``offline_grace_seconds`` ago (and, for a task with a hard time limit known from ``-A``,
started more than that limit plus ``grace_seconds`` ago: a warm shutdown sends
worker-offline first and lets the task run up to its limit), whose heartbeats expired
(:meth:`~flower_practices.state.WorkerRecord.alive`) more than ``grace_seconds`` ago, or
which restarted after the task started
(worker-online, a heartbeat after worker-offline, or ``processed`` going down, as the
state records them) -- a restart the task did not survive. A consumer reconnect after a
broker restart (worker-offline and worker-online from the same process, tasks still
running) is no restart: the state takes its runs back as running
(:meth:`~flower_practices.state.RuntimeState._reconnected`).

Each lost task is counted once: its record is marked ``LOST`` in the state
(:meth:`~flower_practices.state.RuntimeState.mark_lost`), so it is never judged again,
even after it left this rule's window. The finding's evidence names up to
:data:`MAX_TASK_IDS` lost task ids (``task_ids``, most recent first), never arguments.
A worker started ``--without-heartbeat`` sends no worker event (no heartbeat, no
worker-online/offline; ``WorkerRecord.heartbeats`` stays False) and is never judged:
silent, it cannot be told from dead, so its tasks are not reported lost while it works
-- nor when it dies (documented in the runbook).
A run that ended with no outcome event (``raise Ignore()``, ``Task.replace``) is not
running once its worker sent a heartbeat with ``active=0`` after it (the state releases
it: :meth:`~flower_practices.state.RuntimeState._ended_unreported`), so a clean shutdown
after it reports nothing; on a worker that was never idle since, it is still taken for
running, and lost if the worker then goes.
A lost task that shows up again (redelivered with
``acks_late``, or finishing late) is no longer reported; the state handles its events as
usual. No hooks: at each evaluation a lost task whose record left ``LOST`` (the state
applied a later event of it) or whose id has a newer record is dropped.

The lost tasks in the window are this rule's memory across restarts (the state file,
:mod:`flower_practices.store`): after a restart the finding is rebuilt from them with the
same tasks, neither forgotten nor counted twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..bounded import LRUDict
from ..findings import Condition
from .base import Rule

#: at most this many task ids in a finding's evidence (the most recently detected)
MAX_TASK_IDS = 10


def _s(value: Any) -> str:
    return "" if value is None else str(value)


class LostTask(Rule):
    id = "lost_task"
    judges_silence = True

    @dataclass(frozen=True, slots=True)
    class Options:
        """Typed options (the documented defaults; each may be overridden in
        ``[practices.lost_task]``)."""

        #: seconds after a worker's heartbeats expired before its started tasks count as lost
        grace_seconds: float = 10.0
        #: seconds after worker-offline: a warm shutdown sends worker-offline first and
        #: then lets running tasks finish, so give them this long (with -A, a task with a
        #: hard time limit gets until that limit after its start, if that is later)
        offline_grace_seconds: float = 60.0
        #: a finding stays active this long after the last lost task was detected
        window_seconds: float = 3600.0

    #: this rule's options, typed (set by :class:`Rule`)
    opts: Options

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        #: uuid -> (detected_at, queue, task, worker, reason)
        self.lost: LRUDict[str, tuple[float, str, str, str, str]] = LRUDict(10_000)
        #: uuid -> the record marked lost (not kept across restarts): a later event of the
        #: task moves it out of ``LOST`` even if the state forgets it afterwards
        self._marked: dict[str, Any] = {}

    def memory(self) -> Any:
        """The lost tasks still in the window: a restart neither forgets nor recounts them."""
        return [[uuid, *value] for uuid, value in self.lost.items()]

    def restore_memory(self, data: Any, now: float) -> None:
        for item in data if isinstance(data, list) else ():
            try:
                uuid, detected, queue, task, worker, reason = item
                self.lost.put(str(uuid), (float(detected), _s(queue), _s(task), _s(worker),
                                          _s(reason)))
            except (TypeError, ValueError):
                continue

    def restore_hold(self, finding, now: float) -> float:
        return now  # the lost tasks themselves are restored: evaluate() decides

    def _drop_shown_up(self) -> None:
        """Forget the lost tasks that showed up again (redelivered or finished: not lost
        after all): O(lost tasks), never a scan of the tracked ones."""
        tasks, marked = self.ctx.state.tasks, self._marked
        for uuid in list(self.lost):
            held = marked.get(uuid)
            now_rec = tasks.get(uuid)
            if (held is not None and held.state != "LOST") or \
                    (now_rec is not None and now_rec is not held and now_rec.state != "LOST"):
                del self.lost[uuid]
        for uuid in [u for u in marked if u not in self.lost]:
            del marked[uuid]

    def _reason(self, worker: Any, rec: Any, now: float, grace: float,
                offline_grace: float) -> str | None:
        if worker.restarted_at > rec.started_at:
            return "worker restarted after the task started"
        if worker.offline_at and not worker.online:
            if now - worker.offline_at < offline_grace:
                return None
            limit = self._hard_limit(rec.name)
            if limit is not None and now - rec.started_at < limit + grace:
                return None  # a warm shutdown still lets it run up to its hard time limit
            return "worker-offline event"
        if worker.online_since == 0.0:
            return None  # never saw a heartbeat from it: cannot judge
        if not worker.alive(now - grace):
            return f"heartbeats expired ({now - worker.last_seen:.0f}s since the last one)"
        return None

    def _hard_limit(self, task: str) -> float | None:
        """The task's hard time limit in seconds (task or ``task_time_limit``; ``-A``
        only), None when unknown or none."""
        app = self.ctx.app
        info = app.task(task) if app is not None and task else None
        limit = info.time_limit if info is not None else None
        return float(limit) if limit and limit > 0 else None

    def _candidates(self, now: float) -> list[tuple[Any, str]]:
        """Started tasks whose worker is gone: each worker's orphans (running when it
        went offline or restarted) and its running tasks (its heartbeats may have
        expired) -- never a scan of every tracked task."""
        grace = self.opts.grace_seconds
        offline_grace = self.opts.offline_grace_seconds
        found: list[tuple[Any, str]] = []
        for worker in self.ctx.state.workers.values():
            if worker.last_seen == 0.0 or not (worker.orphans or worker.running_tasks):
                continue
            for rec in (*worker.orphans.values(), *worker.running_tasks.values()):
                if rec.state != "STARTED":
                    continue
                reason = self._reason(worker, rec, now, grace, offline_grace)
                if reason is not None:
                    found.append((rec, reason))
        return found

    def evaluate(self, now: float) -> Iterable[Condition]:
        state = self.ctx.state
        self._drop_shown_up()
        for rec, reason in self._candidates(now):
            self.lost.put(rec.uuid, (now, rec.queue, rec.name, rec.hostname, reason))
            self._marked[rec.uuid] = rec
            self.count(rec.queue or None, rec.name or None, worker=rec.hostname)
            state.mark_lost(rec, now)
        window = self.opts.window_seconds
        groups: dict[tuple[str, str, str], list[tuple[float, str, str]]] = {}
        for uuid in [u for u, v in self.lost.items() if now - v[0] > window]:
            del self.lost[uuid]
        for uuid, (detected, queue, task, worker, reason) in self.lost.items():
            groups.setdefault((queue, task, worker), []).append((detected, reason, uuid))
        app = self.ctx.app
        for (queue, task, worker), items in groups.items():
            reasons = sorted({r if not r.startswith("heartbeats") else "heartbeats expired"
                              for _, r, _ in items})
            # the most recent ids (ids only: never arguments), to look up or re-run in Flower
            recent = sorted(items, key=lambda item: item[0], reverse=True)[:MAX_TASK_IDS]
            evidence: dict[str, Any] = {"lost_tasks": len(items), "reasons": reasons,
                                        "task_ids": [uuid for _, _, uuid in recent]}
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
