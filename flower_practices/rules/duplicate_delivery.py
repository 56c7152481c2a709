"""duplicate_delivery: the same task message delivered (received or started) again.

A task id received again with the same ``retries`` number is the same message delivered
twice: a retry publishes a new message with ``retries + 1`` (and emits task-retried), so
counting deliveries per (task id, retries) tells retries apart even when the retry's
task-received overtakes its task-retried (they come from two workers). Causes: on Redis
(and SQS) a message reserved unacknowledged for longer than the transport's
``visibility_timeout`` (default 3600 s) goes back to the queue -- an ETA/countdown, or
an ``acks_late`` task running, longer than that; on RabbitMQ the ``consumer_timeout``
(30 min by default) closes the channel of a consumer that holds an unacknowledged
message that long, and the broker redelivers it.

Hooks (O(1) per event): a bounded table of recent deliveries per task id
(``max_tracked_tasks`` entries: retries number, deliveries received and started, the
first worker and its generation). A task-sent for an id already known (a manual resend
with the same id) starts a new life, and so does a task-rejected with ``requeue=True``:
the worker handed the message back on purpose (``raise Reject(requeue=True)`` in an
``acks_late`` task, or ``task_reject_on_worker_lost`` after a killed pool process --
``worker_process_killed``'s case), so the broker's next delivery of it is expected --
also when that delivery's events come before the task-rejected (ids requeued are kept,
bounded, and excuse a candidate within ``grace_seconds``). A
delivery beyond the first is a *candidate*, judged in :meth:`evaluate` ``grace_seconds``
later: it is **not** a duplicate when the worker that got the first delivery had expired
heartbeats at the redelivery, or went
offline or restarted (its generation changed) before the redelivery plus the grace -- a
redelivery after a worker was lost or shut down warm (its unacknowledged messages are
restored) is expected, and ``lost_task`` reports the lost run. The grace lets that
worker's worker-offline arrive after the redelivery it caused; a worker stopped later
does not hide a duplicate that already happened.

Unless the task then *finishes twice*: a second task-succeeded/failed for the same
message (same id and ``retries``) means the first run was not lost -- it went on and
the task ran twice -- so an excused redelivery is counted after all, when that second
completion arrives. That is RabbitMQ's case when a worker's connection drops while it
runs an ``acks_late`` task: the broker requeues the unacknowledged message at once and
another worker (or the same one, reconnected) runs it again; the worker itself stays
up, but Celery restarts its consumer, which sends worker-offline and worker-online, so
the redelivery alone looks like a worker that went away.

A task-started is the run of the message last received for its id -- except that a
worker may send a run's task-started *after* the retry that run published was received
(seen with the threads pool: the body runs before the start event goes out). Such a
start is not counted for the retry's message: when that message has an eta the start
comes before (a worker holds an ETA message until its eta), and in any case the run's
task-retried follows while no newer message was seen, which takes the start back.

Each duplicate delivery is counted once. The finding (per queue and task) stays
``window_seconds`` after the last one; its evidence gives the seconds between the first
and the repeated delivery, the ETA/countdown delay and the runtime of the first delivery
when known, and (with ``-A``) the transport's ``visibility_timeout`` next to them. The
duplicates in the window are the rule's memory across restarts.
"""

from __future__ import annotations

import ast
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..bounded import LRUDict
from ..brokers import is_amqp_broker, scheme
from ..events.types import (
    TASK_FAILED,
    TASK_RECEIVED,
    TASK_REJECTED,
    TASK_RETRIED,
    TASK_SENT,
    TASK_STARTED,
    TASK_SUCCEEDED,
)
from ..findings import Condition
from .base import Rule

if TYPE_CHECKING:
    from ..appinfo import AppInfo

#: Redis' (kombu's) default visibility timeout, seconds
REDIS_DEFAULT_VISIBILITY_TIMEOUT = 3600.0
#: kombu's SQS default visibility timeout, seconds
SQS_DEFAULT_VISIBILITY_TIMEOUT = 1800.0
#: at most this many task ids in a finding's evidence (the most recent)
MAX_TASK_IDS = 10
#: candidates waiting for their judgement at most (a flood keeps the newest)
MAX_CANDIDATES = 10_000
#: the longest ``eta`` string parsed
_MAX_ETA_LENGTH = 64
#: seconds: a task-started this much before a message's eta is not its run (a worker
#: holds an ETA message until its eta on its own clock; its timer may fire a little early)
_BEFORE_ETA = 0.5

