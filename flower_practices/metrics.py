"""Prometheus exposition: our metric names, cheap accumulators and the scrape-time collector.

Accumulation on the event path is plain dict/list arithmetic (no prometheus_client label
lookups or locks per event); :class:`PracticesCollector` turns the accumulators into metric
families only when ``/metrics`` is scraped. Every label value passes a cardinality cap,
and the per-(task, queue) families are also capped in series (``max_series_per_metric``):
per-label caps alone still allow types x tasks x queues combinations.
:func:`render_metrics` renders family by family: one family that cannot be rendered is
left out and counted (``flower_practices_render_errors_total``), never the whole page.

Metric names are a public contract (dashboards and alert rules use them): see
``METRICS`` below and the README's metrics reference.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .bounded import OTHER, LabelCap
from .config import DEFAULT_MAX_EXCEPTION_CLASSES, DEFAULT_MAX_SERIES_PER_METRIC
from .events.sanitize import failure_exception
from .events.types import (
    TASK_EVENTS,
    TASK_FAILED,
    TASK_STARTED,
    TASK_SUCCEEDED,
    TERMINAL_EVENTS,
)
from .state import RuntimeState, TaskRecord, finite_seconds

if TYPE_CHECKING:
    from .engine import Engine, EngineView

RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, 600.0, 1800.0, 3600.0)
WAIT_BUCKETS = RUNTIME_BUCKETS
#: the events that end a run (a runtime observed)
_RUN_ENDS = frozenset((TASK_SUCCEEDED, TASK_FAILED))
#: seconds a task event may wait for the task-sent it overtook (see BaseMetrics.listener)
DEFER_SECONDS = 2.0
#: records that may hold events back at once (past it, events count at once)
MAX_DEFERRED = 10_000
#: the event a held-back (non-terminal) task event is counted with: only terminal events'
#: fields are read
_NO_FIELDS: dict[str, Any] = {}

#: name -> (type, help, labels). The single source of truth for the README reference.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "celery_practice_violation": (
        "gauge", "1 per active finding of a best-practice violation (per distinct label set)",
        ("practice", "severity", "queue", "task", "worker")),
    "celery_practice_violations_total": (
        "counter", "Offending occurrences counted per practice",
        ("practice", "queue", "task")),
    "celery_task_events_total": (
        "counter", "Task events received, by event type, task name and queue",
        ("type", "task", "queue")),
    "celery_task_runtime_seconds": (
        "histogram", "Task runtime from task-started to task-succeeded/failed",
        ("task", "queue", "state")),
    "celery_task_queue_wait_seconds": (
        "histogram", "Time from task-sent (or task-received) to task-started, per queue",
        ("queue",)),
    "celery_task_failures_total": (
        "counter", "Task-failed events by task, queue and exception class (the class name "
        "only, never the message; empty when the event names none). At most "
        "max_exception_classes distinct classes, more fold into \"__other__\"",
        ("task", "queue", "exception")),
    "celery_queue_length": (
        "gauge", "Messages waiting in a broker queue: per priority sub-queue where the broker "
        "tells (Redis: priority 0-9), else the whole depth as priority=\"\" (RabbitMQ, "
        "other transports)", ("queue", "priority")),
    "celery_queue_reserved_tasks": (
        "gauge", "Tasks of a queue received by live workers but not started (prefetched, no "
        "longer in celery_queue_length; from events, heard since the event stream's last "
        "blind window)", ("queue",)),
    "celery_queue_consumers": (
        "gauge", "Consumers of a broker queue (RabbitMQ count, else workers' active_queues)",
        ("queue",)),
    "celery_queue_oldest_task_age_seconds": (
        "gauge", "Age of the oldest task known to wait in a queue: sent (task-sent seen, "
        "without eta/countdown) and not yet received by a worker, from its task-sent "
        "timestamp; 0 when the queue has no such task (needs task_send_sent_event and "
        "worker task events)", ("queue",)),
    "celery_worker_up": (
        "gauge", "1 while a worker's heartbeats are fresh, 0 once they stopped without a "
        "worker-offline (a worker that left cleanly has no series)", ("worker",)),
    "celery_worker_tasks_reserved": (
        "gauge", "Tasks received but not started, per worker (from events, heard since the "
        "event stream's last blind window)", ("worker",)),
    "celery_worker_tasks_running": (
        "gauge", "Tasks started but not finished, per worker (from events)", ("worker",)),
    "flower_practices_events_total": (
        "counter", "Events received from the broker, valid or not", ()),
    "flower_practices_event_decode_errors_total": (
        "counter", "Events dropped as malformed, of unknown type or over a message cap, and "
        "bad fields cleaned (kinds bad_field, bad_text: the event kept), by kind", ("kind",)),
    "flower_practices_broker_reconnects_total": (
        "counter", "Reconnections of the event stream after losing the broker", ()),
    "flower_practices_event_stream_connected": (
        "gauge", "1 while the event stream is connected to the broker", ()),
    "flower_practices_event_stream_disconnected_seconds_total": (
        "counter", "Seconds the event stream was not connected since it started (blind "
        "time; the ongoing gap included at scrape time)", ()),
    "flower_practices_event_stream_gaps_total": (
        "counter", "Losses of a connected event stream (each starts a blind window)", ()),
    "flower_practices_last_event_timestamp_seconds": (
        "gauge", "Unix time the last event was received", ()),
    "flower_practices_probe_errors_total": (
        "counter", "Failed probes of the broker and the result backend, by probe", ("probe",)),
    "flower_practices_rule_errors_total": (
        "counter", "Rule evaluations that raised, by practice", ("practice",)),
    "flower_practices_label_overflow_total": (
        "counter", "Label values replaced by __other__ because of a cardinality cap "
        "(label series: task and queue folded by the per-family series cap; label length: "
        "values cut to 200 characters, ending in the marker U+2026; label exception: "
        "classes past max_exception_classes)", ("label",)),
    "flower_practices_render_errors_total": (
        "counter", "Metric families left out of a /metrics page because they could not be "
        "rendered, by family (the rest of the page is served)", ("family",)),
    "flower_practices_state_corrections_total": (
        "counter", "Tasks whose tracked state was corrected without an event saying so, by "
        "kind: reserved_unheard (counted reserved before a blind window of the event "
        "stream, not believed reserved after it), reconnect_kept (running on a worker "
        "whose consumer reconnected after a broker restart: kept running, not lost), "
        "ended_unreported (runs an idle heartbeat showed over with no outcome event), "
        "expired (in-flight records dropped at their maximum age)", ("kind",)),
    "flower_practices_tasks_evicted_total": (
        "counter", "In-flight task records evicted because of the max_tracked_tasks cap", ()),
    "flower_practices_evaluation_duration_seconds": (
        "gauge", "Duration of the last rules evaluation", ()),
    "flower_practices_last_evaluation_timestamp_seconds": (
        "gauge", "Unix time the last finished rules evaluation started (0 before the first)",
        ()),
    "flower_practices_tracked_tasks": ("gauge", "In-flight task records held", ()),
    "flower_practices_start_time_seconds": (
        "gauge", "Unix time this exporter (or the Flower plugin's engine) started", ()),
    "flower_practices_state_errors_total": (
        "counter", "State file failures: load (unreadable, moved aside) or save", ("kind",)),
}


class Histogram:
    """Cumulative-on-read histogram: per-bucket counts, sum and count."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self, nbuckets: int) -> None:
        self.counts = [0] * (nbuckets + 1)
        self.sum = 0.0
        self.count = 0

    def buckets(self, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
        out, acc = [], 0
        for bound, n in zip(bounds, self.counts, strict=False):
            acc += n
            out.append((_fmt(bound), acc))
        out.append(("+Inf", self.count))
        return out


def _fmt(bound: float) -> str:
    return repr(float(bound))


def _task_label(state: RuntimeState, rec: TaskRecord) -> str:
    return state.task_label(rec.name) if rec.name else ""


def _queue_label(state: RuntimeState, rec: TaskRecord) -> str:
    return state.queue_label(rec.queue) if rec.queue else ""


class BaseMetrics:
    """Accumulators fed per task event by the engine (:meth:`on_task_event`, a listener
    called after the state took the event) and by the rules (:meth:`count_violation`).

    The per-(task, queue) families -- task events, runtime histogram, violations_total --
    export at most ``max_series_per_metric`` series each (checked only when a key is new,
    so O(1)): a counter key is one series, a runtime-histogram key is
    ``len(RUNTIME_BUCKETS) + 3`` (its buckets, ``+Inf``, ``_sum`` and ``_count``), so the
    histogram holds ``max_series_per_metric // 21`` keys. Past it a new key is folded into
    the same key with task and queue ``"__other__"`` (``type``/``state``/``practice``
    kept, so a family can exceed the cap by at most that label's few fixed values) and
    counted in ``series_overflow``.
    """

    def __init__(self, max_series_per_metric: int = DEFAULT_MAX_SERIES_PER_METRIC,
                 max_exception_classes: int = DEFAULT_MAX_EXCEPTION_CLASSES) -> None:
        if max_series_per_metric < 1:
            raise ValueError("max_series_per_metric must be >= 1")
        if max_exception_classes < 1:
            raise ValueError("max_exception_classes must be >= 1")
        self.max_series = max_series_per_metric
        #: runtime-histogram keys allowed: each exports its buckets, +Inf, _sum and _count
        self.max_runtime_keys = max(1, max_series_per_metric // (len(RUNTIME_BUCKETS) + 3))
        #: observations folded into a task="__other__", queue="__other__" series
        self.series_overflow = 0
        self.task_events: dict[tuple[str, str, str], int] = {}
        self.runtime: dict[tuple[str, str, str], Histogram] = {}
        self.wait: dict[str, Histogram] = {}
        self.violations_total: dict[tuple[str, str, str], int] = {}
        #: family name -> /metrics renderings that left it out (see render_metrics)
        self.render_errors: dict[str, int] = {}
        #: (task, queue, exception class) -> task-failed events (celery_task_failures_total)
        self.failures: dict[tuple[str, str, str], int] = {}
        #: the exception label's cap: past it a new class is "__other__" (overflow counted)
        self.exception_label = LabelCap("exception", max_exception_classes)
        #: uuid -> record whose task events wait for their task-sent (see listener)
        self._deferred: dict[str, TaskRecord] = {}
        self._flush_one: Callable[[TaskRecord], None] | None = None

    def listener(self, state: RuntimeState) -> Callable[[str, dict, TaskRecord], None]:
        """The engine's task listener for ``state``: :meth:`on_task_event`, with the
        label keys of each (task name, queue) looked up once and cached.

        A pair is cached only once both values are known to their label caps (so its
        labels are the values themselves: task and queue labels are never released);
        until then, and for values folded into ``__other__``, every event takes
        :meth:`on_task_event`, which asks the caps (and counts their overflow) as before.

        A worker's task event can overtake its task-sent (worker and producer publish on
        different connections): the queue is then unknown. When a task-sent is expected
        (one was seen for the task name: ``RuntimeState.sent_names``), the event is held
        back on the record (``TaskRecord.deferred``) and counted, under the right queue,
        when the task-sent arrives -- or with the next event once the queue is known, at
        the task's end, or by :meth:`flush_deferred` after :data:`DEFER_SECONDS`, with
        whatever queue is known then. At most :data:`MAX_DEFERRED` records wait.
        """
        keysets: dict[tuple[str, str], dict[str, tuple[str, str, str]]] = {}
        tasks_known, queues_known = state.task_label.known, state.queue_label.known
        limit = self.max_series
        counts = self.task_events
        on_task_event = self.on_task_event
        observe_wait = self.observe_wait
        observe_run = self._observe_run_labels
        count_failure = self.count_failure
        sent_names = state.sent_names
        waiting = self._deferred

        def held(etype: str, rec: TaskRecord) -> bool:
            """True when ``rec``'s event is held back until its queue is known (see the
            docstring); else its earlier held events are counted first."""
            if not rec.queue and not rec.has_sent and rec.name in sent_names \
                    and etype not in TERMINAL_EVENTS:  # rare with sent events on
                deferred = rec.deferred
                if deferred is not None:
                    deferred.append(etype)
                    return True
                if len(waiting) < MAX_DEFERRED:
                    rec.deferred = [state.last_event_at, etype]
                    waiting[rec.uuid] = rec
                    return True
            if rec.deferred is not None:
                flush(rec)
            return False

        def count(etype: str, event: dict, rec: TaskRecord, check: bool = True) -> None:
            # the listener itself (the hold-back check first; flush() counts without it)
            if check and (not rec.queue or rec.deferred is not None) and held(etype, rec):
                return
            pair = (rec.name, rec.queue)
            keys = keysets.get(pair)
            if keys is None:
                on_task_event(etype, event, rec, state)
                name, queue = pair
                if (not name or name in tasks_known) and (not queue or queue in queues_known) \
                        and len(keysets) < limit:
                    keysets[pair] = {t: (t[5:], name, queue) for t in TASK_EVENTS}
                return
            key = keys[etype]
            if etype == TASK_STARTED:
                if rec.wait is not None:
                    observe_wait(key[2], rec.wait)
            elif etype in _RUN_ENDS:
                observe_run(etype, event, rec, key[1], key[2])
                if etype == TASK_FAILED:
                    count_failure(key[1], key[2], failure_exception(event)[0])
            n = counts.get(key)
            if n is None:  # a new series: the cap applies
                self.count_task_event(etype, key[1], key[2])
            else:
                counts[key] = n + 1

        def flush(rec: TaskRecord) -> None:
            deferred, rec.deferred = rec.deferred, None
            waiting.pop(rec.uuid, None)
            for etype in deferred[1:]:  # type: ignore[index]
                count(etype, _NO_FIELDS, rec, False)

        self._flush_one = flush
        return count

    def flush_deferred(self, now: float) -> int:
        """Count the held-back events of tasks whose task-sent has not come within
        :data:`DEFER_SECONDS` (engine evaluation, under its lock); returns how many
        records were flushed. O(records waiting)."""
        flush = self._flush_one
        if flush is None or not self._deferred:
            return 0
        late = [rec for rec in self._deferred.values()
                if rec.deferred is not None and now - rec.deferred[0] >= DEFER_SECONDS]
        for rec in late:
            flush(rec)
        return len(late)

    def on_task_event(self, etype: str, event: dict, rec: TaskRecord,
                      state: RuntimeState) -> None:
        """Count one task event the state applied to ``rec``; observe a start's queue
        wait (measured by the state) and a finished run's runtime."""
        if etype == TASK_STARTED:
            if rec.wait is not None:
                q = state.queues.get(rec.queue) if rec.queue else None
                label = q.label if q is not None else \
                    (state.queue_label(rec.queue) if rec.queue else "")
                self.observe_wait(label, rec.wait)
        elif etype in (TASK_SUCCEEDED, TASK_FAILED):
            self._observe_run(etype, event, rec, state)
            if etype == TASK_FAILED:
                self.count_failure(_task_label(state, rec), _queue_label(state, rec),
                                   failure_exception(event)[0])
        self.count_task_event(etype, _task_label(state, rec), _queue_label(state, rec))

    def _observe_run(self, etype: str, event: dict, rec: TaskRecord,
                     state: RuntimeState) -> None:
        self._observe_run_labels(etype, event, rec, _task_label(state, rec),
                                 _queue_label(state, rec))

    def _observe_run_labels(self, etype: str, event: dict, rec: TaskRecord, task: str,
                            queue: str) -> None:
        """:meth:`_observe_run` with the labels already known."""
        ts = event.get("timestamp") or 0.0
        if etype == TASK_SUCCEEDED:
            runtime = finite_seconds(event.get("runtime"))
            if runtime is None and rec.started_at:
                runtime = max(0.0, ts - rec.started_at)
            if runtime is not None:
                self.observe_runtime(task, queue, "succeeded", runtime)
        elif rec.started_at and ts:
            self.observe_runtime(task, queue, "failed", max(0.0, ts - rec.started_at))

    def _count(self, counts: dict, key: tuple, overflow: tuple, n: int = 1) -> None:
        """Add ``n`` to ``counts[key]``; a new key past ``max_series`` goes to
        ``overflow`` instead (counted in ``series_overflow``)."""
        current = counts.get(key)
        if current is None:
            current = 0
            if len(counts) >= self.max_series:
                self.series_overflow += 1
                key = overflow
                current = counts.get(key, 0)
        counts[key] = current + n

    def count_task_event(self, etype: str, task: str, queue: str) -> None:
        kind = etype[5:]
        self._count(self.task_events, (kind, task, queue), (kind, OTHER, OTHER))

    def count_failure(self, task: str, queue: str, exception: str | None) -> None:
        """Count one task-failed event by its exception class (a name from
        :func:`~flower_practices.events.sanitize.failure_exception`, never a message; None:
        the event names none), through the class cap and the series cap."""
        cls = self.exception_label(exception) if exception else ""
        self._count(self.failures, (task, queue, cls), (OTHER, OTHER, cls))

    def observe_runtime(self, task: str, queue: str, state: str, seconds: float) -> None:
        runtime = self.runtime
        key = (task, queue, state)
        hist = runtime.get(key)
        if hist is None:
            if len(runtime) >= self.max_runtime_keys:
                self.series_overflow += 1
                key = (OTHER, OTHER, state)
                hist = runtime.get(key)
            if hist is None:
                hist = runtime[key] = Histogram(len(RUNTIME_BUCKETS))
        hist.counts[bisect_left(RUNTIME_BUCKETS, seconds)] += 1
        hist.sum += seconds
        hist.count += 1

    def observe_wait(self, queue: str, seconds: float) -> None:
        hist = self.wait.get(queue)
        if hist is None:
            hist = self.wait[queue] = Histogram(len(WAIT_BUCKETS))
        hist.counts[bisect_left(WAIT_BUCKETS, seconds)] += 1
        hist.sum += seconds
        hist.count += 1

    def count_violation(self, practice: str, queue: str, task: str, n: int = 1) -> None:
        self._count(self.violations_total, (practice, queue, task),
                    (practice, OTHER, OTHER), n)


def _family(name: str) -> Metric:
    kind, help_text, labels = METRICS[name]
    if kind == "counter":
        base = name[: -len("_total")] if name.endswith("_total") else name
        return CounterMetricFamily(base, help_text, labels=labels)
    if kind == "histogram":
        return HistogramMetricFamily(name, help_text, labels=labels)
    return GaugeMetricFamily(name, help_text, labels=labels)


class PracticesCollector(Collector):
    """Reads the engine's state under its lock and yields every metric family.

    ``validate``: yield only families that render (each is rendered once to check), the
    others counted in ``render_errors``; for registries rendered by code that fails the
    whole page on one bad family (Flower's ``/metrics`` calls ``generate_latest``).
    A collection that raises yields nothing of ours (counted), never an exception.
    """

    def __init__(self, engine: Engine, *, validate: bool = False) -> None:
        self.engine = engine
        self.validate = validate

    def describe(self) -> Iterator[Metric]:
        # Describing lets the registry detect name clashes at registration time
        # without running a full collect.
        for name in METRICS:
            yield _family(name)

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        errors = engine.metrics.render_errors
        try:
            with engine.lock:
                families, tasks = self._collect_locked(engine)
            # the big per-(task, queue) families are built from the copies, lock released
            families[1:1] = _task_families(*tasks)
        except Exception:
            _count_render_error(errors, "flower_practices_collector")
            return
        if self.validate:
            families = [f for f in families if _renders(f, errors)]
        yield from families

    def _collect_locked(self, engine: Engine) -> tuple[list[Metric], tuple]:
        """Every family but the per-(task, queue) ones (inserted after the first), and a
        copy of those taken under the lock (:func:`_task_snapshot`)."""
        view = engine.view(time.time())
        return ([*_finding_families(view), *_queue_families(view), *_worker_families(view),
                 *_stream_families(view), *_self_families(view)],
                _task_snapshot(view.metrics))


def _finding_families(view: EngineView) -> list[Metric]:
    # Findings are keyed by raw names but exported through capped labels, so several
    # findings can share one label set (e.g. task="__other__"): export each distinct
    # label set once, value 1 ("at least one active finding with these labels").
    fam = _family("celery_practice_violation")
    labelsets = {(f.practice, f.severity, f.queue_label, f.task_label, f.worker_label)
                 for f in view.findings}
    for labels in sorted(labelsets):
        fam.add_metric(list(labels), 1.0)
    return [fam]


def _hist_copy(hist: Histogram) -> Histogram:
    out = Histogram.__new__(Histogram)
    out.counts, out.sum, out.count = hist.counts[:], hist.sum, hist.count
    return out


def _task_snapshot(base: BaseMetrics) -> tuple:
    """Copies of the per-(task, queue) accumulators, taken under the engine lock (a few
    ms at 10,000 series; building their families from the copies is left for after)."""
    return ([(name, list(counts.items()))
             for name, counts in (("celery_practice_violations_total", base.violations_total),
                                  ("celery_task_events_total", base.task_events),
                                  ("celery_task_failures_total", base.failures))],
            [(key, _hist_copy(h)) for key, h in base.runtime.items()],
            [(queue, _hist_copy(h)) for queue, h in base.wait.items()])


def _task_families(counters: list, runtime: list, wait: list) -> list[Metric]:
    """The per-(task, queue) families from :func:`_task_snapshot`'s copies."""
    out = []
    for name, items in counters:
        fam = _family(name)
        for key, n in items:
            fam.add_metric(list(key), n)
        out.append(fam)
    fam = _family("celery_task_runtime_seconds")
    for key, hist in runtime:
        fam.add_metric(list(key), hist.buckets(RUNTIME_BUCKETS), hist.sum)
    out.append(fam)
    fam = _family("celery_task_queue_wait_seconds")
    for queue, hist in wait:
        fam.add_metric([queue], hist.buckets(WAIT_BUCKETS), hist.sum)
    out.append(fam)
    return out


def _queue_families(view: EngineView) -> list[Metric]:
    length = _family("celery_queue_length")
    for key, n in view.queue_lengths.items():
        length.add_metric(list(key), n)
    consumers = _family("celery_queue_consumers")
    for label, n in view.queue_consumers.items():
        consumers.add_metric([label], n)
    # the backlog prefetched by live workers, beside the broker's own length (0 when none)
    reserved = _family("celery_queue_reserved_tasks")
    for label, n in view.queue_reserved.items():
        reserved.add_metric([label], n)
    oldest = _family("celery_queue_oldest_task_age_seconds")
    for label, age in view.queue_oldest_age.items():
        oldest.add_metric([label], age)
    return [length, consumers, reserved, oldest]


def _worker_families(view: EngineView) -> list[Metric]:
    up = _family("celery_worker_up")
    for label, value in view.workers_up.items():
        up.add_metric([label], value)
    reserved = _family("celery_worker_tasks_reserved")
    running = _family("celery_worker_tasks_running")
    for label, (n_reserved, n_running) in view.workers_busy.items():
        reserved.add_metric([label], n_reserved)
        running.add_metric([label], n_running)
    return [up, reserved, running]


def _stream_families(view: EngineView) -> list[Metric]:
    stream = view.stream
    out = [_gauge("flower_practices_events_total", stream.events)]
    fam = _family("flower_practices_event_decode_errors_total")
    for kind, n in stream.decode_errors.items():
        fam.add_metric([kind], n)
    out.append(fam)
    out += [
        _gauge("flower_practices_broker_reconnects_total", stream.reconnects),
        _gauge("flower_practices_event_stream_connected", 1.0 if stream.connected else 0.0),
        _gauge("flower_practices_event_stream_disconnected_seconds_total",
               stream.disconnected_seconds()),
        _gauge("flower_practices_event_stream_gaps_total", stream.gaps),
        _gauge("flower_practices_last_event_timestamp_seconds", stream.last_event_at),
    ]
    return out


def _self_families(view: EngineView) -> list[Metric]:
    out = []
    for name, counts in (("flower_practices_probe_errors_total", view.probe_errors),
                         ("flower_practices_rule_errors_total", view.rule_errors)):
        fam = _family(name)
        for key, n in counts.items():
            fam.add_metric([key], n)
        out.append(fam)
    fam = _family("flower_practices_label_overflow_total")
    for label, n in view.label_overflow.items():
        fam.add_metric([label], n)
    fam.add_metric(["series"], view.metrics.series_overflow)
    fam.add_metric(["length"], view.stream.labels_truncated)
    fam.add_metric(["exception"], view.metrics.exception_label.overflow)
    out.append(fam)
    fam = _family("flower_practices_render_errors_total")
    for family, n in view.metrics.render_errors.items():
        fam.add_metric([family], n)
    out.append(fam)
    fam = _family("flower_practices_state_corrections_total")
    for kind, n in view.state_corrections.items():
        fam.add_metric([kind], n)
    out.append(fam)
    out += [
        _gauge("flower_practices_tasks_evicted_total", view.tasks_evicted),
        _gauge("flower_practices_evaluation_duration_seconds", view.last_evaluation_seconds),
        _gauge("flower_practices_last_evaluation_timestamp_seconds", view.last_evaluation_at),
        _gauge("flower_practices_tracked_tasks", view.tracked_tasks),
        _gauge("flower_practices_start_time_seconds", view.started_at),
    ]
    fam = _family("flower_practices_state_errors_total")
    for kind in ("load", "save"):
        fam.add_metric([kind], view.state_errors.get(kind, 0))
    out.append(fam)
    return out


def _gauge(name: str, value: float) -> Metric:
    """A family of one unlabelled sample."""
    fam = _family(name)
    fam.add_metric([], value)
    return fam


class _SampleText:
    """What both renderers cache per render: each (label name, label value) pair's text,
    escaped once by ``pair_text``, and the text of each int sample value (ints only: 0.0
    and -0.0 are equal keys, not texts)."""

    __slots__ = ("pair_text", "pairs", "ints", "go")

    def __init__(self, pair_text: Callable[[str, str], str]) -> None:
        from prometheus_client.utils import floatToGoString

        self.pair_text = pair_text
        self.pairs: dict[tuple[str, str], str] = {}
        self.ints: dict[int, str] = {}
        self.go = floatToGoString

    def labels(self, labels: dict[str, str]) -> str:
        """``{a="x",b="y"}`` for ``labels`` (sorted by name), or "" when there are none."""
        if not labels:
            return ""
        pairs = self.pairs
        out = []
        for item in sorted(labels.items()):
            text = pairs.get(item)
            if text is None:
                text = pairs[item] = self.pair_text(*item)
            out.append(text)
        return "{" + ",".join(out) + "}"

    def value(self, value: Any) -> str:
        if type(value) is int:
            text = self.ints.get(value)
            if text is None:
                text = self.ints[value] = self.go(value)
            return text
        return self.go(value)


def render_text(registry: Collector, errors: dict[str, int] | None = None) -> bytes:
    """Byte-for-byte what ``prometheus_client.generate_latest(registry)`` returns (text
    format 0.0.4, default escaping), about twice as fast on large expositions: label names,
    label values and metric names are escaped once per render instead of once per sample.

    Unlike ``generate_latest``, a family that cannot be rendered (a value that is not
    text, or not encodable) is left out and counted in ``errors``; the rest is served.
    """
    from prometheus_client.openmetrics.exposition import (
        UNDERSCORES,
        escape_label_name,
        escape_metric_name,
    )

    label_names: dict[str, str] = {}
    metric_names: dict[str, str] = {}

    def lname(k: str) -> str:
        out = label_names.get(k)
        if out is None:
            out = label_names[k] = escape_label_name(k, UNDERSCORES)
        return out

    def pair(k: str, v: str) -> str:
        return lname(k) + '="' + v.replace("\\", r"\\").replace(
            "\n", r"\n").replace('"', r"\"") + '"'

    text_of = _SampleText(pair)
    labels_text, value_text = text_of.labels, text_of.value

    def mname(n: str) -> str:
        out = metric_names.get(n)
        if out is None:
            out = metric_names[n] = escape_metric_name(n, UNDERSCORES)
        return out

    def line(s: Any) -> str:
        labelstr = labels_text(s.labels)
        text = value_text(s.value)
        if s.timestamp is None:
            return f"{mname(s.name)}{labelstr} {text}\n"
        return f"{mname(s.name)}{labelstr} {text} {int(float(s.timestamp) * 1000):d}\n"

    chunks: list[bytes] = []
    for metric in _collect(registry, errors):
        try:
            chunks.append(_text_family(metric, mname, line))
        except Exception:
            _count_render_error(errors, metric.name)
    return b"".join(chunks)


def _text_family(metric: Metric, mname: Any, line: Any) -> bytes:
    """One family in text format 0.0.4 (``generate_latest``'s rules)."""
    output: list[str] = []
    name, mtype = metric.name, metric.type
    if mtype == "counter":
        name += "_total"
    elif mtype == "info":
        name += "_info"
        mtype = "gauge"
    elif mtype == "stateset":
        mtype = "gauge"
    elif mtype == "gaugehistogram":
        mtype = "histogram"
    elif mtype == "unknown":
        mtype = "untyped"
    doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    output.append(f"# HELP {mname(name)} {doc}\n")
    output.append(f"# TYPE {mname(name)} {mtype}\n")
    extra: dict[str, list[str]] = {}
    special = {metric.name + suffix: suffix for suffix in ("_created", "_gsum", "_gcount")}
    for s in metric.samples:
        suffix = special.get(s.name)
        if suffix is None:
            output.append(line(s))
        else:
            extra.setdefault(suffix, []).append(line(s))
    for suffix, lines in sorted(extra.items()):
        output.append(f"# HELP {mname(metric.name + suffix)} {doc}\n")
        output.append(f"# TYPE {mname(metric.name + suffix)} gauge\n")
        output.extend(lines)
    return "".join(output).encode("utf-8")


#: most distinct family names counted in render_errors (beyond: "__other__")
_MAX_RENDER_ERROR_FAMILIES = 100


def _count_render_error(errors: dict[str, int] | None, family: str) -> None:
    if errors is None:
        return
    if family not in errors and len(errors) >= _MAX_RENDER_ERROR_FAMILIES:
        family = OTHER
    errors[family] = errors.get(family, 0) + 1


def _collect(registry: Collector, errors: dict[str, int] | None) -> Iterator[Metric]:
    """``registry.collect()``, stopping (counted) instead of raising if a collector fails."""
    try:
        yield from registry.collect()
    except Exception:
        _count_render_error(errors, "__collector__")


class _Single:
    """A registry holding one family, to render it alone."""

    __slots__ = ("metric",)

    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> Iterator[Metric]:
        yield self.metric


def _renders(metric: Metric, errors: dict[str, int]) -> bool:
    """Whether ``metric`` renders in both exposition formats (counted when not)."""
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

    failed: dict[str, int] = {}
    render_text(_Single(metric), failed)
    if not failed:
        try:
            openmetrics(_Single(metric))
        except Exception:
            failed[metric.name] = 1
    if failed:
        _count_render_error(errors, metric.name)
        return False
    return True


OPENMETRICS_EOF = b"# EOF\n"


def render_metrics(registry: Collector, accept: str = "",
                   errors: dict[str, int] | None = None) -> tuple[bytes, str]:
    """The ``/metrics`` body and its content type for an ``Accept`` header: text format
    0.0.4 (:func:`render_text`) or OpenMetrics. A family that cannot be rendered is left
    out and counted in ``errors`` (``flower_practices_render_errors_total``); the rest of
    the page is always served."""
    from prometheus_client.exposition import generate_latest

    encoder, content_type = choose_format(accept)
    if encoder is generate_latest:  # plain text 0.0.4: same bytes, rendered faster
        return render_text(registry, errors), content_type
    fast = _openmetrics_renderer(encoder)
    chunks: list[bytes] = []
    for metric in _collect(registry, errors):
        try:
            body = fast(metric) if fast is not None else None
            if body is None:
                body = encoder(_Single(metric))
        except Exception:
            _count_render_error(errors, metric.name)
            continue
        if body.endswith(OPENMETRICS_EOF):
            body = body[: -len(OPENMETRICS_EOF)]
        chunks.append(body)
    chunks.append(OPENMETRICS_EOF)
    return b"".join(chunks), content_type


def choose_format(accept: str) -> tuple[Callable[..., bytes], str]:
    """prometheus_client's ``choose_encoder`` for an ``Accept`` header, or the plain text
    format 0.0.4 when it cannot parse the header (it raises on some, e.g. an OpenMetrics
    ``version`` that is not a number): a scraper's header never fails a scrape."""
    from prometheus_client.exposition import (
        CONTENT_TYPE_PLAIN_0_0_4,
        choose_encoder,
        generate_latest,
    )

    try:
        return choose_encoder(accept)
    except Exception:
        return generate_latest, CONTENT_TYPE_PLAIN_0_0_4


def _openmetrics_renderer(encoder: Any) -> Callable[[Metric], bytes | None] | None:
    """For prometheus_client's OpenMetrics encoder (``choose_encoder``'s partial), a
    renderer of one family giving byte-for-byte what ``encoder`` gives for it minus the
    final ``# EOF``, escaping each sample name and (label, value) pair once per render
    (the encoder escapes sample names character by character, every sample). It returns
    None for a family it does not cover (exemplars, native histograms: left to the
    encoder); None instead of a renderer for escaping ``allow-utf-8`` or another encoder.
    """
    from functools import partial

    from prometheus_client.openmetrics import exposition as om

    if not isinstance(encoder, partial) or encoder.func is not om.generate_latest \
            or encoder.args:
        return None
    escaping = encoder.keywords.get("escaping", om.UNDERSCORES)
    if escaping == om.ALLOWUTF8:
        return None
    rune = om._is_legacy_labelname_rune
    snames: dict[str, str] = {}
    label_names: dict[str, str] = {}
    def sname(n: str) -> str:
        out = snames.get(n)
        if out is None:
            out = snames[n] = om._escape(n, escaping, rune)
        return out

    def pair(k: str, v: str) -> str:
        name = label_names.get(k)
        if name is None:
            name = label_names[k] = om.escape_label_name(k, escaping)
        return name + '="' + om._escape(v, om.ALLOWUTF8, rune) + '"'

    text_of = _SampleText(pair)
    labels_text, value_text = text_of.labels, text_of.value

    def family(metric: Metric) -> bytes | None:
        mname = om.escape_metric_name(metric.name, escaping)
        output = [f"# HELP {mname} {om._escape(metric.documentation, om.ALLOWUTF8, rune)}\n",
                  f"# TYPE {mname} {metric.type}\n"]
        if metric.unit:
            output.append(f"# UNIT {mname} {metric.unit}\n")
        for s in metric.samples:
            if s.exemplar or s.native_histogram:
                return None
            labelstr = labels_text(s.labels)
            value = s.value
            text = "" if value is None else value_text(value)
            if s.timestamp is None:
                output.append(f"{sname(s.name)}{labelstr} {text}\n")
            else:
                output.append(f"{sname(s.name)}{labelstr} {text} {s.timestamp}\n")
        return "".join(output).encode("utf-8")

    return family
