"""events_disabled baselines and warm-up, orm_object_argument's repr scanner, the violation
gauge and the per-family series cap, and range checks on configuration values.

Everything runs through the real Engine (state, rules, findings, collector) fed synthetic
Celery events with chosen timestamps; nothing is mocked and nothing is timed.
"""

from __future__ import annotations

import math
import time

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flower_practices.bounded import OTHER
from flower_practices.config import (
    ConfigError,
    Settings,
    resolve_practice_options,
    settings_from_mapping,
)
from flower_practices.engine import Engine
from flower_practices.metrics import BaseMetrics, PracticesCollector
from flower_practices.rules import ALL_RULES
from flower_practices.rules.events_disabled import EventsDisabled
from flower_practices.rules.orm_object_argument import OrmObjectArgument, find_models

T0 = 1_800_000_000.0


def engine(rule, settings: Settings | None = None, **options) -> Engine:
    settings = settings or Settings(clear_after_seconds=0.0)
    settings.practices[rule.id] = options
    return Engine(settings, broker_url="redis://127.0.0.1:6379/0", rule_classes=[rule])


def ev(etype: str, ts: float, **fields) -> dict:
    return {"type": etype, "timestamp": ts, "local_received": ts, **fields}


def heartbeat(host: str, ts: float, processed: int, active: int = 0) -> dict:
    return ev("worker-heartbeat", ts, hostname=host, freq=2.0, processed=processed,
              active=active)


def findings(e: Engine, practice: str) -> list[dict]:
    return [f for f in e.practices_payload()["findings"] if f["practice"] == practice]


def samples(e: Engine, name: str) -> list:
    registry = CollectorRegistry()
    registry.register(PracticesCollector(e))
    return [s for fam in text_string_to_metric_families(generate_latest(registry).decode())
            for s in fam.samples if s.name == name]


# -- events_disabled, worker side: baselines reset on restart ---------------------------------
def run_with_events(e: Engine, host: str, ts: float, first: int, last: int) -> float:
    """Tasks ``first+1..last`` with their task events, one heartbeat after each."""
    for n in range(first + 1, last + 1):
        e.observe(ev("task-sent", ts, uuid=f"{host}-{ts}-{n}", name="t.a", queue="celery"))
        e.observe(ev("task-received", ts, uuid=f"{host}-{ts}-{n}", name="t.a", hostname=host))
        e.observe(ev("task-started", ts, uuid=f"{host}-{ts}-{n}", hostname=host))
        e.observe(ev("task-succeeded", ts, uuid=f"{host}-{ts}-{n}", hostname=host,
                     runtime=0.1))
        e.observe(heartbeat(host, ts, n))
        ts += 2
    return ts


def run_blind(e: Engine, host: str, ts: float, first: int, last: int) -> float:
    """Heartbeats only: ``processed`` rises from ``first`` to ``last`` by 2 per heartbeat."""
    for n in range(first, last + 1, 2):
        e.observe(heartbeat(host, ts, n))
        ts += 2
    return ts


@pytest.mark.parametrize("announce", [True, False], ids=["worker-online", "counter-drop"])
def test_worker_restarted_without_events_is_flagged(announce: bool) -> None:
    e = engine(EventsDisabled, min_processed=3, window_seconds=60.0)
    e.observe(ev("worker-online", T0, hostname="w@h", freq=2.0, processed=0, active=0))
    ts = run_with_events(e, "w@h", T0 + 2, 0, 20)  # first life: -E, 20 tasks seen started
    e.evaluate(ts)
    assert findings(e, "events_disabled") == []
    # restarted without -E: Celery's processed counter starts again from 0
    e.observe(ev("worker-offline", ts, hostname="w@h"))
    if announce:
        e.observe(ev("worker-online", ts + 1, hostname="w@h", freq=2.0, processed=0,
                     active=0))
    ts = run_blind(e, "w@h", ts + 2, 0, 10)
    e.evaluate(ts)
    [f] = findings(e, "events_disabled")
    assert f["worker"] == "w@h"
    # judged on processed as of the previous heartbeat (8): the last one's events may
    # still be buffered in the worker
    assert f["evidence"]["processed_without_task_events"] == 8
    assert f["evidence"]["task_started_events_from_worker"] == 0