# a delivery entry: [retries, received, started, first worker, its epoch, first received
# (local time), first started (local time), eta string, completions (succeeded/failed)]
_RETRIES, _RECEIVED, _STARTED, _HOST, _EPOCH, _AT, _STARTED_AT, _ETA, _DONE = range(9)


def _s(value: Any) -> str:
    return "" if value is None else str(value)


def _eta_timestamp(eta: str) -> float | None:
    """Unix time of an aware ISO-8601 eta (None: unusable)."""
    if len(eta) > _MAX_ETA_LENGTH:
        return None
    try:
        when = datetime.fromisoformat(eta)
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


def _eta_delay(eta: Any, received_ts: float) -> float | None:
    """Seconds from the first delivery to the task's ETA (None: no usable ETA)."""
    if not isinstance(eta, str) or not eta or len(eta) > _MAX_ETA_LENGTH:
        return None
    try:
        when = datetime.fromisoformat(eta)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    delay = when.timestamp() - received_ts
    return round(delay, 1) if delay > 0 else None


class DuplicateDelivery(Rule):
    id = "duplicate_delivery"

    @dataclass(frozen=True, slots=True)
    class Options:
        """Typed options (the documented defaults; each may be overridden in
        ``[practices.duplicate_delivery]``)."""

        #: a repeated delivery is judged this long after it arrived, so that the first
        #: worker's worker-offline (a warm shutdown restores its messages) can arrive
        grace_seconds: float = 10.0
        #: a finding stays active this long after the last duplicate delivery
        window_seconds: float = 3600.0

    #: this rule's options, typed (set by :class:`Rule`)
    opts: Options

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        #: uuid -> delivery entry (see the ``_RETRIES``... indexes) in insertion order,
        #: the oldest entry dropped past ``max_tracked_tasks``. An OrderedDict: dropping
        #: a plain dict's first key (``next(iter(d))``) skips every slot freed before it,
        #: O(size) per drop once the table is full (21 µs per task at 100,000 entries)
        self.deliveries: OrderedDict[str, list[Any]] = OrderedDict()
        self._limit = max(1, ctx.settings.max_tracked_tasks)
        self._state = ctx.state
        #: repeated deliveries to judge: (local time, uuid, entry snapshot, worker,
        #: queue, task, first worker already gone then)
        self.candidates: deque[tuple[Any, ...]] = deque(maxlen=MAX_CANDIDATES)
        #: "<uuid>/<delivery number>" -> (detected_at, queue, task, first worker, worker,
        #: gap, eta delay, runtime, uuid)
        self.found: LRUDict[str, tuple[Any, ...]] = LRUDict(10_000)
        #: uuid -> the found entry of a repeated delivery excused because its first worker
        #: looked gone; counted after all if the task then finishes twice
        self.excused: LRUDict[str, tuple[str, tuple[Any, ...]]] = LRUDict(MAX_CANDIDATES)
        #: uuid -> when a task-rejected with requeue=True handed its message back
        self.requeued: LRUDict[str, float] = LRUDict(MAX_CANDIDATES)

    def hooks(self):
        return {TASK_SENT: self._on_sent, TASK_RECEIVED: self._on_received,
                TASK_STARTED: self._on_started, TASK_SUCCEEDED: self._on_done,
                TASK_FAILED: self._on_done, TASK_REJECTED: self._on_rejected,
                TASK_RETRIED: self._on_retried}

    # -- hot path ------------------------------------------------------------------------
    def _on_sent(self, event: dict, rec: Any) -> None:
        # a new message with this id: a new life
        self.deliveries.pop(event["uuid"], None)

    def _on_rejected(self, event: dict, rec: Any) -> None:
        # ``Reject(requeue=True)`` (or ``task_reject_on_worker_lost``): the worker handed
        # the message back on purpose, so its next delivery is expected: a new life
        if event.get("requeue") is True:
            uuid = event["uuid"]
            self.deliveries.pop(uuid, None)
            # the redelivery's task-received may have come first (seen in grouped bodies
            # under load): a candidate it raised is excused when judged
            self.requeued.put(uuid, self._state.last_event_at)

    def _new(self, uuid: str, retries: Any, host: Any, at: float, eta: Any,
             received: int, started: int) -> list[Any]:
        """The first delivery of ``uuid`` (with these ``retries``) seen now."""
        if type(host) is str:
            worker = self._state.workers.get(host)
            if worker is not None:  # the state's copy: not one string per entry
                host = worker.hostname
        else:
            worker, host = None, _s(host)
        entry = [retries, received, started, host,
                 worker.epoch if worker is not None else -1, at,
                 at if started else 0.0, eta if type(eta) is str else None, 0]
        deliveries = self.deliveries
        deliveries[uuid] = entry
        if len(deliveries) > self._limit:
            deliveries.popitem(last=False)
        return entry

    def _on_received(self, event: dict, rec: Any) -> None:
        uuid = event["uuid"]
        get = event.get
        retries = get("retries")
        entry = self.deliveries.get(uuid)
        if entry is None or entry[_RETRIES] != retries:  # the first delivery: O(1), done
            self._new(uuid, retries, get("hostname"), self._state.last_event_at,
                      get("eta"), 1, 0)
            return
        entry[_RECEIVED] += 1
        if entry[_RECEIVED] > 1 and entry[_RECEIVED] > entry[_STARTED]:
            self._candidate(uuid, entry, event, rec, self._state.last_event_at)

    def _on_started(self, event: dict, rec: Any) -> None:
        uuid = event["uuid"]
        entry = self.deliveries.get(uuid)
        if entry is None:
            self._new(uuid, None, event.get("hostname"), self._state.last_event_at, None,
                      0, 1)
            return
        if entry[_ETA] is not None and entry[_STARTED] == 0:
            eta = _eta_timestamp(entry[_ETA])
            ts = event.get("timestamp")
            if eta is not None and isinstance(ts, float) and ts < eta - _BEFORE_ETA:
                # started before this message's eta: the previous run's task-started,
                # sent after the retry it published was received (threads pool)
                return
        entry[_STARTED] += 1
        if not entry[_STARTED_AT]:
            entry[_STARTED_AT] = self._state.last_event_at
        if entry[_STARTED] > 1 and entry[_STARTED] > entry[_RECEIVED]:
            self._candidate(uuid, entry, event, rec, self._state.last_event_at)

    def _on_retried(self, event: dict, rec: Any) -> None:
        """A run retried while the entry is still the message it was started for: with
        no newer message seen, that run was the *previous* message's, whose task-started
        came after the retry's task-received (the worker sends task-started late, e.g.
        the threads pool): the start counted for this message is taken back."""
        entry = self.deliveries.get(event["uuid"])
        if entry is not None and entry[_RETRIES] and entry[_STARTED] > 0 \
                and not entry[_DONE]:
            entry[_STARTED] -= 1
            if not entry[_STARTED]:
                entry[_STARTED_AT] = 0.0

    def _on_done(self, event: dict, rec: Any) -> None:
        uuid = event["uuid"]
        entry = self.deliveries.get(uuid)
        if entry is None:
            return
        entry[_DONE] += 1
        if entry[_DONE] > 1:
            excused = self.excused.pop(uuid, None)
            if excused is not None:  # the first run was not lost after all: ran twice
                key, value = excused
                self.found.put(key, (self.ctx.state.last_event_at, *value[1:]))
                self.count(value[1] or None, value[2] or None)

    def _candidate(self, uuid: str, entry: list[Any], event: dict, rec: Any,
                   at: float) -> None:
        queue, task = (rec.queue, rec.name) if rec is not None else ("", "")
        first = self.ctx.state.workers.get(entry[_HOST])
        gone = first is None or first.epoch != entry[_EPOCH] or not first.alive(at)
        self.candidates.append((at, uuid, tuple(entry), _s(event.get("hostname")), queue,
                                task, gone))

    # -- evaluation ----------------------------------------------------------------------
    def _first_worker_gone(self, entry: tuple[Any, ...], at: float, grace: float) -> bool:
        """The first delivery's worker went offline or restarted before ``at`` + grace
        (its worker-offline may arrive after the redelivery its shutdown caused)."""
        worker = self.ctx.state.workers.get(entry[_HOST])
        if worker is None:
            return True
        if worker.epoch == entry[_EPOCH]:
            return False
        return not worker.offline_at or worker.offline_at <= at + grace

    def _judge(self, now: float) -> None:
        grace = self.opts.grace_seconds
        candidates = self.candidates
        while candidates and now - candidates[0][0] >= grace:
            at, uuid, entry, host, queue, task, gone = candidates.popleft()
            gap = round(at - entry[_AT], 1)
            runtime = round(at - entry[_STARTED_AT], 1) if entry[_STARTED_AT] else None
            eta = _eta_delay(entry[_ETA], entry[_AT])
            requeued = self.requeued.get(uuid)
            if requeued is not None and abs(requeued - at) <= grace:
                continue  # handed back on purpose (task-rejected, requeue=True)
            live = self.deliveries.get(uuid)
            if live is not None and live[_RETRIES] == entry[_RETRIES] \
                    and live[_RECEIVED] <= 1 and live[_STARTED] <= 1:
                continue  # the extra start was the previous run's (taken back since)
            key = f"{uuid}/{max(entry[_RECEIVED], entry[_STARTED])}"
            value = (now, queue, task, entry[_HOST], host, gap, eta, runtime, uuid)
            if gone or self._first_worker_gone(entry, at, grace):
                live = self.deliveries.get(uuid)
                if live is None or live[_RETRIES] != entry[_RETRIES] or live[_DONE] < 2:
                    # a redelivery after the worker was lost (lost_task's domain), unless
                    # the task finishes twice later on
                    self.excused.put(uuid, (key, value))
                    continue
            self.found.put(key, value)
            self.count(queue or None, task or None)

    def evaluate(self, now: float) -> Iterable[Condition]:
        self._judge(now)
        window = self.opts.window_seconds
        for key in [k for k, v in self.found.items() if now - v[0] > window]:
            del self.found[key]
        groups: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
        for value in self.found.values():
            groups.setdefault((value[1], value[2]), []).append(value)
        for (queue, task), items in groups.items():
            yield self._condition(queue, task, items)

    def _transport_evidence(self) -> dict[str, Any]:
        url = self.ctx.broker_url
        if is_amqp_broker(url):
            return {"transport": "amqp", "broker_timeout": "RabbitMQ requeues the "
                    "unacknowledged messages of a channel that closes: the worker's "
                    "connection dropped, its heartbeats missed, or consumer_timeout "
                    "(default 1800 s) passed"}
        evidence: dict[str, Any] = {"transport": scheme(url) or "unknown"}
        app = self.ctx.app
        if app is None:
            evidence["visibility_timeout"] = "unknown (app not loaded)"
        else:
            evidence["source"] = "app config"
            configured = app.visibility_timeout
            default = SQS_DEFAULT_VISIBILITY_TIMEOUT if evidence["transport"] == "sqs" \
                else REDIS_DEFAULT_VISIBILITY_TIMEOUT
            evidence["visibility_timeout"] = configured if configured is not None else default
            evidence["visibility_timeout_source"] = (
                "broker_transport_options" if configured is not None else "transport default")
        return evidence

    def _condition(self, queue: str, task: str, items: list[tuple[Any, ...]]) -> Condition:
        recent = sorted(items, key=lambda v: v[0], reverse=True)
        gaps = [v[5] for v in items]
        etas = [v[6] for v in items if v[6] is not None]
        runtimes = [v[7] for v in items if v[7] is not None]
        evidence: dict[str, Any] = {
            "duplicate_deliveries": len(items),
            "task_ids": list(dict.fromkeys(v[8] for v in recent))[:MAX_TASK_IDS],
            "seconds_between_deliveries_max": max(gaps),
            "seconds_between_deliveries_min": min(gaps),
            "eta_delay_seconds_max": max(etas) if etas else None,
            "runtime_at_redelivery_seconds_max": max(runtimes) if runtimes else None,
            "first_workers": sorted({v[3] for v in items})[:MAX_TASK_IDS],
            "redelivered_to": sorted({v[4] for v in items})[:MAX_TASK_IDS],
            **self._transport_evidence(),
        }
        cause = "an ETA/countdown" if etas else "a run" if runtimes else "a reservation"
        if evidence["transport"] == "amqp":
            why = (f"{cause} held unacknowledged when the worker's channel or connection "
                   "closed: a dropped connection, missed AMQP heartbeats or consumer_timeout")
        else:
            why = f"{cause} longer than the broker's visibility timeout"
        summary = (f"{len(items)} duplicate deliver{'y' if len(items) == 1 else 'ies'} of "
                   f"{task or 'a task'}: the same message received again, no retry in "
                   f"between ({why})")
        vt = evidence.get("visibility_timeout")
        if isinstance(vt, float):
            summary += f"; visibility_timeout is {vt:g}s"
        return Condition(summary=summary, queue=queue or None, task=task or None,
                         evidence=evidence)

    # -- restarts (flower_practices.store) -------------------------------------------------
    def memory(self) -> Any:
        """The duplicates still in the window: a restart neither forgets nor recounts them."""
        return [[key, *value] for key, value in self.found.items()]

    def restore_memory(self, data: Any, now: float) -> None:
        for item in data if isinstance(data, list) else ():
            try:
                key, detected, queue, task, first, host, gap, eta, runtime, uuid = item
                self.found.put(str(key), (
                    float(detected), _s(queue), _s(task), _s(first), _s(host), float(gap),
                    None if eta is None else float(eta),
                    None if runtime is None else float(runtime), _s(uuid)))
            except (TypeError, ValueError):
                continue

    def restore_hold(self, finding, now: float) -> float:
        return now  # the duplicates themselves are restored: evaluate() decides

    # -- static (flower-practices check) ---------------------------------------------------
    @classmethod
    def static_check(cls, app: AppInfo) -> list[tuple[str | None, str]]:
        """On a Redis broker: a visibility timeout shorter than a task's retry delay, or
        than the time limit of an ``acks_late`` task; and ``countdown=<number>`` literals
        in the task modules longer than it (``apply_async``/``retry`` calls)."""
        if scheme(app.broker_url) not in ("redis", "rediss", "sentinel"):
            return []
        vt = app.visibility_timeout
        vt = REDIS_DEFAULT_VISIBILITY_TIMEOUT if vt is None else vt
        out: list[tuple[str | None, str]] = []
        for name, t in sorted(app.tasks.items()):
            out += [(name, m) for m in _task_delays(t, vt)]
        for path, line, call, seconds in _countdown_literals(sorted(set(app.task_files.values()))):
            if seconds > vt:
                out.append((None, f"{path}:{line}: .{call}(countdown={seconds:g}) is longer "
                            f"than the broker's visibility_timeout ({vt:g}s): the message "
                            "is delivered again before it runs"))
        return out


