"""Bounded runtime state built from the event stream: in-flight tasks, workers and queues.

:meth:`RuntimeState.apply` is the hot path: one dict lookup, a handler bound once per
event type and a handful of attribute writes per event, no allocation beyond a new
task's record. This module imports no exposition: metrics listen to the engine. Memory
is bounded by the caps in :class:`~flower_practices.config.Settings` (in the README).

Lifecycle (what leaves the state, and when):

- A task record leaves on its terminal event, when the ``max_tracked_tasks`` LRU evicts
  it, or in :meth:`RuntimeState.sweep` (periodic, never per event) once it can no longer
  change: see the ``*_ttl`` attributes of :class:`RuntimeState`. A record a rule declared
  lost (:meth:`RuntimeState.mark_lost`) stays as ``LOST`` for ``orphan_ttl`` so a late
  completion or a redelivery still finds its name and queue.
- Each record remembers what it is counted as on its worker (reserved or running) and in
  which generation of that worker, so it leaves the worker's ``reserved_tasks`` /
  ``running_tasks`` index exactly once, and a worker's indexes restart empty when it goes
  offline or restarts (its running tasks then become its ``orphans``, for ``lost_task``).
  A run that ends with no outcome event -- Celery sends none for a task that raises
  ``Ignore``, which ``Task.replace`` does -- leaves ``running_tasks`` at its worker's
  first heartbeat with ``active=0`` (Celery's own count of the requests it runs) sent at
  least ``IDLE_MARGIN`` after the run started; it is then forgotten as ``IGNORED``. (A
  worker buffers its task events, not its heartbeats: a run's end can still come after
  that heartbeat; it is then handled as the run's late end, with the run's times and
  worker, and its duplicate end is still a duplicate.) A
  worker that is never idle keeps such runs counted as running until it restarts (then
  ``lost_task`` may take them for lost: a known limit, see its runbook).
  A sent task without an eta is in its queue's ``pending`` index until a worker takes it.
  These indexes are what evaluation reads: it never scans every tracked task.
  A reserved record is also counted per queue on its worker (``queue_reserved``), so the
  backlog prefetched by live workers is known per queue without a scan of the tasks
  (:meth:`RuntimeState.reserved_by_queue`).
- After a blind window of the event stream (:class:`~.events.status.Hearing`) a task
  counted reserved before it may have run unheard: each worker's reserved index and
  per-queue counts start over empty in a new ``reserved_epoch`` (:meth:`RuntimeState.settle`,
  O(workers) once per window), so what pages and what is exposed count only tasks heard
  received since; a record let go is counted again by its next event. Running records
  stay (a run from before the window is still ``lost_task``'s if a kill interrupts it);
  an idle heartbeat releases those that ended unheard, as above.
- A worker restart is a worker-online event, a heartbeat after worker-offline, or a
  heartbeat whose ``processed`` counter went down (a new process counts from zero) --
  unless that worker-online comes from the same process with tasks still running: a
  *reconnect*. Celery's consumer sends worker-offline and then worker-online
  around a lost broker connection (a Redis or RabbitMQ restart) while the pool runs on;
  the worker-online then reports ``active`` > 0, ``processed`` not reset and the same
  ``pid``, which a new process cannot (it has run nothing when it says it is online; a
  heartbeat after worker-offline, its worker-online missed, is still a restart).
  The runs it went offline with are taken back as running (:meth:`RuntimeState._reconnected`),
  so a broker restart is no ``lost_task``.
- At ``max_workers`` a dead worker among the least recently seen makes room for a new
  one; dead workers are forgotten after ``worker_ttl``. At ``max_queues`` an idle queue
  makes room; idle queues are forgotten after ``queue_ttl``. When every record is live
  the newcomer is dropped and counted, as before. A forgotten worker's label is released
  (only live gauges carry it); a forgotten queue's is kept, since cumulative counters
  still carry it, so the queue label cap keeps bounding their series.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from functools import partial
from itertools import islice
from typing import Any

from .bounded import OTHER, LabelCap, LRUDict, SampleRing
from .config import Settings
from .events.status import Hearing
from .events.types import (
    TASK_FAILED,
    TASK_RECEIVED,
    TASK_REJECTED,
    TASK_RETRIED,
    TASK_REVOKED,
    TASK_SENT,
    TASK_STARTED,
    TASK_SUCCEEDED,
    TERMINAL_EVENTS,
    WORKER_OFFLINE,
    WORKER_ONLINE,
)
from .routes import RouteTable

TERMINAL = TERMINAL_EVENTS
#: states of a task that waits for a worker to start it
WAITING = frozenset(("SENT", "RECEIVED", "RETRY", "PENDING"))
#: finished tasks whose name and queue are kept for late events (see ``finished``)
FINISHED_KEPT = 10_000

#: a task's state after its terminal event
_FINAL_STATE = {TASK_SUCCEEDED: "SUCCESS", TASK_FAILED: "FAILURE",
                TASK_REVOKED: "REVOKED", TASK_REJECTED: "REJECTED"}
_FINAL_STATES = frozenset(_FINAL_STATE.values())

#: what a task record is counted as on its worker
NOT_COUNTED, RESERVED, RUNNING = 0, 1, 2

#: the largest int that converts to a float exactly
_MAX_EXACT_INT = 2**53
#: heartbeat frequencies above this are not believed (Celery's default is 2 s)
_MAX_FREQ = 3600.0
#: a heartbeat saying ``active=0`` ends the runs its worker started at least this long
#: (seconds, the worker's own clock) before it: the slack covers a task accepted while
#: the heartbeat was being built
IDLE_MARGIN = 1.0


def finite_seconds(value: object) -> float | None:
    """``value`` as a finite, non-negative float; None for anything else (another type,
    a bool, NaN, infinity, a negative number or an int beyond float precision)."""
    if type(value) is float:
        return value if 0.0 <= value < math.inf else None
    if type(value) is int:
        return float(value) if 0 <= value <= _MAX_EXACT_INT else None
    return None


class TaskRecord:
    """What we remember about one in-flight task (no argument values)."""

    __slots__ = ("uuid", "name", "queue", "sent_at", "received_at", "started_at", "hostname",
                 "retries", "state", "has_sent", "updated_at", "counted", "counted_epoch",
                 "straggler", "eta", "pending", "wait", "counted_queue", "deferred",
                 "starts")

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
        #: timestamp of the record's last event (or of being declared lost)
        self.updated_at = 0.0
        #: NOT_COUNTED, RESERVED or RUNNING on worker ``hostname`` ...
        self.counted = NOT_COUNTED
        #: ... in that worker's generation (``WorkerRecord.epoch``; for a reserved record
        #: ``WorkerRecord.reserved_epoch``)
        self.counted_epoch = 0
        #: created by a late event of a task that had already finished (see ``finished``)
        self.straggler = False
        #: an ``eta``/``countdown`` was seen for it: it waits on purpose
        self.eta = False
        #: indexed in its queue's ``pending`` (sent, not yet taken by a worker)
        self.pending = False
        #: seconds its last start waited (since sent, else received); None: not measured
        self.wait: float | None = None
        #: the queue it is counted reserved in, on its worker (``WorkerRecord.queue_reserved``)
        self.counted_queue: QueueRecord | None = None
        #: [local time, event types...]: task events the exposition holds back until the
        #: task-sent they overtook names the queue (see ``BaseMetrics.listener``)
        self.deferred: list[Any] | None = None
        #: task-started events seen in this life (two: it ran twice, e.g. redelivered)
        self.starts = 0


#: what :meth:`RuntimeState.apply` returns for a finished task's final event seen again
#: (the engine drops it, counted as ``duplicate_final``)
DUPLICATE_FINAL = TaskRecord("")

#: events by which a worker shows it took a task from a queue
_TAKEN = frozenset((TASK_RECEIVED, TASK_STARTED))
#: a stretch without any event this long (seconds) is a gap in listening, kept in
#: ``RuntimeState.gaps`` (rules that need a longer silence pick theirs from it)
GAP_SECONDS = 30.0
#: gaps remembered
_MAX_GAPS = 64
#: queues remembered per worker in ``WorkerRecord.queues_seen``
_MAX_QUEUES_SEEN = 64


class WorkerRecord:
    """One worker as seen through its heartbeats, task events and probes."""

    __slots__ = ("hostname", "online", "last_seen", "freq", "processed", "active",
                 "first_processed", "task_events", "reserved_tasks", "running_tasks",
                 "orphans", "active_queues",
                 "sw_ident", "label", "online_since", "prefetch", "concurrency", "epoch",
                 "restarted_at", "offline_at", "created_at", "queues_seen", "queue_reserved",
                 "last_task_at", "heartbeats", "hearing", "reserved_epoch", "pid")

    def __init__(self, hostname: str, label: str, hearing: Hearing | None = None) -> None:
        self.hostname = hostname
        self.label = label
        #: the engine's blind windows (shared by every record): silence unheard is unknown
        self.hearing = hearing if hearing is not None else Hearing()
        self.online = False
        self.last_seen = 0.0
        self.freq = 2.0
        self.processed = 0
        self.first_processed: int | None = None
        self.active = 0
        self.task_events = 0
        #: uuid -> record counted as reserved / running on it in this generation (the
        #: per-worker indexes the rules read instead of scanning every tracked task)
        self.reserved_tasks: dict[str, TaskRecord] = {}
        self.running_tasks: dict[str, TaskRecord] = {}
        #: uuid -> record that was running on it when a generation ended (offline,
        #: restart) and has had no event since: what ``lost_task`` judges
        self.orphans: dict[str, TaskRecord] = {}
        self.active_queues: tuple[str, ...] | None = None
        self.sw_ident = ""
        self.online_since = 0.0
        self.prefetch: int | None = None
        self.concurrency: int | None = None
        #: generation: changes when the counts are reset (offline, restart)
        self.epoch = 0
        #: generation of the reserved index alone: also changes when the stream comes
        #: back from a blind window (:meth:`RuntimeState.settle`)
        self.reserved_epoch = 0
        #: process id of its worker events (None: none seen)
        self.pid: int | None = None
        #: worker's own timestamp of its last known restart (0: none seen)
        self.restarted_at = 0.0
        #: when its worker-offline arrived (0: not offline by event)
        self.offline_at = 0.0
        self.created_at = 0.0
        #: queue -> when it last received/started a task from it (consumer knowledge that
        #: needs no remote control: a busy solo pool cannot answer inspect); bounded
        self.queues_seen: dict[str, float] = {}
        #: queue -> tasks of it received here but not started (``reserved`` by queue)
        self.queue_reserved: dict[QueueRecord, int] = {}
        #: the worker's own timestamp of its last task event (0: none yet)
        self.last_task_at = 0.0
        #: a worker event (online, heartbeat, offline) was seen from it. A worker started
        #: ``--without-heartbeat`` sends none (Celery's Heart sends all three) but still
        #: sends task events: its liveness cannot be known, only that it worked lately
        self.heartbeats = False

    @property
    def reserved(self) -> int:
        """Tasks reserved (received, not started) on it in this generation."""
        return len(self.reserved_tasks)

    @property
    def running(self) -> int:
        """Tasks running on it in this generation."""
        return len(self.running_tasks)

    def alive(self, now: float) -> bool:
        """The one liveness rule (Celery's): online, and its last heartbeat or event is
        less than ``2 x freq`` (at least 4 s) old -- counting only the time the engine
        could hear it (:class:`~.events.status.Hearing`): while the stream is down a
        worker alive when it went down stays alive, and after it is back the worker has
        ``2 x freq`` to be heard again."""
        if not self.online:
            return False
        expiry = max(self.freq * 2.0, 4.0)
        return now - self.hearing.heard_from(self.last_seen, expiry) <= expiry


class QueueRecord:
    """One queue: traffic seen in events plus the latest probe results."""

    __slots__ = ("name", "label", "sent", "last_sent_at", "waits", "length", "lengths",
                 "consumers", "probed_at", "started", "last_active",
                 "pending", "waits_from_received")

    def __init__(self, name: str, label: str) -> None:
        self.name = name
        self.label = label
        self.sent = 0
        self.started = 0
        self.last_sent_at = 0.0
        #: (task-started timestamp, queue wait) of its last 512 starts, tasks with an
        #: eta left out (they wait on purpose): ``queue_starvation``'s samples
        self.waits = SampleRing(512)
        #: of those, waits measured from task-received (no task-sent seen)
        self.waits_from_received = 0
        self.length: int | None = None
        self.lengths: dict[str, int] = {}
        self.consumers: int | None = None
        self.probed_at = 0.0
        #: local time of its creation or its last task-sent/task-started
        self.last_active = 0.0
        #: uuid -> record sent to it, without an eta, not yet taken by a worker, in the
        #: order they became pending (oldest first): the backlog seen in events
        self.pending: dict[str, TaskRecord] = {}


class RuntimeState:
    """Everything the rules read, updated event by event."""

    #: seconds a waiting record (SENT/RECEIVED/RETRY) may go without an event before the
    #: sweep drops it: its task-started was missed (or it waits on an eta that long)
    waiting_ttl = 6 * 3600.0
    #: seconds a STARTED record on a live worker may go without an event before it is
    #: dropped: its completion was missed (a run that long was reported long before)
    running_ttl = 24 * 3600.0
    #: seconds a LOST record, or a STARTED/RECEIVED one whose worker is dead, unknown or
    #: restarted since, is kept for a late completion or a redelivery to find it
    orphan_ttl = 3600.0
    #: seconds a dead worker (offline, or heartbeats expired) is kept before it is forgotten
    worker_ttl = 3600.0
    #: seconds a queue without traffic, messages or consumers is kept before it is forgotten
    queue_ttl = 3600.0
    #: :meth:`sweep` starts a pass over every record at most this often
    sweep_interval = 30.0
    #: task records a :meth:`sweep` call examines at most (a pass spans several calls,
    #: so no evaluation holds the lock for a scan of every tracked task)
    sweep_batch = 2000
    #: at a cap, how many least recently seen records are examined for one to evict (O(1))
    evict_scan = 16

    def __init__(self, settings: Settings, hearing: Hearing | None = None) -> None:
        self.settings = settings
        #: the stream's blind windows (its :class:`~.events.status.StreamStatus` owns
        #: them; a state fed directly hears everything): what silence is judged against
        self.hearing = hearing if hearing is not None else Hearing()
        self.tasks: LRUDict[str, TaskRecord] = LRUDict(settings.max_tracked_tasks)
        #: name and queue of recently finished tasks. Events of one task can arrive out of
        #: order (a threads/prefork worker may report a retry's task-retried after the
        #: retried run already failed): a late event still counts under its task's name
        #: and queue, and its record is dropped again at once. Also its last state, worker
        #: and starts: the same final event again from the same worker after a single run
        #: (Celery 5.7 sends task-failed twice for a run stopped by its hard time limit)
        #: is a duplicate, not a second end (``DUPLICATE_FINAL``); two runs' ends are not.
        #: And when it was received and started: a run an idle heartbeat ended unreported
        #: (``IGNORED``) may still report its end, late (a worker buffers its task events,
        #: not its heartbeats); that late event is the run's and gets its times back.
        self.finished: LRUDict[str, tuple[str, str, str, str, int, float, float]] = \
            LRUDict(FINISHED_KEPT)
        #: least recently seen first (an event from a worker moves it to the end)
        self.workers: OrderedDict[str, WorkerRecord] = OrderedDict()
        #: least recently sent to first (a task-sent moves it to the end)
        self.queues: OrderedDict[str, QueueRecord] = OrderedDict()
        self.task_label = LabelCap("task", settings.max_task_names)
        self.queue_label = LabelCap("queue", settings.max_queues)
        self.worker_label = LabelCap("worker", settings.max_workers)
        self.task_names: set[str] = set()
        #: task names a task-sent was seen for (at most ``max_task_names``): their tasks'
        #: task-sent is expected even when a worker's event overtakes it
        self.sent_names: set[str] = set()
        self.sent_events = 0
        self.received_events = 0
        self.last_event_at = 0.0
        #: (local time listening resumed, seconds without events before it) of the last
        #: gaps of at least GAP_SECONDS, oldest first; the first event ever is a gap of inf
        self.gaps: deque[tuple[float, float]] = deque(maxlen=_MAX_GAPS)
        self._latest = 0.0
        self.workers_dropped = 0
        self.queues_dropped = 0
        self.default_queue = "celery"
        #: the bindings of the app's and the workers' queues: the queue of a task sent by
        #: exchange and routing key alone (its task-sent names none)
        self.routes = RouteTable()
        #: queues the sweep never forgets (besides the default queue), e.g. the app's own
        self.keep_queues: set[str] = set()
        #: task names with a ``rate_limit`` (the app's configuration): a worker keeps such a
        #: task reserved until its rate allows, so, as with an ETA, it waits on purpose
        self.rate_limited: frozenset[str] = frozenset()
        #: records dropped by :meth:`sweep`, workers and queues it forgot or evicted
        self.tasks_expired = 0
        #: runs ended with no outcome event (``Ignore``, ``Task.replace``), found by an
        #: idle heartbeat (see :meth:`_ended_unreported`)
        self.tasks_ended_unreported = 0
        #: worker-online events from the same process with tasks running: consumer
        #: reconnects, not restarts (see :meth:`_reconnected`)
        self.reconnects = 0
        #: running records a reconnect kept on their worker (not orphaned by it)
        self.reconnect_kept = 0
        #: reserved records let go when the stream came back from a blind window: they
        #: may have started unheard (see :meth:`settle`)
        self.reserved_unheard = 0
        self.workers_forgotten = 0
        self.queues_forgotten = 0
        self._epoch = 0
        #: ``hearing.returns`` as of the last :meth:`settle`
        self._returns = self.hearing.returns
        self._swept_at = -math.inf
        #: the task ids of the pass in progress (None: none) and the position in them
        self._sweep_keys: list[str] | None = None
        self._sweep_pos = 0
        #: task event type (other than task-sent) -> its handler, bound once
        self._on_task = {
            TASK_RECEIVED: self._received, TASK_STARTED: self._start,
            TASK_RETRIED: self._retried,
            **{t: partial(self._finished, final) for t, final in _FINAL_STATE.items()},
        }

    # -- lookups -------------------------------------------------------------------------
    def worker(self, hostname: str) -> WorkerRecord | None:
        """The record of ``hostname``, created if new; None when it cannot be tracked
        (not a non-empty string, or ``max_workers`` live workers already tracked)."""
        if not isinstance(hostname, str) or not hostname:
            return None
        workers = self.workers
        rec = workers.get(hostname)
        if rec is not None:
            workers.move_to_end(hostname)
            return rec
        if len(workers) >= self.settings.max_workers and not self._evict_worker():
            self.workers_dropped += 1
            return None
        rec = workers[hostname] = WorkerRecord(hostname, self.worker_label(hostname),
                                                self.hearing)
        rec.created_at = self.last_event_at or time.time()
        self._new_epoch(rec)
        return rec

    def queue(self, name: str) -> QueueRecord | None:
        """The record of queue ``name``, created if new; None when it cannot be tracked."""
        if not isinstance(name, str) or not name:
            return None
        queues = self.queues
        rec = queues.get(name)
        if rec is None:
            if len(queues) >= self.settings.max_queues and not self._evict_queue():
                self.queues_dropped += 1
                return None
            rec = queues[name] = QueueRecord(name, self.queue_label(name))
            rec.last_active = self.last_event_at or time.time()
        return rec

    def _task(self, uuid: str, etype: str, hostname: object) -> TaskRecord | None:
        """A new record for ``uuid`` (the caller found none); None when the event is the
        final event the finished task already had, from the same worker after one run (a
        duplicate: nothing to record)."""
        done = self.finished.pop(uuid, None)
        if done is not None and done[2] == _FINAL_STATE.get(etype) \
                and done[3] == hostname and done[4] <= 1:
            self.finished.put(uuid, done)
            return None
        rec = TaskRecord(uuid)
        if done is not None:
            rec.name, rec.queue = done[0], done[1]
            # a new message (a redelivery) starts a new life; anything else is late
            rec.straggler = etype != TASK_SENT and etype != TASK_RECEIVED
            if rec.straggler:  # the run's end stays on record (see forget)
                self.finished.put(uuid, done)
                if done[2] == "IGNORED":  # this may be the end it was thought not to send
                    rec.received_at, rec.started_at = done[5], done[6]
        evicted = self.tasks.put(uuid, rec)
        if evicted is not None:
            self._release(evicted)
        return rec

    def _name(self, rec: TaskRecord, name: object) -> None:
        if name and not rec.name and isinstance(name, str):
            rec.name = name
            if name not in self.task_names and len(self.task_names) < self.settings.max_task_names:
                self.task_names.add(name)

    # -- worker counts -------------------------------------------------------------------
    def _new_epoch(self, worker: WorkerRecord) -> None:
        """Start a new generation of ``worker``: its counts restart from zero, and records
        counted in an older generation no longer decrement them."""
        self._epoch += 1
        worker.epoch = worker.reserved_epoch = self._epoch
        if worker.running_tasks:
            worker.orphans.update(worker.running_tasks)
            worker.running_tasks = {}
        worker.reserved_tasks = {}
        worker.queue_reserved.clear()

    def settle(self) -> None:
        """Bring the reserved indexes up to the stream's blind windows (cheap when there
        was none since the last call: one comparison).

        After a return, a task counted reserved on a worker before the window may have
        started -- and ended -- while nothing was heard, or may still wait: the two cannot
        be told apart. Such a record is not believed reserved any more: each worker's
        reserved index and per-queue counts start over empty in a new generation
        (``reserved_epoch``, O(workers), once per window; the records themselves are not
        visited), so ``prefetch_starvation``, ``celery_queue_reserved_tasks`` and
        ``celery_worker_tasks_reserved`` count only tasks heard received since the
        return. A record let go this way is counted again by its next event (a
        task-started counts it running; it never leaves a count twice). Called before a
        task is counted reserved, and by the engine before the rules' evaluation and the
        exposition read the counts."""
        returns = self.hearing.returns
        if returns == self._returns:
            return
        self._returns = returns
        for worker in self.workers.values():
            if worker.reserved_tasks or worker.queue_reserved:
                self.reserved_unheard += len(worker.reserved_tasks)
                self._epoch += 1
                worker.reserved_epoch = self._epoch
                worker.reserved_tasks = {}
                worker.queue_reserved = {}

    def _count(self, rec: TaskRecord, worker: WorkerRecord, kind: int) -> None:
        rec.counted = kind
        if kind == RUNNING:
            rec.counted_epoch = worker.epoch
            worker.running_tasks[rec.uuid] = rec
        else:
            if self.hearing.returns != self._returns:  # back from a blind window
                self.settle()
            rec.counted_epoch = worker.reserved_epoch
            worker.reserved_tasks[rec.uuid] = rec
            if rec.queue:
                self._count_queue(rec, worker, self.queue(rec.queue))

    @staticmethod
    def _count_queue(rec: TaskRecord, worker: WorkerRecord, q: QueueRecord | None) -> None:
        """Count reserved ``rec`` in its queue ``q`` on ``worker`` (none: not counted)."""
        if q is not None:
            rec.counted_queue = q
            per_queue = worker.queue_reserved
            per_queue[q] = per_queue.get(q, 0) + 1

    def _release(self, rec: TaskRecord) -> None:
        """Undo what ``rec`` is counted as on its worker and in its queue (exactly once):
        every index that holds it lets go of it."""
        if rec.pending:
            self._unpend(rec)
        kind = rec.counted
        if not kind:
            return
        rec.counted = NOT_COUNTED
        q, rec.counted_queue = rec.counted_queue, None
        worker = self.workers.get(rec.hostname)
        if worker is None:
            return
        if kind == RUNNING:
            if worker.epoch != rec.counted_epoch:
                worker.orphans.pop(rec.uuid, None)
            else:
                worker.running_tasks.pop(rec.uuid, None)
            return
        if worker.reserved_epoch != rec.counted_epoch:
            return  # its counts went with that generation (a restart, a blind window)
        worker.reserved_tasks.pop(rec.uuid, None)
        if q is not None:
            per_queue = worker.queue_reserved
            n = per_queue.get(q, 0) - 1
            if n > 0:
                per_queue[q] = n
            else:
                per_queue.pop(q, None)

    def _unpend(self, rec: TaskRecord) -> None:
        rec.pending = False
        q = self.queues.get(rec.queue)
        if q is not None:
            q.pending.pop(rec.uuid, None)

    # -- hot path ------------------------------------------------------------------------
    def apply(self, etype: str, event: dict) -> TaskRecord | None:
        """Update state for one validated event; return the task record for task events."""
        get = event.get
        ts = get("timestamp") or 0.0
        received = get("local_received")
        now = received if type(received) is float and 0.0 < received < math.inf else ts
        if now > self._latest:  # the latest arrival so far (times may go back a little)
            if now - self._latest >= GAP_SECONDS:
                self._gap(now)
            self._latest = now
        self.last_event_at = now
        if etype[0] == "w":  # worker-*
            self._worker_event(etype, event, ts)
            return None
        uuid = event["uuid"]
        rec = self.tasks.get(uuid)
        if rec is None:
            rec = self._task(uuid, etype, event.get("hostname"))
            if rec is None:
                return DUPLICATE_FINAL
        rec.updated_at = ts
        if etype == TASK_SENT:
            self._sent(rec, event, ts)
            return rec
        hostname = get("hostname")
        if not hostname or not isinstance(hostname, str):  # wrong types counted already
            self._on_task[etype](rec, event, ts, "", None)
            return rec
        # the worker of a task event (its record, created if new), which it keeps alive
        # and which learns the queue it takes tasks from
        workers = self.workers
        worker = workers.get(hostname)
        if worker is not None:
            workers.move_to_end(hostname)
        else:
            worker = self.worker(hostname)
        if worker is not None:
            worker.task_events += 1
            worker.last_seen = now
            worker.last_task_at = ts
            queue = rec.queue
            if not queue and worker.active_queues and len(worker.active_queues) == 1:
                queue = rec.queue = worker.active_queues[0]
            if queue and etype in _TAKEN:
                seen = worker.queues_seen
                if queue in seen or len(seen) < _MAX_QUEUES_SEEN:
                    seen[queue] = now
        self._on_task[etype](rec, event, ts, hostname, worker)
        return rec

    def _gap(self, now: float) -> None:
        """Listening resumes at ``now`` after a silence (or starts: the first event)."""
        last = self._latest
        self.gaps.append((now, now - last if last else math.inf))

    def listening_since(self, silence: float) -> float | None:
        """Local time of the first event after the last silence longer than ``silence``
        seconds (at least GAP_SECONDS), or of the first event; None before any event."""
        for at, length in reversed(self.gaps):
            if length > silence:
                return at
        return self.gaps[0][0] if self.gaps else None

    # per task event type (bound once in __init__: ``_on_task``), after task-sent
    def _received(self, rec: TaskRecord, event: dict, ts: float, hostname: str,
                  worker: WorkerRecord | None) -> None:
        self._name(rec, event.get("name"))
        if event.get("eta"):
            rec.eta = True
        rec.received_at = ts
        retries = event.get("retries")
        if type(retries) is int:
            rec.retries = retries
        self.received_events += 1
        # after its own task-started (reordered): nothing to move back
        if rec.state != "STARTED" or rec.hostname != hostname:
            if rec.pending or rec.counted:  # else nothing holds it
                self._release(rec)
            rec.hostname = hostname
            rec.state = "RECEIVED"
            if worker is not None:
                self._count(rec, worker, RESERVED)

    def _start(self, rec: TaskRecord, event: dict, ts: float, hostname: str,
               worker: WorkerRecord | None) -> None:
        self._started(rec, ts)
        if rec.pending or rec.counted:  # else nothing holds it
            self._release(rec)
        rec.starts += 1
        rec.started_at = ts
        rec.hostname = hostname
        rec.state = "STARTED"
        if worker is not None:
            self._count(rec, worker, RUNNING)

    def _finished(self, final: str, rec: TaskRecord, event: dict, ts: float, hostname: str,
                  worker: WorkerRecord | None) -> None:
        if rec.pending or rec.counted:  # else nothing holds it
            self._release(rec)
        if not rec.hostname:  # its first event (a late end): the worker that reports it
            rec.hostname = hostname
        rec.state = final

    def _retried(self, rec: TaskRecord, event: dict, ts: float, hostname: str,
                 worker: WorkerRecord | None) -> None:
        if rec.pending or rec.counted:  # else nothing holds it
            self._release(rec)
        rec.state = "RETRY"

    def _sent(self, rec: TaskRecord, event: dict, ts: float) -> None:
        self._name(rec, event.get("name"))
        name = rec.name
        if name and name not in self.sent_names \
                and len(self.sent_names) < self.settings.max_task_names:
            self.sent_names.add(name)
        if event.get("eta"):
            rec.eta = True
        if rec.pending:
            self._unpend(rec)
        q = None
        queue = event.get("queue")
        if self.routes:
            # the queue the broker puts it in: a task sent by exchange and routing key
            # names no queue, or the default queue, which it does not go to
            exchange = event.get("exchange")
            if exchange and type(exchange) is str:
                key = event.get("routing_key")
                if type(key) is str:
                    queue = self.routes.queue_for(exchange, key) or queue
        if not isinstance(queue, str) or not queue:
            queue = event.get("routing_key")
        if isinstance(queue, str) and queue:
            rec.queue = queue
            q = self.queue(queue)
            if q is not None:
                q.sent += 1
                q.last_sent_at = ts
                q.last_active = self.last_event_at
                self.queues.move_to_end(queue)
                if rec.counted == RESERVED and rec.counted_queue is None:
                    # its task-received came first, when its queue was not known yet
                    worker = self.workers.get(rec.hostname)
                    if worker is not None and worker.reserved_epoch == rec.counted_epoch:
                        self._count_queue(rec, worker, q)
        elif rec.queue:
            q = self.queues.get(rec.queue)
        rec.sent_at = ts
        rec.has_sent = True
        retries = event.get("retries")
        if type(retries) is int:
            rec.retries = retries
        # a retry's task-sent comes before its task-retried, and a task-sent may arrive
        # after task-received: never move a record that got further back to SENT
        if rec.state == "PENDING" or rec.state == "RETRY":
            rec.state = "SENT"
        if rec.state == "SENT" and q is not None and not rec.eta:
            q.pending[rec.uuid] = rec
            rec.pending = True
        self.sent_events += 1

    def _started(self, rec: TaskRecord, ts: float) -> None:
        """Record the queue wait of a task that starts now (before its state changes)."""
        rec.wait = None
        base = rec.sent_at or rec.received_at
        if not base or rec.state not in WAITING:
            return
        wait = ts - base
        if not wait > 0.0:
            wait = 0.0
        rec.wait = wait
        q = self.queues.get(rec.queue) if rec.queue else None
        if q is not None:
            if not rec.eta and rec.name not in self.rate_limited:  # waits on purpose
                q.waits.add(ts, wait)
                if not rec.sent_at:
                    q.waits_from_received += 1
            q.started += 1
            q.last_active = self.last_event_at

    def forget(self, rec: TaskRecord) -> None:
        """Drop a finished task's record (called after rules saw the terminal event)."""
        if rec.pending or rec.counted:  # else nothing holds it
            self._release(rec)
        self.tasks.pop(rec.uuid, None)
        done = self.finished.get(rec.uuid) if rec.straggler else None
        if done is not None and rec.state not in _FINAL_STATES:
            # a late event of an ended run that is no end itself (a task-started that
            # arrived behind the run's task-failed): the run's end stays the one on record,
            # with this start added, so that its duplicate end is still known as one
            self.finished.put(rec.uuid, (*done[:4], done[4] + rec.starts, *done[5:]))
        else:
            self.finished.put(rec.uuid, (rec.name, rec.queue, rec.state, rec.hostname,
                                         rec.starts, rec.received_at, rec.started_at))

    def mark_lost(self, rec: TaskRecord, now: float) -> None:
        """A rule declared ``rec`` lost: it no longer counts as running anywhere and is not
        judged again. It stays, as ``LOST``, for ``orphan_ttl`` so that a late completion
        or a redelivery still finds its name and queue (both are handled as usual)."""
        if rec.pending or rec.counted:  # else nothing holds it
            self._release(rec)
        rec.state = "LOST"
        rec.updated_at = now

    def _worker_event(self, etype: str, event: dict, ts: float) -> None:
        hostname = event.get("hostname")
        worker = self.worker(hostname) if isinstance(hostname, str) else None
        if worker is None:
            return
        now = worker.last_seen = self.last_event_at
        worker.heartbeats = True
        if etype == WORKER_OFFLINE:
            worker.online = False
            worker.offline_at = now
            self._new_epoch(worker)
            return
        restarted = etype == WORKER_ONLINE or worker.offline_at > 0.0
        processed = event.get("processed")
        active = event.get("active")
        pid = event.get("pid")
        if type(pid) is not int:
            pid = None
        if etype == WORKER_ONLINE and type(active) is int and active > 0 \
                and type(processed) is int and processed >= worker.processed \
                and pid is not None and pid == worker.pid:
            # the same process, tasks running: its consumer reconnected, nothing restarted
            # (a new process has run nothing when it says it is online; a heartbeat after
            # worker-offline, the worker-online missed, is not believed: it may be one)
            self._reconnected(worker)
            restarted = False
        if type(processed) is int:
            if processed < worker.processed:
                restarted = True  # a new process counts from zero
            worker.processed = processed
            if worker.first_processed is None:
                worker.first_processed = processed
        if pid is not None:
            worker.pid = pid
        if restarted:
            worker.restarted_at = ts
            worker.offline_at = 0.0
            self._new_epoch(worker)
        if not worker.online:
            worker.online = True
            worker.online_since = now
        freq = finite_seconds(event.get("freq"))
        if freq and freq <= _MAX_FREQ:
            worker.freq = freq
        if type(active) is int:
            worker.active = active
            if active == 0 and worker.running_tasks:
                self._ended_unreported(worker, ts - IDLE_MARGIN)
        sw = event.get("sw_ident")
        if isinstance(sw, str):
            worker.sw_ident = sw

    def _reconnected(self, worker: WorkerRecord) -> None:
        """``worker``'s process came back after its worker-offline with tasks still running
        (a consumer reconnect, see the module docstring): not a restart. The runs it went
        offline with (its orphans, still STARTED) are running again in its current
        generation; the reserved tasks stay let go (a reconnecting consumer drops its
        prefetched messages, which the broker delivers again). O(orphans)."""
        worker.offline_at = 0.0
        orphans = worker.orphans
        running = worker.running_tasks
        for uuid, rec in list(orphans.items()):
            # (not a run orphaned by an earlier, real restart: that one stays lost_task's)
            if rec.state == "STARTED" and rec.counted == RUNNING \
                    and rec.hostname == worker.hostname \
                    and rec.started_at >= worker.restarted_at:
                del orphans[uuid]
                rec.counted_epoch = worker.epoch
                running[uuid] = rec
                self.reconnect_kept += 1
        self.reconnects += 1

    def _ended_unreported(self, worker: WorkerRecord, before: float) -> None:
        """``worker``'s heartbeat says it runs nothing: the runs it started at or before
        ``before`` are over although no outcome event came. That is Celery's way with a
        task that raises ``Ignore`` (``Task.replace`` does): the message is acknowledged,
        no task-succeeded/failed is sent. Such a run is no longer running (no
        ``missing_time_limit``) and is not lost when the worker goes (no ``lost_task``).
        Each record is released once (amortised O(1) per event)."""
        ended = [rec for rec in worker.running_tasks.values() if rec.started_at <= before]
        for rec in ended:
            rec.state = "IGNORED"
            self.forget(rec)
        self.tasks_ended_unreported += len(ended)

    # -- periodic ------------------------------------------------------------------------
    def sweep(self, now: float) -> int:
        """Drop what can no longer change (see the ``*_ttl`` attributes).

        Periodic, under the engine's lock, after the rules' evaluation (so ``lost_task``
        judges a record before it can age out). A pass starts at most once per
        ``sweep_interval`` (workers and queues, bounded by their caps, at once) and goes
        through the task records ``sweep_batch`` per call. Returns the number of task
        records, workers and queues dropped.
        """
        dropped = 0
        if self._sweep_keys is None:
            if self._swept_at <= now < self._swept_at + self.sweep_interval:
                return 0
            self._swept_at = now
            # the plain dict's keys: ~10x faster to copy than the OrderedDict's linked
            # list (order does not matter here)
            self._sweep_keys, self._sweep_pos = list(dict.keys(self.tasks)), 0
            dropped = self._sweep_workers(now) + self._sweep_queues(now)
        return dropped + self._sweep_tasks(now)

    def _orphaned(self, rec: TaskRecord, since: float, now: float) -> bool:
        """True when ``rec``'s worker is unknown, dead or restarted after ``since``."""
        worker = self.workers.get(rec.hostname)
        return worker is None or worker.restarted_at > since \
            or not worker.alive(now)

    def _sweep_tasks(self, now: float) -> int:
        """The next ``sweep_batch`` records of the pass in progress."""
        keys, start = self._sweep_keys or [], self._sweep_pos
        end = start + self.sweep_batch
        if end >= len(keys):
            self._sweep_keys = None
        else:
            self._sweep_pos = end
        drop: list[TaskRecord] = []
        soonest = min(self.orphan_ttl, self.waiting_ttl, self.running_ttl)
        tasks = self.tasks
        for uuid in keys[start:end]:
            rec = tasks.get(uuid)
            if rec is None:
                continue
            idle = now - rec.updated_at
            if idle <= soonest:
                continue
            state = rec.state
            if state == "STARTED":
                ttl = self.orphan_ttl if self._orphaned(rec, rec.started_at, now) \
                    else self.running_ttl
            elif state == "RECEIVED":
                ttl = self.orphan_ttl if self._orphaned(rec, rec.received_at, now) \
                    else self.waiting_ttl
            elif state in WAITING:
                ttl = self.waiting_ttl
            else:  # LOST, or a terminal state a rule did not forget
                ttl = self.orphan_ttl
            if idle > ttl:
                drop.append(rec)
        for rec in drop:
            self.forget(rec)
        self.tasks_expired += len(drop)
        return len(drop)

    def _sweep_workers(self, now: float) -> int:
        ttl = self.worker_ttl
        gone = [host for host, w in self.workers.items()
                if now - max(w.last_seen, w.created_at) > ttl and not w.alive(now)]
        for host in gone:
            self._forget_worker(host)
        return len(gone)

    def _sweep_queues(self, now: float) -> int:
        consumed = {q for w in self.workers.values() if w.alive(now)
                    for q in w.active_queues or ()}
        idle = [name for name, q in self.queues.items()
                if name not in consumed and self._queue_idle(q, now)]
        for name in idle:
            del self.queues[name]
        self.queues_forgotten += len(idle)
        return len(idle)

    def _queue_idle(self, q: QueueRecord, now: float) -> bool:
        return (now - q.last_active > self.queue_ttl and not q.length and not q.consumers
                and q.name != self.default_queue and q.name not in self.keep_queues)

    def _forget_worker(self, host: str) -> None:
        worker = self.workers.pop(host)
        if worker.label != OTHER:
            self.worker_label.release(worker.label)
        self.workers_forgotten += 1

    def _evict_worker(self) -> bool:
        """At the cap: forget a dead worker among the least recently seen, if any."""
        now = self.last_event_at
        for n, (host, worker) in enumerate(self.workers.items()):
            if n >= self.evict_scan:
                return False
            if not worker.alive(now):
                self._forget_worker(host)
                return True
        return False

    def _evict_queue(self) -> bool:
        """At the cap: forget an idle queue among the least recently sent to, if any."""
        now = self.last_event_at
        for n, (name, queue) in enumerate(self.queues.items()):
            if n >= self.evict_scan:
                return False
            if self._queue_idle(queue, now):
                del self.queues[name]
                self.queues_forgotten += 1
                return True
        return False

    # -- probes (written through the engine's probe API) ---------------------------------
    def probed_worker(self, hostname: str, queues: tuple[str, ...], prefetch: int | None,
                      concurrency: int | None) -> None:
        """What a worker answered to remote control (``inspect``)."""
        worker = self.worker(hostname)
        if worker is None:
            return
        worker.active_queues = queues
        worker.prefetch = prefetch
        worker.concurrency = concurrency
        for q in queues:
            self.queue(q)

    def probed_queue(self, name: str, lengths: dict[str, int], total: int | None,
                     consumers: int | None, now: float) -> None:
        """A queue's length per priority (and its consumers) as the broker reported them."""
        queue = self.queue(name)
        if queue is None:
            return
        queue.lengths = lengths
        queue.length = total
        queue.probed_at = now
        queue.consumers = consumers

    def consumers_by_queue(self, now: float) -> dict[str, int]:
        """Queue -> live workers whose last known active_queues include it."""
        consuming: dict[str, int] = {}
        for worker in self.workers.values():
            if worker.active_queues is not None and worker.alive(now):
                for q in worker.active_queues:
                    consuming[q] = consuming.get(q, 0) + 1
        return consuming

    def known_queue_names(self) -> list[str]:
        """Queues known from events and from workers' active_queues."""
        names = dict.fromkeys(self.queues)
        for worker in self.workers.values():
            names.update(dict.fromkeys(worker.active_queues or ()))
        return list(names)

    # -- evaluation helpers --------------------------------------------------------------
    def worker_alive(self, worker: WorkerRecord, now: float) -> bool:
        """Same as :meth:`WorkerRecord.alive` (kept for callers outside the core)."""
        return worker.alive(now)

    def queue_gauges(self) -> tuple[dict[tuple[str, str], float], dict[str, float]]:
        """(queue label, priority) -> messages waiting, and queue label -> consumers, as
        last probed. Records past a label cap share ``__other__``: summed, so every label
        set is exported once (a duplicate series is invalid exposition)."""
        lengths: dict[tuple[str, str], float] = {}
        consumers: dict[str, float] = {}
        for q in self.queues.values():
            for priority, n in (q.lengths or {}).items():
                key = (q.label, priority)
                lengths[key] = lengths.get(key, 0) + n
            if q.consumers is not None:
                consumers[q.label] = consumers.get(q.label, 0) + q.consumers
        return lengths, consumers

    def reserved_gauges(self, now: float) -> dict[str, float]:
        """Queue label -> tasks received by live workers but not started, for every known
        queue (0 when none; records sharing a capped label summed)."""
        out: dict[str, float] = dict.fromkeys((q.label for q in self.queues.values()), 0)
        for q, n in self.reserved_by_queue(now).items():
            out[q.label] = out.get(q.label, 0) + n
        return out

    def worker_gauges(self, now: float) -> tuple[dict[str, float], dict[str, list[int]]]:
        """Worker label -> up (1/0), and -> [reserved, running] of the live ones. A worker
        that said goodbye (worker-offline: a warm shutdown, a scale-down) is not a worker
        down: it has no series; neither has one that never sent a worker event
        (``--without-heartbeat``: known from its task events only, up or down unknown)."""
        ups: dict[str, float] = {}
        busy: dict[str, list[int]] = {}
        for w in self.workers.values():
            alive = w.alive(now)
            if not alive and (w.offline_at or not w.heartbeats):
                continue
            ups[w.label] = max(ups.get(w.label, 0.0), 1.0 if alive else 0.0)
            if alive:
                counts = busy.setdefault(w.label, [0, 0])
                counts[0] += w.reserved
                counts[1] += w.running
        return ups, busy

    def reserved_by_queue(self, now: float) -> dict[QueueRecord, int]:
        """Tasks received by live workers but not started yet, per queue (periodic: one
        pass over the workers' per-queue counters, never over the tasks)."""
        out: dict[QueueRecord, int] = {}
        for worker in self.workers.values():
            if worker.queue_reserved and self.worker_alive(worker, now):
                for q, n in worker.queue_reserved.items():
                    out[q] = out.get(q, 0) + n
        return out

    def oldest_pending_ages(self, now: float) -> dict[str, float]:
        """Queue label -> seconds since the task-sent of the oldest task waiting in it
        (its ``pending`` index: sent without an eta, not yet received by a worker), 0 when
        it has none, for every known queue; records sharing a capped label take the max.

        O(queues): ``pending`` is in the order tasks became pending, so its first record
        is the oldest (by arrival of task-sent; its age is read from the producer's
        timestamp, clamped at 0 against clock skew). Never a scan of the tasks.
        """
        out: dict[str, float] = {}
        for q in self.queues.values():
            age = 0.0
            heads = self.waiting_heads(q, 1)
            if heads:
                sent_at = heads[0].sent_at
                if sent_at and now > sent_at:
                    age = now - sent_at
            label = q.label
            if age > out.get(label, -1.0):
                out[label] = age
        return out

    def waiting_heads(self, q: QueueRecord, n: int) -> list[TaskRecord]:
        """The ``n`` oldest tasks waiting in ``q`` (its ``pending`` index). After a blind
        window, a task sent before it may have been taken while the stream was down
        (:meth:`Hearing.unsure <.events.status.Hearing.unsure>`): such heads are dropped
        from the index as they are met, each once, at most ``evict_scan * 64`` per call
        (none is returned while more remain). While the stream is down the index stays
        as it was."""
        pending = q.pending
        if not pending:
            return []
        hearing = self.hearing
        if hearing.unsure_before and not hearing.deaf:
            unsure_before = hearing.unsure_before
            for rec in list(islice(pending.values(), self.evict_scan * 64)):
                if rec.sent_at >= unsure_before:
                    break
                self._unpend(rec)
            else:
                if pending and next(iter(pending.values())).sent_at < unsure_before:
                    return []  # more to drop next time
        return list(islice(pending.values(), n))

    def corrections(self) -> dict[str, int]:
        """Tasks whose state was corrected without an event saying so, by kind (counters
        since start; ``flower_practices_state_corrections_total``)."""
        return {
            "reserved_unheard": self.reserved_unheard,
            "reconnect_kept": self.reconnect_kept,
            "ended_unreported": self.tasks_ended_unreported,
            "expired": self.tasks_expired,
        }

    def label_overflow(self) -> dict[str, int]:
        """Values folded into ``__other__`` or not tracked at all, per capped label."""
        return {
            "task": self.task_label.overflow,
            "queue": self.queue_label.overflow + self.queues_dropped,
            "worker": self.worker_label.overflow + self.workers_dropped,
        }


__all__ = ["OTHER", "QueueRecord", "RuntimeState", "TaskRecord", "WorkerRecord",
           "finite_seconds"]