def test_task_events_a_busy_worker_still_buffers_do_not_look_blind() -> None:
    """A heartbeat can count tasks whose (buffered) task events arrive just after it."""
    e = engine(EventsDisabled, min_processed=3, window_seconds=60.0)
    ts = run_with_events(e, "w@h", T0, 0, 10)
    # 24 tasks done, counted by the heartbeat before their events were flushed
    e.observe(heartbeat("w@h", ts, 34))
    e.evaluate(ts)
    assert findings(e, "events_disabled") == []
    # the buffered events arrive, then the next heartbeat
    for n in range(11, 35):
        uuid = f"late-{n}"
        e.observe(ev("task-received", ts, uuid=uuid, name="t.a", hostname="w@h"))
        e.observe(ev("task-started", ts, uuid=uuid, hostname="w@h"))
        e.observe(ev("task-succeeded", ts, uuid=uuid, hostname="w@h", runtime=0.1))
    e.observe(heartbeat("w@h", ts + 2, 34))
    e.evaluate(ts + 2)
    assert findings(e, "events_disabled") == []
    assert e.metrics.violations_total == {}


def test_tasks_run_while_the_stream_was_down_are_not_blind() -> None:
    e = engine(EventsDisabled, min_processed=3, window_seconds=60.0)
    ts = run_with_events(e, "w@h", T0, 0, 10)
    # the exporter lost the broker for a minute: 40 tasks ran, their events were lost
    ts += 60
    e.observe(heartbeat("w@h", ts, 50))
    ts = run_with_events(e, "w@h", ts + 2, 50, 55)
    e.evaluate(ts)
    assert findings(e, "events_disabled") == []


def test_worker_tallies_are_bounded_by_max_workers() -> None:
    e = engine(EventsDisabled, Settings(max_workers=3, clear_after_seconds=0.0),
               min_processed=3)
    for i in range(10):
        run_blind(e, f"w{i}@h", T0, 0, 10)
    e.evaluate(T0 + 12)
    rule = e.rules[0]
    assert len(rule.workers) <= 3
    assert {f["worker"] for f in findings(e, "events_disabled")} == {"w0@h", "w1@h", "w2@h"}


# -- events_disabled, client side: warm-up and ageing ------------------------------------------
def received_without_sent(e: Engine, name: str, ts: float, n: int, host: str = "w@h") -> None:
    for i in range(n):
        e.observe(ev("task-received", ts + i * 0.01, uuid=f"{name}-{ts}-{i}", name=name,
                     hostname=host))


def keep_alive(e: Engine, start: float, end: float, host: str = "w@h") -> None:
    """Heartbeats every 2 s (the stream is up and the worker alive)."""
    ts = start
    while ts <= end:
        e.observe(heartbeat(host, ts, 0))
        ts += 2


def test_backlog_sent_before_the_exporter_started_is_not_flagged() -> None:
    e = engine(EventsDisabled, min_received=3, warmup_seconds=60.0)
    keep_alive(e, T0, T0 + 50)
    # a backlog published before we listened drains during the warm-up
    received_without_sent(e, "old.task", T0 + 1, 40)
    e.evaluate(T0 + 50)
    assert findings(e, "events_disabled") == []
    keep_alive(e, T0 + 52, T0 + 200)
    e.evaluate(T0 + 200)
    assert findings(e, "events_disabled") == []
    assert e.metrics.violations_total == {}