def _task_delays(t: Any, vt: float) -> list[str]:
    out = []
    delay = t.default_retry_delay
    if t.has_retry_policy and isinstance(delay, (int, float)) and delay > vt:
        out.append(f"default_retry_delay {delay:g}s is longer than the broker's "
                   f"visibility_timeout ({vt:g}s): each retry is delivered twice")
    if t.retry_backoff and t.has_retry_policy and t.retry_backoff_max > vt:
        out.append(f"retry_backoff_max {t.retry_backoff_max}s is longer than the "
                   f"broker's visibility_timeout ({vt:g}s)")
    limit = t.time_limit or t.soft_time_limit
    if t.acks_late and limit and limit > vt:
        out.append(f"acks_late with a time limit of {limit:g}s, longer than the broker's "
                   f"visibility_timeout ({vt:g}s): a long run is delivered again while it "
                   "runs")
    return out


def _countdown_literals(paths: list[str]) -> list[tuple[str, int, str, float]]:
    """(file, line, call, seconds) of ``.apply_async(countdown=N)`` / ``.retry(countdown=N)``
    calls with a number literal, in the given source files."""
    out: list[tuple[str, int, str, float]] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), filename=path)
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("apply_async", "retry")):
                continue
            for kw in node.keywords:
                value = kw.value
                if kw.arg == "countdown" and isinstance(value, ast.Constant) \
                        and isinstance(value.value, (int, float)) \
                        and not isinstance(value.value, bool):
                    out.append((path, node.lineno, node.func.attr, float(value.value)))
    return out
