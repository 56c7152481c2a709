"""The rules engine: feeds events to state and rules, evaluates rules periodically.

``observe`` is the hot path (validation in :mod:`~flower_practices.events.validate`, the
state update, the task listeners -- the exposition's accumulators -- and the rules'
hooks for that event type). ``evaluate`` runs off the hot path (timer or thread) and
turns rule conditions into findings. Both take ``lock``; so do the probe API
(``apply_*_probes``) and the read API (``view``, used by the metrics collector), which
makes the engine safe to feed from a consumer thread while an IOLoop or HTTP thread reads
it. The engine knows no HTTP and no JSON: the documents are :mod:`flower_practices.api`'s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .appinfo import AppInfo
from .catalogue import BY_ID, PRACTICES, practice
from .config import Settings, resolve_practice_options
from .events.status import StreamStatus
from .events.types import KNOWN_EVENTS
from .events.validate import validate
from .findings import Finding, FindingTracker
from .metrics import BaseMetrics
from .rules import ALL_RULES
from .rules.base import Hook, ProbeFailed, Rule, RuleContext
from .state import DUPLICATE_FINAL, TERMINAL, RuntimeState, TaskRecord
from .store import Snapshot, StateStore

log = logging.getLogger("flower_practices.engine")


class Engine:
    """Owns the runtime state, the rules and the findings."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        broker_url: str = "",
        broker_source: str = "app configuration (broker_url)",
        result_backend: str | None = None,
        app: AppInfo | None = None,
        results: Any = None,
        results_unusable: str = "",
        events_supported: bool = True,
        stream_status: StreamStatus | None = None,
        rule_classes: list[type[Rule]] | None = None,
        store: StateStore | None = None,
    ) -> None:
        self.settings = settings or Settings()
        #: Unix time the engine started (flower_practices_start_time_seconds)
        self.started_at = time.time()
        self.lock = threading.RLock()
        self.metrics = BaseMetrics(self.settings.max_series_per_metric,
                                   self.settings.max_exception_classes)
        self.stream_status = stream_status or StreamStatus()
        self.state = RuntimeState(self.settings, self.stream_status.hearing)
        #: called with (etype, event, record) after the state took a task event, before
        #: the rules' hooks: the exposition's accumulators listen here
        self.task_listeners: list[Callable[[str, dict, TaskRecord], None]] = [
            self.metrics.listener(self.state)]
        if app is not None:
            self.state.default_queue = app.default_queue
            # declared queues stay tracked even while idle and unconsumed
            self.state.keep_queues.update(app.queues)
            self.state.rate_limited = frozenset(
                name for name, task in app.tasks.items() if task.rate_limit)
            self.state.routes.bind_all(app.bindings)
        self.findings = FindingTracker()
        self.ctx = RuleContext(
            settings=self.settings, state=self.state, metrics=self.metrics,
            broker_url=broker_url, broker_source=broker_source,
            result_backend=result_backend, app=app, results=results,
            results_unusable=results_unusable,
            events_supported=events_supported,
        )
        self.rules: list[Rule] = []
        self.disabled: dict[str, str] = {}
        self.rule_errors: dict[str, int] = {}
        self.probe_errors: dict[str, int] = {}
        self.last_evaluation_seconds = 0.0
        self.last_evaluation_at = 0.0
        self._rule_options: dict[str, dict[str, Any]] = {}
        for cls in rule_classes if rule_classes is not None else ALL_RULES:
            options = resolve_practice_options(
                cls.id, cls.defaults, self.settings.practice_options(cls.id))
            self._rule_options[cls.id] = options
            if options.get("enabled", True) is False:
                self.disabled[cls.id] = "disabled in configuration"
                continue
            self.rules.append(cls(self.ctx, options))
        # (rule id, hook) pairs per event type; observe() guards each call inline
        self._hooks: dict[str, tuple[tuple[str, Hook], ...]] = {}
        per_type: dict[str, list[tuple[str, Hook]]] = {t: [] for t in KNOWN_EVENTS}
        for rule in self.rules:
            for etype, hook in rule.hooks().items():
                per_type[etype].append((rule.id, hook))
        self._hooks = {t: tuple(h) for t, h in per_type.items()}
        #: the same hooks without their rule ids (the hot loop), and each hook's rule
        self._hook_calls = {t: tuple(hook for _, hook in h) for t, h in per_type.items()}
        self._hook_owner: dict[Hook, str] = {
            hook: rule_id for h in per_type.values() for rule_id, hook in h}
        self.store = store
        if store is not None:
            self.restore_state(store.load())

    # -- hot path ------------------------------------------------------------------------
    def observe(self, event: Any) -> None:
        """Feed one raw event (a dict as Celery sends it). Never raises."""
        self.observe_many((event,))

    def observe_many(self, events: Iterable[Any], *, cleaned: bool = False) -> None:
        """Feed raw events in order, as :meth:`observe` each, under one hold of the lock
        (the events of one message, a batch of Flower's tap). ``cleaned``: their text
        fields went through :func:`~.events.sanitize.clean_event` already (Flower's
        tap), so validation does not check them again. Never raises."""
        status = self.stream_status
        known = self._hooks
        hooks_of = self._hook_calls
        state = self.state
        apply = state.apply
        listeners = self.task_listeners
        # the usual case, the exposition's accumulator alone, called directly
        listener = listeners[0] if len(listeners) == 1 else None
        with self.lock:
            for event in events:
                status.events += 1
                etype = validate(event, status, known, cleaned)
                if etype is None:
                    continue
                try:
                    rec = apply(etype, event)
                    if rec is not None:
                        if rec is DUPLICATE_FINAL:
                            status.decode_error("duplicate_final")
                            continue
                        if listener is not None:
                            listener(etype, event, rec)
                        else:
                            for each in listeners:
                                each(etype, event, rec)
                except Exception:  # a field of an unexpected type deep in the event
                    status.decode_error("bad_field")
                    log.debug("state update failed for %s", etype, exc_info=True)
                    continue
                for hook in hooks_of[etype]:
                    try:
                        hook(event, rec)
                    except Exception:
                        self._rule_failed(hook)
                if rec is not None and (rec.straggler or etype in TERMINAL):
                    state.forget(rec)

    def _rule_failed(self, hook: Hook) -> None:
        """Count a hook that raised (logged once per rule); called from ``except``."""
        rule_id = self._hook_owner[hook]
        n = self.rule_errors.get(rule_id, 0)
        self.rule_errors[rule_id] = n + 1
        if n == 0:
            log.exception("rule %s failed on an event; counted in "
                          "flower_practices_rule_errors_total (logged once)", rule_id)

    # -- periodic ------------------------------------------------------------------------
    def evaluate(self, now: float | None = None) -> None:
        """Run every rule's evaluation and update findings (off the hot path).

        Two phases, so that a slow or vanished Redis never blocks :meth:`observe` or the
        HTTP handlers (which take ``lock``, on Flower's IOLoop too):

        1. each rule's :meth:`~Rule.prepare` runs *without* the lock (the rule does its
           I/O there, taking the lock only briefly); :class:`ProbeFailed` is counted in
           ``probe_errors`` and the rule is still evaluated on what it already has;
        2. under the lock, each rule's :meth:`~Rule.evaluate` yields what holds now and
           the findings are updated; with a state store, a snapshot of the findings and
           the rules' memory is taken;
        3. without the lock, the snapshot is written to the state file if it changed
           (:mod:`flower_practices.store`).

        A rule that raises in either phase is counted in ``rule_errors`` (logged once)
        and its conditions are *unknown* this round, not false -- as are those of a rule
        that judges silence (``Rule.judges_silence``) while the event stream is down: its
        findings are kept as they were (``last_seen`` and ``count`` not refreshed), but
        each still clears ``clear_after_seconds`` after it was last seen, so a rule that
        keeps failing cannot hold findings forever, while a single failed round does not
        clear (and then re-raise) them.
        """
        now = time.time() if now is None else now
        started = time.perf_counter()
        failed = {rule.id for rule in self.rules if not self._prepare_rule(rule, now)}
        with self.lock:
            # back from a blind window: what was reserved before it is not believed
            self.state.settle()
            deaf = self.state.hearing.deaf  # the stream is down: silence means nothing
            for rule in self.rules:
                options = self._rule_options[rule.id]
                severity = self.severity(rule.id)
                clear_after = options.get("clear_after_seconds",
                                          self.settings.clear_after_seconds)
                if rule.id in failed or (deaf and rule.judges_silence):
                    self.findings.expire(rule.id, now, clear_after)
                    continue
                try:
                    conditions = list(rule.evaluate(now))
                except Exception:
                    self._evaluation_failed(rule.id, "evaluate")
                    self.findings.expire(rule.id, now, clear_after)
                    continue
                if rule.task_ignore is not None:  # [practices.<id>] ignore_tasks
                    conditions = [c for c in conditions
                                  if not rule.task_ignore.ignored(c.task)]
                self.findings.update(rule.id, severity, conditions, now, clear_after,
                                     _Labels(self.state), rule.occurrences)
                self._refute_restored(rule, now)
            # task events still waiting for the task-sent they overtook
            self.metrics.flush_deferred(now)
            # after the rules (lost_task must see a record before it ages out)
            self.state.sweep(now)
            self.last_evaluation_at = now
            snapshot = self._snapshot(now) if self.store is not None else None
            self.last_evaluation_seconds = time.perf_counter() - started
        if snapshot is not None:  # the file I/O outside the lock (written if changed)
            self.store.save(snapshot)

    # -- persistence (flower_practices.store) --------------------------------------------
    def restore_state(self, snapshot: Snapshot, now: float | None = None) -> None:
        """Bring back findings and rule memory saved before a restart (at start-up)."""
        now = time.time() if now is None else now
        with self.lock:
            for rule in self.rules:
                data = snapshot.memory.get(rule.id)
                if data is None:
                    continue
                try:
                    rule.restore_memory(data, now)
                except Exception:
                    log.warning("could not restore the saved memory of rule %s; it starts "
                                "empty", rule.id, exc_info=True)
            severities = {rule.id: self.severity(rule.id) for rule in self.rules}
            n = self.findings.restore(snapshot.findings, now, _Labels(self.state), severities)
            by_id = {rule.id: rule for rule in self.rules}
            for finding in self.findings.active():
                if finding.restored_until and finding.queue:
                    # the queue is known again at once, so the probes measure it and its
                    # rule can confirm the finding (it may never see a task-sent to it)
                    self.state.queue(finding.queue)
                if finding.restored_until:
                    try:
                        finding.restored_until = by_id[finding.practice].restore_hold(
                            finding, now)
                    except Exception:
                        log.warning("rule %s failed to judge a restored finding",
                                    finding.practice, exc_info=True)
        if n:
            log.info("restored %d finding(s) saved at %s", n,
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snapshot.saved_at)))

    def _snapshot(self, now: float) -> Snapshot:
        """What to save, taken under the lock (cheap: findings are bounded)."""
        memory: dict[str, Any] = {}
        for rule in self.rules:
            try:
                data = rule.memory()
            except Exception:
                self._evaluation_failed(rule.id, "save its memory")
                continue
            if data is not None:
                memory[rule.id] = data
        return Snapshot(findings=self.findings.snapshot(), memory=memory, saved_at=now)

    def _refute_restored(self, rule: Rule, now: float) -> None:
        """Drop restored findings of ``rule`` that its fresh data positively refutes, or
        whose task its ``ignore_tasks`` now matches."""
        ignore = rule.task_ignore
        for finding in self.findings.restored(rule.id):
            try:
                if (ignore is not None and ignore.ignored(finding.task)) \
                        or rule.refutes(finding, now):
                    self.findings.drop(finding.key)
            except Exception:
                self._evaluation_failed(rule.id, "judge a restored finding")

    def severity(self, rule_id: str) -> str:
        """The practice's effective severity (configured, else the catalogue's)."""
        return self._rule_options.get(rule_id, {}).get("severity") or practice(rule_id).severity

    def _prepare_rule(self, rule: Rule, now: float) -> bool:
        """Run ``rule.prepare`` without the lock; False if the rule itself failed."""
        try:
            rule.prepare(now, self.lock)
        except ProbeFailed as exc:  # the rule logged it and backs off
            self.count_probe_error(exc.probe)
        except Exception:
            with self.lock:
                self._evaluation_failed(rule.id, "prepare")
            return False
        return True

    def _evaluation_failed(self, rule_id: str, phase: str) -> None:
        """Count a rule whose evaluation raised (logged once per rule); call under the
        lock, from ``except``."""
        n = self.rule_errors.get(rule_id, 0)
        self.rule_errors[rule_id] = n + 1
        if n == 0:
            log.exception("rule %s failed to %s; counted in "
                          "flower_practices_rule_errors_total (logged once); its findings "
                          "clear clear_after_seconds after last seen", rule_id, phase)

    # -- probes (flower_practices.probes): the one way they write into the state ----------
    def queues_to_probe(self) -> list[str]:
        """Queues known from events, the app's configuration and workers' active_queues
        (at most ``max_queues``)."""
        names: dict[str, None] = {}
        app = self.ctx.app
        if app is not None:
            names[app.default_queue] = None
            names.update(dict.fromkeys(app.queues))
            names.update(dict.fromkeys(t.queue for t in app.tasks.values() if t.queue))
        with self.lock:
            names.update(dict.fromkeys(self.state.known_queue_names()))
        names.pop("", None)
        return list(names)[: self.settings.max_queues]

    def apply_worker_probes(self, samples: Mapping[str, Any]) -> None:
        """Workers' answers to remote control: hostname -> sample with ``queues``,
        ``prefetch`` and ``concurrency`` (a ``probes.workers.WorkerSample``)."""
        with self.lock:
            for hostname, sample in samples.items():
                self.state.probed_worker(hostname, sample.queues, sample.prefetch,
                                         sample.concurrency)
                self.state.routes.bind_all(getattr(sample, "bindings", ()))

    def apply_queue_probes(self, samples: Mapping[str, Any], now: float, *,
                           consumers_from_workers: bool) -> None:
        """Queue lengths (and RabbitMQ's consumer counts): queue -> sample with
        ``lengths``, ``total`` and ``consumers``
        (a ``probes.queues.QueueSample``). Where the broker counts
        no consumers, a queue's are the live workers whose active_queues include it."""
        with self.lock:
            consuming = self.state.consumers_by_queue(now) if consumers_from_workers else {}
            for name, sample in samples.items():
                consumers = consuming.get(name, 0) if consumers_from_workers \
                    else sample.consumers
                self.state.probed_queue(name, sample.lengths, sample.total, consumers, now)

    def count_probe_error(self, probe: str) -> None:
        with self.lock:
            self.probe_errors[probe] = self.probe_errors.get(probe, 0) + 1

    # -- reporting -----------------------------------------------------------------------
    def view(self, now: float) -> EngineView:
        """What exposition reads, in one place; call under ``lock`` (the counters and
        findings are the live objects, not copies: read them before releasing it)."""
        state = self.state
        state.settle()  # back from a blind window: the reserved counts start over
        lengths, consumers = state.queue_gauges()
        ups, busy = state.worker_gauges(now)
        return EngineView(
            findings=self.findings.active(), metrics=self.metrics, stream=self.stream_status,
            queue_lengths=lengths, queue_consumers=consumers,
            queue_reserved=state.reserved_gauges(now), workers_up=ups,
            workers_busy=busy, probe_errors=self.probe_errors, rule_errors=self.rule_errors,
            label_overflow=state.label_overflow(), tasks_evicted=state.tasks.evicted,
            state_corrections=state.corrections(),
            tracked_tasks=len(state.tasks), last_evaluation_seconds=self.last_evaluation_seconds,
            last_evaluation_at=self.last_evaluation_at, started_at=self.started_at,
            state_errors=self.store.errors if self.store is not None else {},
            queue_oldest_age=state.oldest_pending_ages(now),
        )

    def coverage(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for rule in self.rules:
            try:
                out[rule.id] = rule.coverage()
            except Exception as exc:  # pragma: no cover - defensive
                out[rule.id] = f"unsupported: coverage check failed ({type(exc).__name__})"
        for rule_id, why in self.disabled.items():
            out[rule_id] = f"unsupported: {why}"
        for p in PRACTICES:
            out.setdefault(p.id, "unsupported: no rule implements this practice yet")
        return {p.id: out[p.id] for p in PRACTICES}

    def practices_payload(self) -> dict[str, Any]:
        """The ``/api/practices`` findings, practices and coverage (built by
        :func:`flower_practices.api.practices_document`, which both front ends serve)."""
        from .api import practices_document

        return practices_document(self, stream=False)


@dataclass(slots=True)
class EngineView:
    """The engine as exposition sees it (see :meth:`Engine.view`)."""

    findings: list[Finding]
    metrics: BaseMetrics
    stream: StreamStatus
    #: (queue label, priority) -> messages; queue label -> consumers (records sharing a
    #: capped label summed)
    queue_lengths: dict[tuple[str, str], float]
    queue_consumers: dict[str, float]
    #: queue label -> tasks received by live workers, not started (every known queue)
    queue_reserved: dict[str, float]
    #: worker label -> 1/0; worker label -> [reserved, running] of the live ones
    workers_up: dict[str, float]
    workers_busy: dict[str, list[int]]
    probe_errors: dict[str, int]
    rule_errors: dict[str, int]
    label_overflow: dict[str, int]
    #: kind -> tasks whose state was corrected unheard (``RuntimeState.corrections``)
    state_corrections: dict[str, int]
    tasks_evicted: int
    tracked_tasks: int
    last_evaluation_seconds: float
    #: when the last finished rules evaluation started (0: none yet)
    last_evaluation_at: float
    started_at: float
    state_errors: dict[str, int]
    #: queue label -> age (s) of its oldest task sent (no eta) and not yet received, 0
    #: when none, for every known queue (``RuntimeState.oldest_pending_ages``)
    queue_oldest_age: dict[str, float] = field(default_factory=dict)


class _Labels:
    """Adapter giving FindingTracker the state's label caps."""

    __slots__ = ("queue_label", "task_label", "worker_label")

    def __init__(self, state: RuntimeState) -> None:
        self.queue_label = state.queue_label
        self.task_label = state.task_label
        self.worker_label = state.worker_label


__all__ = ["BY_ID", "Engine", "EngineView"]