def test_received_without_sent_after_the_warm_up_is_flagged_then_ages_out() -> None:
    e = engine(EventsDisabled, min_received=3, warmup_seconds=60.0, window_seconds=100.0)
    keep_alive(e, T0, T0 + 80)
    received_without_sent(e, "legacy.task", T0 + 30, 2)   # during the warm-up: not counted
    received_without_sent(e, "legacy.task", T0 + 70, 3)
    e.evaluate(T0 + 80)
    [f] = findings(e, "events_disabled")
    assert f["task"] == "legacy.task"
    assert f["evidence"]["received_without_sent"] == 3
    assert f["evidence"]["task_sent_events_seen"] == 0
    [total] = [n for key, n in e.metrics.violations_total.items()
               if key[0] == "events_disabled"]
    assert total == 3
    # the name is never received again: its count ages out over window_seconds
    keep_alive(e, T0 + 82, T0 + 200)
    e.evaluate(T0 + 200)
    assert findings(e, "events_disabled") == []
    assert e.rules[0].unsent == {}


def test_a_stream_outage_restarts_the_warm_up() -> None:
    e = engine(EventsDisabled, min_received=3, warmup_seconds=60.0)
    keep_alive(e, T0, T0 + 100)
    # the stream was down for five minutes: tasks published then have no task-sent seen
    keep_alive(e, T0 + 400, T0 + 420)
    received_without_sent(e, "t.during_outage", T0 + 405, 10)
    e.evaluate(T0 + 420)
    assert findings(e, "events_disabled") == []
    keep_alive(e, T0 + 422, T0 + 480)
    received_without_sent(e, "t.during_outage", T0 + 470, 3)
    e.evaluate(T0 + 480)
    [f] = findings(e, "events_disabled")
    assert f["evidence"]["received_without_sent"] == 3


def test_a_task_sent_event_clears_the_name() -> None:
    e = engine(EventsDisabled, min_received=3, warmup_seconds=0.0)
    keep_alive(e, T0, T0 + 10)
    received_without_sent(e, "t.x", T0 + 1, 5)
    e.evaluate(T0 + 10)
    assert len(findings(e, "events_disabled")) == 1
    e.observe(ev("task-sent", T0 + 11, uuid="s1", name="t.x", queue="celery"))
    e.evaluate(T0 + 12)
    assert findings(e, "events_disabled") == []


# -- orm_object_argument: Django __str__ text is not structure ---------------------------------
@pytest.mark.parametrize(("text", "keyword", "expected"), [
    ("(<User: O'Brien>, <Order: #1>)", False, [("0", "User"), ("1", "Order")]),
    ("(<User: Smith, John>, <Order: #1>)", False, [("0", "User"), ("1", "Order")]),
    ("(<Order: <Token: abc> pending>, 5)", False, [("0", "Order")]),
    ("{'user': <User: O'Brien, \"Pat\">, 'order': <Order: 7>}", True,
     [("user", "User"), ("order", "Order")]),
    ("(<Rule: a < b>, <User: x>)", False, [("0", "Rule"), ("1", "User")]),  # unbalanced '<'
    ("(<Cmp: a > b>, <User: x>)", False, [("0", "Cmp"), ("1", "User")]),
    ("(1, <QuerySet [<User: a>, <User: b>]>)", False, [("1", "User"), ("1", "User")]),
    ("(<User: x>, <app.models.Order object at 0x7f3a>)", False,
     [("0", "User"), ("1", "Order")]),
])
def test_find_models_skips_django_str_text(text: str, keyword: bool,
                                           expected: list[tuple[str, str]]) -> None:
    assert find_models(text, 4096, keyword) == expected


def test_find_models_is_bounded_on_unclosed_django_reprs() -> None:
    text = "(" + "<A: <" * 5000 + ")"
    assert find_models(text, 4096, False) == [("0", "A")]
    text = "(" + "<A: <B: x> " * 2000 + ")"
    found = find_models(text, 4096, False)
    assert found and all(cls == "A" for _, cls in found) and len(found) <= 20


def test_orm_evidence_through_the_engine_has_no_values() -> None:
    e = engine(OrmObjectArgument)
    e.observe(ev("task-sent", T0, uuid="u1", name="t.mail", queue="q",
                 args="(<User: O'Brien, Pat <pat@example.com>>, <Order: #42>)",
                 kwargs="{'coupon': <Coupon: SPRING, 10%>}"))
    e.evaluate(T0 + 1)
    [f] = findings(e, "orm_object_argument")
    assert f["evidence"]["arguments"] == [
        {"argument": "0", "class": "User"}, {"argument": "1", "class": "Order"},
        {"argument": "coupon", "class": "Coupon"}]
    assert "Brien" not in str(f) and "pat@" not in str(f) and "SPRING" not in str(f)


