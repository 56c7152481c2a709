"""Bounded runtime state built from the event stream: in-flight tasks, workers and queues.

:meth:`RuntimeState.apply` is the hot path: one dict lookup and a handful of attribute
writes per event, no allocation beyond a new task's record. Memory is bounded by the
caps in :class:`~flower_practices.config.Settings` (documented in the README).
"""

from __future__ import annotations

from .bounded import OTHER, LabelCap, LRUDict, SampleRing
from .config import Settings
from .metrics import BaseMetrics

TERMINAL = frozenset(("task-succeeded", "task-failed", "task-revoked", "task-rejected"))


class TaskRecord:
    """What we remember about one in-flight task (no argument values)."""

    __slots__ = ("uuid", "name", "queue", "sent_at", "received_at", "started_at", "hostname",
                 "retries", "state", "has_sent")

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.name = ""
        self.queue = ""
        self.sent_at = 0.0
        self.received_at = 0.0
        self.started_at = 0.0
        self.hostname = ""
        self.retries = 0
        self.state = "PENDING"
        self.has_sent = False


class WorkerRecord:
    """One worker as seen through its heartbeats, task events and probes."""

    __slots__ = ("hostname", "online", "last_seen", "freq", "processed", "active",
                 "first_processed", "task_events", "reserved", "running", "active_queues",
                 "sw_ident", "label", "online_since", "prefetch", "concurrency")

    def __init__(self, hostname: str, label: str) -> None:
        self.hostname = hostname
        self.label = label
        self.online = False
        self.last_seen = 0.0
        self.freq = 2.0
        self.processed = 0
        self.first_processed: int | None = None
        self.active = 0
        self.task_events = 0
        self.reserved = 0
        self.running = 0
        self.active_queues: tuple[str, ...] | None = None
        self.sw_ident = ""
        self.online_since = 0.0
        self.prefetch: int | None = None
        self.concurrency: int | None = None


class QueueRecord:
    """One queue: traffic seen in events plus the latest probe results."""

    __slots__ = ("name", "label", "sent", "last_sent_at", "waits", "length", "lengths",
                 "consumers", "probed_at", "first_unconsumed_at", "started")

    def __init__(self, name: str, label: str) -> None:
        self.name = name
        self.label = label
        self.sent = 0
        self.started = 0
        self.last_sent_at = 0.0
        self.waits = SampleRing(512)
        self.length: int | None = None
        self.lengths: dict[str, int] = {}
        self.consumers: int | None = None
        self.probed_at = 0.0
        self.first_unconsumed_at = 0.0


