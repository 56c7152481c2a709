"""worker_process_killed: tasks failed with ``WorkerLostError`` while their worker stayed up.

A prefork pool process killed under a task (by the kernel's OOM killer, ``kill -9``, a
segfault in a C extension) makes the worker's main process report the task as failed
with ``billiard.exceptions.WorkerLostError``; the worker itself lives on and keeps
sending heartbeats, so ``lost_task`` (a worker gone) never sees it. With
``retry_on_worker_lost`` (``task_retry_on_worker_lost``, Celery >= 5.7) the worker retries
the task instead: the kill is then a task-retried reporting ``WorkerLostError``, counted
alike (the evidence's ``retried`` says how many of the kills were retried). With
``acks_late`` and ``reject_on_worker_lost`` it sends no failure at all but a task-rejected
``requeue=True`` (the message handed back): that is a kill when the app is loaded
(``-A``) and says the task runs ``acks_late`` with ``reject_on_worker_lost``, its code
cannot raise ``Reject`` (which a task raises to requeue itself; read through the
project's helpers it calls: ``TaskInfo.raises_reject``) and a time-limit kill
would be acknowledged (``acks_on_timeout``), and the rejected delivery had started
(``requeued`` in the evidence; no signal is named then).

The task-failed and task-retried hook reads only the exception's *class name*
(:func:`~flower_practices.events.sanitize.failure_exception`: the ``exception`` repr's,
or with billiard >= 4.2, whose ``ExceptionWithTraceback()`` wrapper names no class, the
traceback's last line's) and, for a ``WorkerLostError``, the signal billiard names in
it (``signal 9 (SIGKILL)``: :func:`killed_by`, the signal's number and name only;
nothing else of the message is read). The failure is held until the worker shows it is
still up: an event or heartbeat from it after the failure while it is alive
(:meth:`WorkerRecord.alive`); then it is counted once. A failure whose worker shows no
such sign within ``confirm_seconds`` (it went offline, or died with the pool:
``lost_task``'s case) is dropped. Celery sends no task-failed for processes it kills
itself in a cold shutdown (and a requeue then is followed by worker-offline: dropped).

The confirmed kills in the window are this rule's memory across restarts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..bounded import LRUDict
from ..events.sanitize import failure_exception
from ..events.types import TASK_FAILED, TASK_REJECTED, TASK_RETRIED
from ..findings import Condition
from .base import Rule

if TYPE_CHECKING:
    from ..appinfo import AppInfo

#: the exception class (bare name) billiard reports for a pool process that exited
WORKER_LOST = "WorkerLostError"
#: at most this many task ids in a finding's evidence (the most recent)
MAX_TASK_IDS = 10
#: (queue, task, worker) tallies kept; a new key past it is not reported (still counted)
_MAX_KEYS = 2000
#: distinct signal names per tally
_MAX_SIGNALS = 8

#: billiard's ``human_status``: "signal 9 (SIGKILL)" (or "signal 9" with no name), read
#: within the first 256 characters of the field only
_SIGNAL = re.compile(r"signal (\d{1,2})(?: \((SIG[A-Z0-9+]{1,12})\))?")
_MAX_SCAN = 256


def killed_by(value: Any) -> str | None:
    """The signal a ``WorkerLostError`` repr names: ``"SIGKILL"`` (or ``"signal 9"`` when
    it gives no name); None when it names none (an exit code, another message).

    Only the ``signal <number> (<SIGNAME>)`` part is matched: a bounded number and an
    upper-case signal name, never the rest of the message."""
    if not isinstance(value, str):
        return None
    m = _SIGNAL.search(value, 0, _MAX_SCAN)
    if m is None:
        return None
    return m.group(2) or f"signal {int(m.group(1))}"


def _s(value: Any) -> str:
    return "" if value is None else str(value)


#: what became of the task whose pool process was killed (the unconfirmed entry's last
#: field): failed for good, retried (``retry_on_worker_lost``), requeued
#: (``reject_on_worker_lost``)
FAILED, RETRIED, REQUEUED = "failed", "retried", "requeued"


class _Tally:
    __slots__ = ("count", "retried", "requeued", "signals", "last_seen", "task_ids")

    def __init__(self) -> None:
        self.count = 0
        #: of ``count``, the kills the worker retried (``retry_on_worker_lost``) and
        #: those whose message it handed back (``reject_on_worker_lost``)
        self.retried = 0
        self.requeued = 0
        #: signal name -> kills; "" for a WorkerLostError that names no signal
        self.signals: dict[str, int] = {}
        self.last_seen = 0.0
        self.task_ids: list[str] = []

    def add(self, signal: str, uuid: str, now: float, outcome: str) -> None:
        self.count += 1
        if outcome == RETRIED:
            self.retried += 1
        elif outcome == REQUEUED:
            self.requeued += 1
        if signal in self.signals or len(self.signals) < _MAX_SIGNALS:
            self.signals[signal] = self.signals.get(signal, 0) + 1
        self.last_seen = now
        ids = self.task_ids
        ids.append(uuid)
        if len(ids) > MAX_TASK_IDS:
            del ids[0]


class WorkerProcessKilled(Rule):
    id = "worker_process_killed"

    @dataclass(frozen=True, slots=True)
    class Options:
        """Typed options (the documented defaults; each may be overridden in
        ``[practices.worker_process_killed]``)."""

        #: seconds the worker has to show it is still up (a heartbeat or event after the
        #: failure, while alive) for a WorkerLostError to count; else it is dropped (the
        #: whole worker went down: lost_task's case)
        confirm_seconds: float = 30.0
        #: a finding stays active this long after the last killed pool process
        window_seconds: float = 3600.0

    #: this rule's options, typed (set by :class:`Rule`)
    opts: Options

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        #: uuid -> (local time of the failure, queue, task, worker, signal, outcome):
        #: kills waiting for their worker to show it stayed up
        self.unconfirmed: LRUDict[str, tuple[float, str, str, str, str, str]] = \
            LRUDict(10_000)
        self.tallies: dict[tuple[str, str, str], _Tally] = {}

    def hooks(self):
        return {TASK_FAILED: self._on_failed, TASK_RETRIED: self._on_failed,
                TASK_REJECTED: self._on_rejected}

    def _on_failed(self, event: dict, rec: Any) -> None:
        """A task-failed or task-retried reporting ``WorkerLostError``: held until its
        worker shows it stayed up."""
        name, line = failure_exception(event)
        if name is None or name.rsplit(".", 1)[-1] != WORKER_LOST:
            return
        self._hold(event, rec, killed_by(line) or "",
                   RETRIED if event.get("type") == TASK_RETRIED else FAILED)

    def _on_rejected(self, event: dict, rec: Any) -> None:
        """A task-rejected ``requeue=True`` of a started run: a kill when only
        ``reject_on_worker_lost`` can have requeued it (see the module docstring)."""
        if event.get("requeue") is not True or rec is None \
                or not rec.received_at or rec.started_at < rec.received_at:
            return  # not a run that had started (this delivery's task-started unheard)
        app = self.ctx.app
        info = app.task(rec.name) if app is not None and rec.name else None
        if info is None or not (info.acks_late and info.reject_on_worker_lost) \
                or info.raises_reject or info.retry_on_worker_lost \
                or (info.has_time_limit and not info.acks_on_timeout):
            return
        self._hold(event, rec, "", REQUEUED)

    def _hold(self, event: dict, rec: Any, signal: str, outcome: str) -> None:
        hostname = event.get("hostname")
        if not isinstance(hostname, str) or not hostname:
            hostname = rec.hostname if rec is not None else ""
        if not hostname:
            return  # no worker to judge "stayed up" by
        queue = rec.queue if rec is not None else ""
        task = rec.name if rec is not None else ""
        self.unconfirmed.put(event["uuid"], (self.ctx.state.last_event_at, queue, task,
                                             hostname, signal, outcome))

    # -- persistence ---------------------------------------------------------------------
    def memory(self) -> Any:
        """The confirmed kills in the window: a restart neither forgets nor recounts them."""
        return [[q, t, w, tally.count, dict(tally.signals), tally.last_seen,
                 list(tally.task_ids), tally.retried, tally.requeued]
                for (q, t, w), tally in self.tallies.items()]

    def restore_memory(self, data: Any, now: float) -> None:
        for item in data if isinstance(data, list) else ():
            try:
                queue, task, worker, count, signals, last_seen, task_ids = item[:7]
                tally = _Tally()
                tally.count = int(count)
                # saved before retried / requeued kills were counted: none was
                tally.retried = min(int(item[7]), tally.count) if len(item) > 7 else 0
                tally.requeued = min(int(item[8]), tally.count - tally.retried) \
                    if len(item) > 8 else 0
                tally.signals = {str(k)[:40]: int(v) for k, v in dict(signals).items()}
                tally.last_seen = float(last_seen)
                tally.task_ids = [str(u)[:128] for u in task_ids][-MAX_TASK_IDS:]
            except (TypeError, ValueError):
                continue
            if len(self.tallies) < _MAX_KEYS:
                self.tallies[(_s(queue), _s(task), _s(worker))] = tally

    def restore_hold(self, finding, now: float) -> float:
        return now  # the kills themselves are restored: evaluate() decides

    # -- evaluation ----------------------------------------------------------------------
    def _confirm(self, now: float) -> None:
        """Count the failures whose worker showed it stayed up; drop those past
        ``confirm_seconds`` whose worker did not."""
        workers = self.ctx.state.workers
        confirm = self.opts.confirm_seconds
        done: list[str] = []
        for uuid, (at, queue, task, host, signal, outcome) in self.unconfirmed.items():
            worker = workers.get(host)
            if worker is not None and worker.last_seen > at and worker.alive(now) \
                    and not worker.offline_at:
                key = (queue, task, host)
                tally = self.tallies.get(key)
                if tally is None and len(self.tallies) < _MAX_KEYS:
                    tally = self.tallies[key] = _Tally()
                if tally is not None:
                    tally.add(signal, uuid, now, outcome)
                self.count(queue or None, task or None, worker=host)
                done.append(uuid)
            elif now - at > confirm:
                done.append(uuid)
        for uuid in done:
            del self.unconfirmed[uuid]

    def evaluate(self, now: float) -> Iterable[Condition]:
        self._confirm(now)
        window = self.opts.window_seconds
        for key in [k for k, t in self.tallies.items() if now - t.last_seen > window]:
            del self.tallies[key]
        app = self.ctx.app
        for (queue, task, worker), tally in self.tallies.items():
            named = sorted(s for s in tally.signals if s)
            evidence: dict[str, Any] = {
                "worker": worker, "task": task or None, "count": tally.count,
                "retried": tally.retried, "requeued": tally.requeued,
                "signals": {s or "none named": n for s, n in tally.signals.items()},
                "task_ids": list(reversed(tally.task_ids)),
            }
            how = f"killed by {', '.join(named)}" if named else "exited prematurely"
            failed = tally.count - tally.retried - tally.requeued
            outcomes = [text for n, text in (
                (failed, f"{failed} failed with WorkerLostError"),
                (tally.retried, f"{tally.retried} retried after WorkerLostError"),
                (tally.requeued, f"{tally.requeued} requeued by reject_on_worker_lost"),
            ) if n]
            summary = (f"{tally.count} {task or 'task'} task(s) lost their pool process on "
                       f"{worker} ({', '.join(outcomes)}): it was {how} while the worker "
                       "stayed up (out of memory?)")
            info = app.task(task) if app is not None else None
            if app is None:
                evidence["acks_late"] = "unknown (app not loaded)"
            elif info is not None:
                evidence["acks_late"] = info.acks_late
                evidence["reject_on_worker_lost"] = info.reject_on_worker_lost
                evidence["retry_on_worker_lost"] = info.retry_on_worker_lost
            yield Condition(summary=summary, queue=queue or None, task=task or None,
                            worker=worker, evidence=evidence)

    @classmethod
    def static_check(cls, app: AppInfo) -> list[tuple[str | None, str]]:
        """``acks_late`` (``task_acks_late`` or per task) without ``reject_on_worker_lost``
        (nor ``retry_on_worker_lost``, which retries the task first): a task whose pool
        process is killed is acknowledged and fails for good."""
        why = ("without reject_on_worker_lost: a task whose pool process is killed (OOM "
               "killer, SIGKILL) is acknowledged anyway and fails with WorkerLostError "
               "instead of being redelivered")
        if app.acks_late and not app.reject_on_worker_lost and not any(
                task.retry_on_worker_lost for task in app.tasks.values()):
            return [(None, f"task_acks_late is on {why}")]
        return [(name, f"acks_late {why}") for name, task in sorted(app.tasks.items())
                if task.acks_late and not task.reject_on_worker_lost
                and not task.retry_on_worker_lost]