# -- celery_practice_violation: one series per label set ---------------------------------------
def test_violation_gauge_has_one_series_per_capped_label_set() -> None:
    e = engine(OrmObjectArgument, Settings(max_task_names=1, clear_after_seconds=0.0))
    for i in range(4):
        e.observe(ev("task-sent", T0, uuid=f"u{i}", name=f"t.n{i}", queue="q",
                     args="(<User: x>,)"))
    e.evaluate(T0 + 1)
    assert len(findings(e, "orm_object_argument")) == 4  # the API keeps every finding
    series = samples(e, "celery_practice_violation")
    labelsets = [tuple(sorted(s.labels.items())) for s in series]
    assert len(labelsets) == len(set(labelsets)) == 2
    assert {s.labels["task"] for s in series} == {"t.n0", OTHER}
    assert all(s.value == 1.0 for s in series)


# -- per-family series cap ---------------------------------------------------------------------
def test_base_metrics_fold_new_series_past_the_cap() -> None:
    m = BaseMetrics(max_series_per_metric=5)
    for i in range(20):
        m.count_task_event("task-sent", f"t{i}", f"q{i % 3}")
        m.observe_runtime(f"t{i}", "q", "succeeded", 0.1)
        m.count_violation("retry_storm", "q", f"t{i}")
    m.count_task_event("task-failed", "t19", "q1")
    assert len(m.task_events) == 7  # 5 + (sent, other, other) + (failed, other, other)
    assert m.task_events[("sent", OTHER, OTHER)] == 15
    assert m.task_events[("failed", OTHER, OTHER)] == 1
    assert m.task_events[("sent", "t0", "q0")] == 1
    # a histogram label set is 21 series: 5 // 21 rounds up to one label set
    assert m.runtime[(OTHER, OTHER, "succeeded")].count == 19 and len(m.runtime) == 2
    assert m.violations_total[("retry_storm", OTHER, OTHER)] == 15
    assert m.series_overflow == 15 + 1 + 19 + 15
    # existing series keep counting past the cap
    m.count_task_event("task-sent", "t0", "q0")
    assert m.task_events[("sent", "t0", "q0")] == 2 and m.series_overflow == 50


def test_runtime_histogram_cap_counts_exported_series() -> None:
    e = Engine(Settings(max_series_per_metric=63), broker_url="redis://x/0", rule_classes=[])
    for i in range(10):
        e.metrics.observe_runtime(f"t{i}", "q", "succeeded", 0.5)
    exported = samples(e, "celery_task_runtime_seconds_bucket") + \
        samples(e, "celery_task_runtime_seconds_sum") + \
        samples(e, "celery_task_runtime_seconds_count")
    # 3 label sets of 21 series fit in 63; the rest folds into one more label set
    assert len(exported) == 4 * 21
    assert {s.labels["task"] for s in exported} == {"t0", "t1", "t2", OTHER}


def test_default_series_cap_bounds_the_engine_and_is_exported() -> None:
    e = Engine(Settings(max_task_names=200, max_queues=100), broker_url="redis://x/0",
               rule_classes=[])
    n = 0
    for t in range(200):
        for q in range(60):
            e.observe({"type": "task-sent", "uuid": f"u{n}", "name": f"t{t}",
                       "queue": f"q{q}", "timestamp": T0})
            n += 1
    cap = Settings().max_series_per_metric
    assert len(e.metrics.task_events) == cap + 1
    [overflow] = [s for s in samples(e, "flower_practices_label_overflow_total")
                  if s.labels["label"] == "series"]
    assert overflow.value == 200 * 60 - cap
    sent = {(s.labels["task"], s.labels["queue"]): s.value
            for s in samples(e, "celery_task_events_total")}
    assert sent[(OTHER, OTHER)] == 200 * 60 - cap