class RuntimeState:
    """Everything the rules read, updated event by event."""

    def __init__(self, settings: Settings, metrics: BaseMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tasks: LRUDict[str, TaskRecord] = LRUDict(settings.max_tracked_tasks)
        self.workers: dict[str, WorkerRecord] = {}
        self.queues: dict[str, QueueRecord] = {}
        self.task_label = LabelCap("task", settings.max_task_names)
        self.queue_label = LabelCap("queue", settings.max_queues)
        self.worker_label = LabelCap("worker", settings.max_workers)
        self.task_names: set[str] = set()
        self.sent_events = 0
        self.received_events = 0
        self.last_event_at = 0.0
        self.workers_dropped = 0
        self.queues_dropped = 0
        self.default_queue = "celery"

    # -- lookups -------------------------------------------------------------------------
    def worker(self, hostname: str) -> WorkerRecord | None:
        rec = self.workers.get(hostname)
        if rec is None:
            if len(self.workers) >= self.settings.max_workers:
                self.workers_dropped += 1
                return None
            rec = self.workers[hostname] = WorkerRecord(hostname, self.worker_label(hostname))
        return rec

    def queue(self, name: str) -> QueueRecord | None:
        rec = self.queues.get(name)
        if rec is None:
            if len(self.queues) >= self.settings.max_queues:
                self.queues_dropped += 1
                return None
            rec = self.queues[name] = QueueRecord(name, self.queue_label(name))
        return rec

    def _task(self, uuid: str) -> TaskRecord:
        tasks = self.tasks
        rec = tasks.get(uuid)
        if rec is None:
            rec = TaskRecord(uuid)
            tasks.put(uuid, rec)
        return rec

    def _name(self, rec: TaskRecord, name: object) -> None:
        if name and not rec.name and isinstance(name, str):
            rec.name = name
            if name not in self.task_names and len(self.task_names) < self.settings.max_task_names:
                self.task_names.add(name)

    # -- hot path ------------------------------------------------------------------------
    def apply(self, etype: str, event: dict) -> TaskRecord | None:
        """Update state for one validated event; return the task record for task events."""
        ts = event.get("timestamp") or 0.0
        received = event.get("local_received")
        self.last_event_at = received if type(received) is float else ts
        if etype[0] == "w":  # worker-*
            self._worker_event(etype, event, ts)
            return None
        rec = self._task(event["uuid"])
        hostname = event.get("hostname") or ""
        metrics = self.metrics
        if etype == "task-sent":
            self._name(rec, event.get("name"))
            queue = event.get("queue") or event.get("routing_key") or ""
            if isinstance(queue, str) and queue:
                rec.queue = queue
                q = self.queue(queue)
                if q is not None:
                    q.sent += 1
                    q.last_sent_at = ts
            rec.sent_at = ts
            rec.has_sent = True
            retries = event.get("retries")
            if isinstance(retries, int):
                rec.retries = retries
            rec.state = "SENT"
            self.sent_events += 1
        else:
            worker = self.worker(hostname) if hostname else None
            if worker is not None:
                worker.task_events += 1
                worker.last_seen = self.last_event_at
                if not rec.queue and worker.active_queues and len(worker.active_queues) == 1:
                    rec.queue = worker.active_queues[0]
            if etype == "task-received":
                self._name(rec, event.get("name"))
                rec.received_at = ts
                rec.hostname = hostname
                retries = event.get("retries")
                if isinstance(retries, int):
                    rec.retries = retries
                rec.state = "RECEIVED"
                self.received_events += 1
                if worker is not None:
                    worker.reserved += 1
            elif etype == "task-started":
                rec.started_at = ts
                rec.hostname = hostname
                base = rec.sent_at or rec.received_at
                if base and rec.state in ("SENT", "RECEIVED", "RETRY", "PENDING"):
                    wait = ts - base
                    if wait < 0:
                        wait = 0.0
                    q = self.queues.get(rec.queue) if rec.queue else None
                    if q is not None:
                        q.waits.add(ts, wait)
                        q.started += 1
                        metrics.observe_wait(q.label, wait)
                    else:
                        metrics.observe_wait(self.queue_label(rec.queue) if rec.queue else "",
                                             wait)
                if worker is not None:
                    if rec.state == "RECEIVED" and worker.reserved > 0:
                        worker.reserved -= 1
                    worker.running += 1
                rec.state = "STARTED"
            elif etype in TERMINAL:
                if worker is not None and rec.state == "STARTED" and worker.running > 0:
                    worker.running -= 1
                elif worker is not None and rec.state == "RECEIVED" and worker.reserved > 0:
                    worker.reserved -= 1
                if etype == "task-succeeded":
                    runtime = event.get("runtime")
                    if not isinstance(runtime, (int, float)) and rec.started_at:
                        runtime = ts - rec.started_at
                    if isinstance(runtime, (int, float)):
                        metrics.observe_runtime(self._task_label(rec), self._queue_label(rec),
                                                "succeeded", runtime)
                    rec.state = "SUCCESS"
                elif etype == "task-failed":
                    if rec.started_at and ts:
                        metrics.observe_runtime(self._task_label(rec), self._queue_label(rec),
                                                "failed", max(0.0, ts - rec.started_at))
                    rec.state = "FAILURE"
                else:
                    rec.state = "REVOKED" if etype == "task-revoked" else "REJECTED"
            elif etype == "task-retried":
                if worker is not None and rec.state == "STARTED" and worker.running > 0:
                    worker.running -= 1
                rec.state = "RETRY"
        metrics.count_task_event(etype, self._task_label(rec), self._queue_label(rec))
        return rec

    def forget(self, rec: TaskRecord) -> None:
        """Drop a finished task's record (called after rules saw the terminal event)."""
        self.tasks.pop(rec.uuid, None)

    def _task_label(self, rec: TaskRecord) -> str:
        return self.task_label(rec.name) if rec.name else ""

    def _queue_label(self, rec: TaskRecord) -> str:
        return self.queue_label(rec.queue) if rec.queue else ""

    def _worker_event(self, etype: str, event: dict, ts: float) -> None:
        hostname = event.get("hostname")
        if not isinstance(hostname, str) or not hostname:
            return
        worker = self.worker(hostname)
        if worker is None:
            return
        worker.last_seen = self.last_event_at
        if etype == "worker-offline":
            worker.online = False
            return
        if not worker.online:
            worker.online = True
            worker.online_since = self.last_event_at
        freq = event.get("freq")
        if isinstance(freq, (int, float)) and freq > 0:
            worker.freq = float(freq)
        processed = event.get("processed")
        if isinstance(processed, int):
            worker.processed = processed
            if worker.first_processed is None:
                worker.first_processed = processed
        active = event.get("active")
        if isinstance(active, int):
            worker.active = active
        sw = event.get("sw_ident")
        if isinstance(sw, str):
            worker.sw_ident = sw

    # -- evaluation helpers --------------------------------------------------------------
    def worker_alive(self, worker: WorkerRecord, now: float) -> bool:
        """Celery's rule: a worker is alive while its last heartbeat is < 2 x freq old."""
        return worker.online and (now - worker.last_seen) <= max(worker.freq * 2.0, 4.0)

    def label_overflow(self) -> dict[str, int]:
        """Values folded into ``__other__`` or not tracked at all, per capped label."""
        return {
            "task": self.task_label.overflow,
            "queue": self.queue_label.overflow + self.queues_dropped,
            "worker": self.worker_label.overflow + self.workers_dropped,
        }


__all__ = ["OTHER", "QueueRecord", "RuntimeState", "TaskRecord", "WorkerRecord"]