def test_max_series_per_metric_setting_reaches_the_engine() -> None:
    e = Engine(settings_from_mapping({"exporter": {"max_series_per_metric": 3}}),
               broker_url="redis://x/0", rule_classes=[])
    for i in range(10):
        e.observe({"type": "task-sent", "uuid": f"u{i}", "name": f"t{i}", "queue": "q",
                   "timestamp": T0})
    assert len(e.metrics.task_events) == 4


# -- configuration ranges ----------------------------------------------------------------------
def practice_error(practice: str, key: str, value: object) -> str:
    [rule] = [r for r in ALL_RULES if r.id == practice]
    with pytest.raises(ConfigError) as info:
        resolve_practice_options(practice, rule.defaults, {key: value}, "fp.toml")
    return str(info.value)


@pytest.mark.parametrize(("practice", "key", "value"), [
    ("events_disabled", "window_seconds", 0),
    ("retry_storm", "window_seconds", 0.0),
    ("queue_starvation", "window_seconds", -5),
    ("lost_task", "grace_seconds", -1),
    ("missing_time_limit", "max_runtime_seconds", 0),
    ("unread_results", "sample_every", 0),
    ("unread_results", "max_pending", -3),
    ("unread_results", "sample_every", 2.5),
    ("events_disabled", "min_received", 0),
    ("orm_object_argument", "max_scan_chars", 0),
    ("unread_results", "min_share", 0),
    ("unread_results", "min_share", 1.5),
    ("queue_starvation", "percentile", 0),
    ("queue_starvation", "percentile", 100.5),
    ("retry_storm", "window_seconds", math.inf),
    ("retry_storm", "zero_delay_seconds", math.nan),
    ("lost_task", "clear_after_seconds", -1),
    ("orm_object_argument", "ignore_classes", [1, 2]),
])
def test_out_of_range_practice_values_name_the_key(practice: str, key: str,
                                                   value: object) -> None:
    message = practice_error(practice, key, value)
    assert f"[practices.{practice}] {key}" in message and "fp.toml" in message


@pytest.mark.parametrize(("practice", "key", "value"), [
    ("lost_task", "grace_seconds", 0),
    ("lost_task", "offline_grace_seconds", 0.0),
    ("unread_results", "tolerance_seconds", 0),
    ("unread_results", "min_share", 1),
    ("queue_starvation", "percentile", 100),
    ("retry_storm", "zero_delay_seconds", 0),
    ("events_disabled", "warmup_seconds", 0),
    ("lost_task", "clear_after_seconds", 0),
    ("unread_results", "sample_every", 1),
])
def test_meaningful_boundary_values_are_accepted(practice: str, key: str,
                                                 value: object) -> None:
    [rule] = [r for r in ALL_RULES if r.id == practice]
    assert resolve_practice_options(practice, rule.defaults, {key: value})[key] == value


@pytest.mark.parametrize(("key", "value"), [
    ("evaluation_interval", 0), ("probe_interval", -1.0), ("clear_after_seconds", -0.5),
    ("max_task_names", 0), ("max_tracked_tasks", -1), ("max_series_per_metric", 0),
    ("max_workers", 1.5), ("evaluation_interval", math.nan),
])
def test_out_of_range_exporter_values_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"exporter": {key: value}}, "fp.toml")
    assert f"[exporter] {key}" in str(info.value)


def test_zero_window_is_a_config_error_not_an_error_per_event() -> None:
    bad = {"retry_storm": {"window_seconds": 0}}
    with pytest.raises(ConfigError, match=r"\[practices.retry_storm\] window_seconds"):
        settings_from_mapping({"practices": bad})  # at load time, naming the file
    with pytest.raises(ConfigError, match="window_seconds"):
        Engine(Settings(practices=bad), broker_url="redis://x/0")  # Settings built in code


def test_records_sharing_the_other_label_export_one_summed_series() -> None:
    """Queues/workers past a label cap share ``__other__``: one series each, summed."""
    from flower_practices.state import QueueRecord, TaskRecord, WorkerRecord

    e = engine(EventsDisabled)
    now = time.time()
    for name, length, consumers in (("q1", 3, 1), ("q2", 4, 2)):
        q = e.state.queues[name] = QueueRecord(name, OTHER)
        q.lengths, q.consumers = {"0": length}, consumers
    for host in ("w1@h", "w2@h"):
        w = e.state.workers[host] = WorkerRecord(host, OTHER)
        w.online, w.last_seen, w.freq = True, now, 2.0
        w.reserved_tasks = {"r": TaskRecord("r")}
        w.running_tasks = {"a": TaskRecord("a"), "b": TaskRecord("b")}
    lengths = samples(e, "celery_queue_length")
    assert [(s.labels, s.value) for s in lengths] == [({"queue": OTHER, "priority": "0"}, 7)]
    assert [s.value for s in samples(e, "celery_queue_consumers")] == [3]
    assert [(s.labels, s.value) for s in samples(e, "celery_worker_up")] == [
        ({"worker": OTHER}, 1.0)]
    assert [s.value for s in samples(e, "celery_worker_tasks_reserved")] == [2]
    assert [s.value for s in samples(e, "celery_worker_tasks_running")] == [4]


def test_prefetch_starvation_reads_worker_activity_from_the_state() -> None:
    """The rule keeps no per-worker table (nothing to outlive churning hostnames): each
    worker's last task event is the state's ``last_task_at``, gone with the worker."""
    from flower_practices.rules.prefetch_starvation import PrefetchStarvation

    e = engine(PrefetchStarvation)
    for n in range(3):
        host = f"pod-{n}@h"
        e.observe(heartbeat(host, T0, 0))
        e.observe(ev("task-started", T0 + n, uuid=f"u{n}", hostname=host))
        e.observe(ev("task-succeeded", T0 + n + 1, uuid=f"u{n}", hostname=host,
                     runtime=0.1))
    [rule] = e.rules
    assert rule.hooks() == {}
    assert {h: w.last_task_at for h, w in e.state.workers.items()} == {
        "pod-0@h": T0 + 1, "pod-1@h": T0 + 2, "pod-2@h": T0 + 3}
    e.evaluate(T0 + 3 * 3600)  # the pods are long gone: the sweep forgets them
    assert e.state.workers == {}


@pytest.mark.parametrize("received_first", [False, True])
def test_retry_storm_counts_each_offending_retry_exactly_once(received_first: bool) -> None:
    """A retry counts once whether it is seen over the limit, without delay, or both,
    whatever the order of its task-retried and task-received events."""
    from flower_practices.rules.retry_storm import RetryStorm

    # one retry per first attempt is half the attempts: a count storm over a share of 0.4
    e = engine(RetryStorm, max_retries_per_window=2, max_retry_share=0.4,
               window_seconds=300.0)
    ids = ("u1", "u2", "u3", "u4")
    for n, uuid in enumerate(ids):
        ts = T0 + n
        e.observe(ev("task-sent", ts, uuid=uuid, name="t.flaky", queue="q"))
        e.observe(ev("task-received", ts, uuid=uuid, name="t.flaky", hostname="w@h"))
        e.observe(ev("task-started", ts + 0.1, uuid=uuid, hostname="w@h"))
    # each task retries once with no delay; the retries' messages come back late
    # (or, with received_first, before their task-retried events)
    retried = [ev("task-retried", T0 + 10 + n, uuid=u, hostname="w@h")
               for n, u in enumerate(ids)]
    received = [ev("task-received", T0 + 10.2 + n, uuid=u, name="t.flaky", hostname="w@h",
                   retries=1) for n, u in enumerate(ids)]
    for event in (received + retried if received_first else retried + received):
        e.observe(event)
    e.evaluate(T0 + 20)
    # 4 zero-delay retries (two of them also over the limit of 2): 4 offending retries
    assert e.metrics.violations_total == {("retry_storm", "q", "t.flaky"): 4}


# -- celery_worker_up: a clean goodbye is not a worker down -----------------------------------
def test_worker_up_drops_a_worker_that_went_offline_but_keeps_a_vanished_one_at_zero() -> None:
    e = Engine(Settings())
    now = time.time()
    for host in ("w-clean", "w-killed"):
        e.observe(ev("worker-online", now - 100, hostname=host, freq=2.0))
        e.observe(heartbeat(host, now - 99, 0))
    e.observe(ev("worker-offline", now - 98, hostname="w-clean", freq=2.0))
    ups = {s.labels["worker"]: s.value for s in samples(e, "celery_worker_up")}
    # w-killed's heartbeats stopped 99 s ago (freq 2 s): down, and says so; w-clean left
    assert ups == {"w-killed": 0.0}
    e.observe(heartbeat("w-clean", time.time(), 0))  # back: exported again
    ups = {s.labels["worker"]: s.value for s in samples(e, "celery_worker_up")}
    assert ups == {"w-killed": 0.0, "w-clean": 1.0}


def _task_counts(e: Engine) -> dict[tuple[str, str, str], int]:
    return dict(e.metrics.task_events)


def bare_engine() -> Engine:
    """No rules: only the state and the exposition's accumulators."""
    return Engine(Settings(), broker_url="redis://127.0.0.1:6379/0", rule_classes=[])


def test_events_overtaking_their_task_sent_are_counted_under_its_queue() -> None:
    """A worker's task-received/started may arrive before the producer's task-sent:
    once a task-sent was seen for the name, they wait (briefly) for it and are counted
    under the queue it names, not under queue=""."""
    e = bare_engine()
    e.observe(ev("task-sent", T0, uuid="a", name="proj.job", queue="q1"))
    e.observe(ev("task-received", T0 + 1, uuid="b", name="proj.job", hostname="w@h"))
    e.observe(ev("task-started", T0 + 1.1, uuid="b", hostname="w@h"))
    assert not any(k[2] == "" for k in _task_counts(e))  # held back, not counted yet
    e.observe(ev("task-sent", T0 + 0.9, uuid="b", name="proj.job", queue="q2"))
    e.observe(ev("task-succeeded", T0 + 2, uuid="b", hostname="w@h", runtime=0.9))
    counts = _task_counts(e)
    assert counts == {("sent", "proj.job", "q1"): 1, ("sent", "proj.job", "q2"): 1,
                      ("received", "proj.job", "q2"): 1, ("started", "proj.job", "q2"): 1,
                      ("succeeded", "proj.job", "q2"): 1}
    assert e.metrics._deferred == {}


def test_held_back_events_are_counted_when_the_task_sent_never_comes() -> None:
    e = bare_engine()
    e.observe(ev("task-sent", T0, uuid="a", name="proj.job", queue="q1"))
    # this producer has sent events off: its task's events wait, then count without queue
    e.observe(ev("task-received", T0 + 1, uuid="c", name="proj.job", hostname="w@h"))
    e.evaluate(T0 + 1.5)
    assert ("received", "proj.job", "") not in _task_counts(e)
    e.evaluate(T0 + 1 + 2.5)  # DEFER_SECONDS passed
    assert _task_counts(e)[("received", "proj.job", "")] == 1
    # ... and a task that ends before its task-sent came: counted at its end
    e.observe(ev("task-received", T0 + 5, uuid="d", name="proj.job", hostname="w@h"))
    e.observe(ev("task-succeeded", T0 + 6, uuid="d", hostname="w@h", runtime=1.0))
    counts = _task_counts(e)
    assert counts[("received", "proj.job", "")] == 2
    assert counts[("succeeded", "proj.job", "")] == 1
    assert e.metrics._deferred == {}


def test_names_never_sent_with_task_sent_are_counted_at_once() -> None:
    e = bare_engine()
    e.observe(ev("task-received", T0, uuid="x", name="legacy.job", hostname="w@h"))
    assert _task_counts(e) == {("received", "legacy.job", ""): 1}
    assert e.metrics._deferred == {}
