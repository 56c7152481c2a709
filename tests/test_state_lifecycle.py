"""Lifecycle of the runtime state: lost and orphaned task records, worker restarts, worker
and queue churn under the caps, and hostile field values (wrong types, non-finite numbers).

Everything runs through the real :class:`Engine` fed synthetic, real-shaped Celery event
dicts on a fixed synthetic clock (``evaluate(now)`` / ``sweep(now)`` take it explicitly),
so no test depends on wall-clock timing.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from flower_practices.bounded import OTHER, LabelCap, LRUDict
from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.metrics import PracticesCollector, render_text
from flower_practices.probes.poller import apply_worker_samples
from flower_practices.probes.workers import WorkerSample
from flower_practices.state import RESERVED, RUNNING, RuntimeState

T0 = 1_700_000_000.0
H = "w1@h"


def engine(practices: dict | None = None, **settings) -> Engine:
    return Engine(Settings(practices=practices or {}, **settings), broker_url="redis://x/0")


def feed(eng: Engine, *events: dict) -> None:
    for event in events:
        eng.observe(event)


def ev(etype: str, t: float, **fields) -> dict:
    return {"type": etype, "timestamp": t, **fields}


def beat(host: str, t: float, **fields) -> dict:
    """A heartbeat (``active``: the tasks it runs as Celery counts them, default 0 -- which
    ends the runs that sent no outcome, as after ``Ignore``)."""
    return ev("worker-heartbeat", t, hostname=host, freq=2.0, **{"active": 0, **fields})


def started(uuid: str, t: float, host: str = H, name: str = "proj.job",
            queue: str = "q") -> list[dict]:
    """task-sent, task-received and task-started of one task at ``t``."""
    return [ev("task-sent", t, uuid=uuid, name=name, queue=queue, hostname="client@h"),
            ev("task-received", t, uuid=uuid, name=name, hostname=host, retries=0),
            ev("task-started", t, uuid=uuid, hostname=host)]


def findings(eng: Engine, practice: str) -> list[dict]:
    return [f for f in eng.practices_payload()["findings"] if f["practice"] == practice]


def violations(eng: Engine, practice: str) -> int:
    return sum(n for (p, _, _), n in eng.metrics.violations_total.items() if p == practice)


def scrape(eng: Engine) -> str:
    registry = CollectorRegistry()
    registry.register(PracticesCollector(eng))
    return render_text(registry).decode()


def counts(eng: Engine, host: str = H) -> tuple[int, int]:
    worker = eng.state.workers[host]
    return worker.reserved, worker.running


def test_lost_task_evidence_names_at_most_ten_task_ids() -> None:
    eng = engine({"lost_task": {"offline_grace_seconds": 30, "window_seconds": 600}})
    feed(eng, ev("worker-online", T0, hostname=H))
    for i in range(25):
        feed(eng, *started(f"id{i:02d}", T0 + 1))
    feed(eng, ev("worker-offline", T0 + 5, hostname=H))
    eng.evaluate(T0 + 60)
    [f] = findings(eng, "lost_task")
    assert f["evidence"]["lost_tasks"] == 25
    ids = f["evidence"]["task_ids"]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert set(ids) <= {f"id{i:02d}" for i in range(25)}


# -- 1. lost tasks: reported once, restarts, late completion, ageing ---------------------------
def test_lost_task_is_counted_once_and_not_rediscovered_after_its_window() -> None:
    eng = engine({"lost_task": {"offline_grace_seconds": 30, "window_seconds": 600}},
                 clear_after_seconds=60)
    feed(eng, ev("worker-online", T0, hostname=H), *started("u1", T0 + 1))
    feed(eng, ev("worker-offline", T0 + 5, hostname=H))
    eng.evaluate(T0 + 60)
    [f] = findings(eng, "lost_task")
    assert f["worker"] == H and f["evidence"]["lost_tasks"] == 1
    assert f["evidence"]["task_ids"] == ["u1"]
    assert violations(eng, "lost_task") == 1
    assert eng.state.tasks["u1"].state == "LOST"
    for k in range(1, 8):  # seven windows later
        eng.evaluate(T0 + 60 + k * 600)
    assert violations(eng, "lost_task") == 1
    assert findings(eng, "lost_task") == []  # the window passed: it cleared and stays so


RESTARTS = {
    "worker-online": [ev("worker-online", T0 + 20, hostname=H)],
    "offline-then-heartbeat": [ev("worker-offline", T0 + 15, hostname=H),
                               beat(H, T0 + 20, processed=0)],
    "processed-counter-reset": [beat(H, T0 + 20, processed=0)],
}


@pytest.mark.parametrize("restart", list(RESTARTS))
def test_task_started_before_a_restart_is_lost_once_and_not_a_long_run(restart: str) -> None:
    eng = engine({"missing_time_limit": {"max_runtime_seconds": 10}})
    feed(eng, beat(H, T0, processed=5), *started("u1", T0 + 1))
    feed(eng, *RESTARTS[restart])
    for t in (T0 + 100, T0 + 2000, T0 + 6000):
        feed(eng, beat(H, t, processed=1))  # the new process is alive and well
        eng.evaluate(t)
        eng.state.sweep(t)
        assert findings(eng, "missing_time_limit") == [], t
    assert violations(eng, "lost_task") == 1
    assert violations(eng, "missing_time_limit") == 0
    assert counts(eng) == (0, 0)


@pytest.mark.parametrize("restart", list(RESTARTS))
def test_missing_time_limit_skips_restart_orphans_even_without_lost_task(restart: str) -> None:
    eng = engine({"lost_task": {"enabled": False},
                  "missing_time_limit": {"max_runtime_seconds": 10}})
    feed(eng, beat(H, T0, processed=5), *started("u1", T0 + 1))
    feed(eng, *RESTARTS[restart], beat(H, T0 + 100, processed=1))
    eng.evaluate(T0 + 100)
    assert findings(eng, "missing_time_limit") == []


def test_task_seen_just_before_the_first_heartbeat_is_still_a_long_run() -> None:
    """The exporter may see a task-started before any heartbeat of its worker: that is
    not a restart, and the long run must still be reported."""
    eng = engine({"missing_time_limit": {"max_runtime_seconds": 10}})
    feed(eng, *started("u1", T0), beat(H, T0 + 1, processed=3, active=1))
    feed(eng, beat(H, T0 + 100, processed=3, active=1))
    eng.evaluate(T0 + 100)
    [f] = findings(eng, "missing_time_limit")
    assert f["evidence"]["running_now_over_limit"] == 1
    assert findings(eng, "lost_task") == []


def test_late_completion_of_a_lost_task_keeps_labels_and_counts_exact() -> None:
    eng = engine({"lost_task": {"offline_grace_seconds": 30}})
    feed(eng, ev("worker-online", T0, hostname=H), *started("u1", T0 + 1))
    feed(eng, ev("worker-offline", T0 + 5, hostname=H))
    eng.evaluate(T0 + 60)
    assert eng.state.tasks["u1"].state == "LOST"
    feed(eng, ev("task-succeeded", T0 + 61, uuid="u1", hostname=H, runtime=60.0))
    assert "u1" not in eng.state.tasks
    assert counts(eng) == (0, 0)
    hist = eng.metrics.runtime[("proj.job", "q", "succeeded")]
    assert (hist.count, hist.sum) == (1, 60.0)
    rule = next(r for r in eng.rules if r.id == "lost_task")
    eng.evaluate(T0 + 62)  # the rule sees the late completion at its next evaluation
    assert "u1" not in rule.lost


def test_lost_task_redelivered_to_another_worker_is_reserved_there() -> None:
    eng = engine({"lost_task": {"offline_grace_seconds": 30}})
    feed(eng, ev("worker-online", T0, hostname=H), ev("worker-online", T0, hostname="w2@h"),
         *started("u1", T0 + 1))
    feed(eng, ev("worker-offline", T0 + 5, hostname=H))
    eng.evaluate(T0 + 60)
    feed(eng, ev("task-received", T0 + 70, uuid="u1", name="proj.job", hostname="w2@h"))
    assert eng.state.tasks["u1"].state == "RECEIVED"
    assert counts(eng, "w2@h") == (1, 0)
    feed(eng, ev("task-started", T0 + 71, uuid="u1", hostname="w2@h"),
         ev("task-succeeded", T0 + 72, uuid="u1", hostname="w2@h", runtime=1.0))
    assert counts(eng, "w2@h") == (0, 0)
    assert violations(eng, "lost_task") == 1


def test_waiting_record_whose_events_were_missed_ages_out() -> None:
    """A task-sent whose task-started was never seen stops being 'oldest waiting'."""
    eng = engine(clear_after_seconds=60)
    feed(eng, beat(H, T0))
    apply_worker_samples(eng, {H: WorkerSample(queues=("q",))})
    feed(eng, ev("task-sent", T0, uuid="u1", name="proj.job", queue="q"))
    feed(eng, beat(H, T0 + 120))
    eng.evaluate(T0 + 120)
    [f] = findings(eng, "queue_starvation")
    assert f["evidence"]["tasks_waiting"] == 1
    later = T0 + RuntimeState.waiting_ttl + 1
    feed(eng, beat(H, later - 1))
    eng.state.sweep(later)
    assert "u1" not in eng.state.tasks
    for t in (later, later + 61):
        feed(eng, beat(H, t))
        eng.evaluate(t)
    assert findings(eng, "queue_starvation") == []


def test_a_recent_waiting_record_is_kept_by_the_sweep() -> None:
    eng = engine()
    feed(eng, ev("task-sent", T0, uuid="u1", name="proj.job", queue="q"))
    eng.state.sweep(T0 + RuntimeState.waiting_ttl - 1)
    assert eng.state.tasks["u1"].state == "SENT"


def test_started_record_on_a_dead_worker_ages_out() -> None:
    eng = engine({"lost_task": {"enabled": False}})
    feed(eng, beat(H, T0), *started("u1", T0 + 1))
    eng.state.sweep(T0 + 100)  # dead, but not for long: kept
    assert "u1" in eng.state.tasks
    eng.state.sweep(T0 + RuntimeState.orphan_ttl + 100)
    assert "u1" not in eng.state.tasks


def test_started_record_whose_completion_was_missed_ages_out_and_releases_its_count() -> None:
    eng = engine()
    feed(eng, beat(H, T0), *started("u1", T0))
    assert counts(eng) == (0, 1)
    almost = T0 + RuntimeState.running_ttl - 60
    feed(eng, beat(H, almost, active=1))
    eng.state.sweep(almost)
    assert counts(eng) == (0, 1) and "u1" in eng.state.tasks
    later = T0 + RuntimeState.running_ttl + 1
    feed(eng, beat(H, later, active=1))
    eng.state.sweep(later)
    assert "u1" not in eng.state.tasks
    assert counts(eng) == (0, 0)


def test_lost_records_are_forgotten_after_the_orphan_ttl() -> None:
    eng = engine({"lost_task": {"offline_grace_seconds": 30}})
    feed(eng, ev("worker-online", T0, hostname=H), *started("u1", T0 + 1),
         ev("worker-offline", T0 + 5, hostname=H))
    eng.evaluate(T0 + 60)
    eng.state.sweep(T0 + 61)
    assert eng.state.tasks["u1"].state == "LOST"
    eng.state.sweep(T0 + 61 + RuntimeState.orphan_ttl + 1)
    assert "u1" not in eng.state.tasks


# -- 2. label fields of the wrong type ---------------------------------------------------------
BAD_VALUES = [123, 4.5, True, ["w"], {"a": 1}, b"bytes"]


@pytest.mark.parametrize("field", ["hostname", "name", "queue", "routing_key"])
@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_non_string_label_fields_are_counted_and_metrics_keep_rendering(
        field: str, value: object) -> None:
    eng = engine()
    feed(eng, beat(H, T0))
    base = {"uuid": "u1", "name": "proj.job", "queue": "q", "hostname": H}
    for etype in ("task-sent", "task-received", "task-started", "task-succeeded"):
        eng.observe(ev(etype, T0 + 1, **{**base, field: value}))
    status = eng.stream_status
    assert status.decode_errors["bad_field"] == 4
    assert eng.rule_errors == {}
    state = eng.state
    assert all(type(k) is str and type(w.label) is str for k, w in state.workers.items())
    assert all(type(k) is str and type(q.label) is str for k, q in state.queues.items())
    assert all(type(n) is str for n in state.task_names)
    for key in eng.metrics.task_events:
        assert all(type(v) is str for v in key)
    # every event still counted, and /metrics renders
    assert sum(eng.metrics.task_events.values()) == 4
    text = scrape(eng)
    assert "celery_task_events_total" in text


def test_bad_queue_falls_back_to_routing_key() -> None:
    eng = engine()
    feed(eng, ev("task-sent", T0, uuid="u1", name="proj.job", queue=7, routing_key="rk"))
    assert eng.state.tasks["u1"].queue == "rk"
    assert "rk" in eng.state.queues
    assert eng.stream_status.decode_errors["bad_field"] == 1


def test_empty_or_missing_hostname_is_unknown_not_an_error() -> None:
    eng = engine()
    feed(eng, ev("task-received", T0, uuid="u1", name="proj.job", hostname=""),
         ev("task-started", T0, uuid="u1"))
    assert eng.state.workers == {}
    assert eng.stream_status.decode_errors["bad_field"] == 0
    assert eng.state.tasks["u1"].state == "STARTED"


# -- 3. per-worker reserved/running counts ------------------------------------------------------
def test_retry_with_sent_events_does_not_leak_running() -> None:
    eng = engine()
    feed(eng, beat(H, T0), *started("u1", T0 + 1))
    assert counts(eng) == (0, 1)
    for _ in range(3):  # a retry: its task-sent comes before task-retried
        feed(eng, ev("task-sent", T0 + 2, uuid="u1", name="proj.job", queue="q", retries=1),
             ev("task-retried", T0 + 2, uuid="u1", hostname=H))
        assert counts(eng) == (0, 0)
        feed(eng, ev("task-received", T0 + 3, uuid="u1", name="proj.job", hostname=H),
             ev("task-started", T0 + 4, uuid="u1", hostname=H))
        assert counts(eng) == (0, 1)
    feed(eng, ev("task-succeeded", T0 + 5, uuid="u1", hostname=H, runtime=1.0))
    assert counts(eng) == (0, 0)


def test_task_sent_after_task_received_does_not_leak_reserved() -> None:
    eng = engine()
    feed(eng, beat(H, T0),
         ev("task-received", T0, uuid="u1", name="proj.job", hostname=H),
         ev("task-sent", T0, uuid="u1", name="proj.job", queue="q"))
    assert eng.state.tasks["u1"].state == "RECEIVED"
    assert counts(eng) == (1, 0)
    feed(eng, ev("task-started", T0 + 1, uuid="u1", hostname=H))
    assert counts(eng) == (0, 1)
    feed(eng, ev("task-succeeded", T0 + 2, uuid="u1", hostname=H, runtime=1.0))
    assert counts(eng) == (0, 0)
    hist = eng.metrics.wait["q"]
    assert (hist.count, hist.sum) == (1, 1.0)  # measured from the late task-sent


def test_task_received_after_task_started_does_not_regress_the_state() -> None:
    eng = engine()
    feed(eng, beat(H, T0), ev("task-started", T0 + 1, uuid="u1", hostname=H),
         ev("task-received", T0, uuid="u1", name="proj.job", hostname=H))
    assert eng.state.tasks["u1"].state == "STARTED"
    assert counts(eng) == (0, 1)
    feed(eng, ev("task-succeeded", T0 + 2, uuid="u1", hostname=H, runtime=1.0))
    assert counts(eng) == (0, 0)


def test_counts_reset_on_offline_and_restart_and_late_events_do_not_underflow() -> None:
    eng = engine()
    feed(eng, beat(H, T0), *started("u1", T0 + 1),
         ev("task-received", T0 + 1, uuid="u2", name="proj.job", hostname=H))
    assert counts(eng) == (1, 1)
    feed(eng, ev("worker-offline", T0 + 2, hostname=H))
    assert counts(eng) == (0, 0)
    feed(eng, ev("worker-online", T0 + 3, hostname=H))
    feed(eng, *started("u3", T0 + 4))
    assert counts(eng) == (0, 1)
    # the old process's late completion must not take the new task's count away
    feed(eng, ev("task-succeeded", T0 + 5, uuid="u1", hostname=H, runtime=4.0))
    assert counts(eng) == (0, 1)
    feed(eng, ev("worker-online", T0 + 6, hostname=H))  # restart without worker-offline
    assert counts(eng) == (0, 0)


def test_evicted_task_record_releases_its_count() -> None:
    eng = engine(max_tracked_tasks=2)
    feed(eng, beat(H, T0), *started("u1", T0))
    feed(eng, ev("task-sent", T0, uuid="u2", name="a", queue="q"),
         ev("task-sent", T0, uuid="u3", name="a", queue="q"))
    assert "u1" not in eng.state.tasks
    assert counts(eng) == (0, 0)


# -- 4. worker and queue churn ------------------------------------------------------------------
def test_dead_workers_make_room_for_new_ones_at_the_cap() -> None:
    eng = engine(max_workers=3)
    feed(eng, *[beat(f"old{i}@h", T0) for i in range(3)],
         ev("worker-offline", T0 + 1, hostname="old0@h"))
    # old1 and old2 expire (no heartbeat for > 2 x freq); old0 said goodbye
    feed(eng, *[beat(f"new{i}@h", T0 + 30) for i in range(3)])
    assert sorted(eng.state.workers) == ["new0@h", "new1@h", "new2@h"]
    assert eng.state.workers_dropped == 0
    assert [w.label for w in eng.state.workers.values()] == ["new0@h", "new1@h", "new2@h"]
    # every record is live now: a fourth worker is dropped and counted, as before
    feed(eng, beat("extra@h", T0 + 31))
    assert "extra@h" not in eng.state.workers
    assert eng.state.label_overflow()["worker"] == 1


def test_worker_churn_does_not_cause_a_false_queue_without_consumer() -> None:
    eng = engine(max_workers=2)
    feed(eng, beat("old0@h", T0), beat("old1@h", T0))
    apply_worker_samples(eng, {"old0@h": WorkerSample(("q",)), "old1@h": WorkerSample(("q",))})
    feed(eng, ev("worker-offline", T0 + 1, hostname="old0@h"),
         ev("worker-offline", T0 + 1, hostname="old1@h"))
    feed(eng, beat("new0@h", T0 + 5))
    apply_worker_samples(eng, {"new0@h": WorkerSample(("q",))})
    feed(eng, ev("task-sent", T0 + 6, uuid="u1", name="proj.job", queue="q"))
    for t in (T0 + 100, T0 + 200, T0 + 300):
        feed(eng, beat("new0@h", t))
        eng.evaluate(t)
    assert findings(eng, "queue_without_consumer") == []


def test_sweep_forgets_long_dead_workers_and_their_up_series() -> None:
    eng = engine()
    feed(eng, beat("gone@h", T0), ev("worker-offline", T0 + 1, hostname="gone@h"),
         beat("expired@h", T0), beat("recent@h", T0))
    later = T0 + RuntimeState.worker_ttl + 10
    feed(eng, ev("worker-offline", later - 5, hostname="recent@h"), beat("live@h", later))
    eng.state.sweep(later)
    assert sorted(eng.state.workers) == ["live@h", "recent@h"]
    text = scrape(eng)
    assert 'worker="gone@h"' not in text and 'worker="expired@h"' not in text
    # recent@h is remembered, but said goodbye (worker-offline): no up series, not "down"
    assert 'celery_worker_up{worker="recent@h"}' not in text
    assert 'celery_worker_up{worker="live@h"}' in text
    # their label slots are free again
    assert eng.state.worker_label.known == {"live@h", "recent@h"}


def test_idle_queues_are_forgotten_and_make_room_at_the_cap() -> None:
    eng = engine(max_queues=2)
    feed(eng, ev("task-sent", T0, uuid="u1", name="a", queue="q1"),
         ev("task-sent", T0 + 1, uuid="u2", name="a", queue="q2"))
    # both recent: a third queue is dropped and counted
    feed(eng, ev("task-sent", T0 + 2, uuid="u3", name="a", queue="q3"))
    assert sorted(eng.state.queues) == ["q1", "q2"]
    assert eng.state.queues_dropped == 1
    later = T0 + RuntimeState.queue_ttl + 10
    feed(eng, ev("task-sent", later - 5, uuid="u4", name="a", queue="q2"),
         ev("task-sent", later, uuid="u5", name="a", queue="q4"))
    assert sorted(eng.state.queues) == ["q2", "q4"]  # q1 was idle: evicted
    assert eng.state.queues_dropped == 1


def test_sweep_forgets_idle_queues_but_keeps_busy_consumed_and_default_ones() -> None:
    eng = engine()
    state = eng.state
    feed(eng, beat(H, T0))  # queues made by probes date from the last event
    for name in ("idle", "celery", "backlog", "consumed", "recent"):
        state.queue(name)
    state.queues["backlog"].length = 5
    later = T0 + RuntimeState.queue_ttl + 10
    feed(eng, beat(H, later))
    apply_worker_samples(eng, {H: WorkerSample(("consumed",))})
    feed(eng, ev("task-sent", later - 1, uuid="u1", name="a", queue="recent"))
    state.sweep(later)
    assert sorted(state.queues) == ["backlog", "celery", "consumed", "recent"]


# -- 5. non-finite numbers ----------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 10**400, "noon"],
                         ids=["nan", "inf", "-inf", "huge-int", "string"])
def test_bad_timestamps_are_replaced_and_counted(bad: object) -> None:
    eng = engine()
    feed(eng, beat(H, bad), *[dict(e, timestamp=bad) for e in started("u1", T0)],
         ev("task-succeeded", bad, uuid="u1", hostname=H))
    assert eng.stream_status.decode_errors["bad_field"] == 5
    assert eng.rule_errors == {}
    rec = eng.state.tasks.get("u1")
    assert rec is None  # completed and forgotten like any other task
    assert math.isfinite(eng.state.last_event_at)
    assert math.isfinite(eng.state.workers[H].last_seen)
    for hist in [*eng.metrics.runtime.values(), *eng.metrics.wait.values()]:
        assert math.isfinite(hist.sum) and hist.sum >= 0
    eng.evaluate(T0 + 10)
    scrape(eng)


@pytest.mark.parametrize("runtime", [math.nan, math.inf, -math.inf, -5.0], ids=repr)
def test_non_finite_or_negative_runtime_is_never_observed(runtime: float) -> None:
    eng = engine({"missing_time_limit": {"max_runtime_seconds": 10}})
    feed(eng, beat(H, T0), *started("u1", T0),
         ev("task-succeeded", T0 + 2, uuid="u1", hostname=H, runtime=runtime))
    hist = eng.metrics.runtime[("proj.job", "q", "succeeded")]
    assert (hist.count, hist.sum) == (1, 2.0)  # falls back to started -> succeeded
    feed(eng, ev("task-succeeded", T0 + 2, uuid="u2", hostname=H, runtime=runtime))
    assert ("", "", "succeeded") not in eng.metrics.runtime  # no start seen: no runtime
    eng.evaluate(T0 + 3)
    assert findings(eng, "missing_time_limit") == []
    assert eng.rule_errors == {}


def test_non_finite_heartbeat_freq_and_local_received_are_ignored() -> None:
    eng = engine()
    feed(eng, beat(H, T0) | {"freq": math.inf},
         ev("task-sent", T0, uuid="u1", name="a", queue="q", local_received=math.nan))
    worker = eng.state.workers[H]
    assert worker.freq == 2.0
    assert not eng.state.worker_alive(worker, T0 + 3600)
    assert math.isfinite(eng.state.last_event_at)  # replaced by the time it arrived
    assert eng.stream_status.decode_errors["bad_field"] == 1


# -- bounded helpers used above ----------------------------------------------------------------
def test_lru_put_returns_what_it_evicted() -> None:
    lru: LRUDict[str, int] = LRUDict(1)
    assert lru.put("a", 1) is None
    assert lru.put("a", 2) is None
    assert lru.put("b", 3) == 2
    assert lru.evicted == 1


def test_label_cap_release_frees_a_slot() -> None:
    cap = LabelCap("worker", 1)
    assert cap("a") == "a" and cap("b") == OTHER
    cap.release("a")
    cap.release("never-seen")
    assert cap("b") == "b" and cap.overflow == 1


def test_sweep_runs_at_most_once_per_interval() -> None:
    eng = engine()
    feed(eng, ev("task-sent", T0, uuid="u1", name="a", queue="q"))
    late = T0 + RuntimeState.waiting_ttl + 1
    eng.state.sweep(late - 10)  # too early for u1 ...
    assert eng.state.sweep(late) == 0  # ... and the next pass is not due yet
    assert "u1" in eng.state.tasks
    assert eng.state.sweep(late + RuntimeState.sweep_interval) >= 1
    assert "u1" not in eng.state.tasks


# -- invariant: reserved/running are exactly what the records say, whatever the order ---------
_HOSTS = ["w1@h", "w2@h"]
_task_event = st.builds(
    lambda etype, uuid, host, dt, queue, eta: ev(
        etype, T0 + dt, uuid=uuid, hostname=host, name="a", queue=queue,
        **({"eta": "2026-01-01T00:00:00"} if eta else {})),
    st.sampled_from(["task-sent", "task-received", "task-started", "task-succeeded",
                     "task-failed", "task-retried", "task-revoked"]),
    st.sampled_from(["u1", "u2", "u3", "u4"]), st.sampled_from(_HOSTS),
    st.floats(0, 100), st.sampled_from(["q", "r"]), st.booleans())
_worker_event = st.builds(
    lambda etype, host, dt, processed: ev(etype, T0 + dt, hostname=host, freq=2.0,
                                          processed=processed),
    st.sampled_from(["worker-online", "worker-heartbeat", "worker-offline"]),
    st.sampled_from(_HOSTS), st.floats(0, 100), st.integers(0, 5))


#: the event stream back from a blind window (the reserved indexes start over)
_RETURN = st.just({"type": "(stream back)"})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_task_event, _worker_event, _RETURN), max_size=40),
       st.integers(min_value=2, max_value=5), st.booleans())
def test_worker_counts_always_match_the_records(events: list[dict], cap: int,
                                                eager: bool) -> None:
    eng = engine(max_tracked_tasks=cap)
    for event in events:
        if event["type"] == "(stream back)":
            eng.state.hearing.reconnected(T0)
            if eager:  # settled at once (an evaluation, a scrape), else at the next receipt
                eng.state.settle()
        else:
            eng.observe(event)
        state = eng.state
        for host, worker in state.workers.items():
            mine = [r for r in state.tasks.values() if r.hostname == host and (
                (r.counted == RUNNING and r.counted_epoch == worker.epoch)
                or (r.counted == RESERVED and r.counted_epoch == worker.reserved_epoch))]
            assert worker.running == sum(1 for r in mine if r.state == "STARTED")
            assert worker.reserved == sum(1 for r in mine if r.state == "RECEIVED")
            assert len(mine) == worker.running + worker.reserved
            # the per-worker indexes the rules read hold exactly those records
            assert set(worker.running_tasks) == {r.uuid for r in mine if r.state == "STARTED"}
            assert set(worker.reserved_tasks) == {r.uuid for r in mine
                                                  if r.state == "RECEIVED"}
            per_queue: dict = {}
            for r in worker.reserved_tasks.values():
                if r.counted_queue is not None:
                    per_queue[r.counted_queue] = per_queue.get(r.counted_queue, 0) + 1
            assert worker.queue_reserved == per_queue
            for rec in worker.orphans.values():
                assert rec.hostname == host and rec.counted_epoch != worker.epoch
                assert state.tasks.get(rec.uuid) is rec and rec.state == "STARTED"
        for name, queue in state.queues.items():
            assert all(r.state == "SENT" and r.pending and not r.eta and r.queue == name
                       and state.tasks.get(r.uuid) is r for r in queue.pending.values())
        for rec in state.tasks.values():
            if rec.pending and rec.queue in state.queues:
                assert state.queues[rec.queue].pending.get(rec.uuid) is rec
    eng.evaluate(T0 + 200)
    eng.state.sweep(T0 + 200)
    assert eng.rule_errors == {}


# -- late events of a finished task -------------------------------------------------------------
def test_task_retried_after_the_retried_run_failed_counts_under_its_task() -> None:
    """With -P threads, the retried run can fail before the first run's task-retried."""
    eng = engine()
    feed(eng, beat(H, T0),
         ev("task-sent", T0, uuid="u1", name="proj.flaky", queue="q"),
         ev("task-received", T0, uuid="u1", name="proj.flaky", hostname=H),
         ev("task-started", T0 + 1, uuid="u1", hostname=H),
         ev("task-received", T0 + 2, uuid="u1", name="proj.flaky", hostname=H, retries=1),
         ev("task-started", T0 + 2, uuid="u1", hostname=H),
         ev("task-failed", T0 + 3, uuid="u1", hostname=H, exception="ValueError()"),
         ev("task-retried", T0 + 3.1, uuid="u1", hostname=H))
    assert eng.metrics.task_events[("retried", "proj.flaky", "q")] == 1
    assert ("retried", "", "") not in eng.metrics.task_events
    assert "u1" not in eng.state.tasks  # no in-flight record is left behind
    worker = eng.state.workers[H]
    assert (worker.reserved, worker.running) == (0, 0)


def test_a_redelivered_task_starts_a_new_life() -> None:
    eng = engine()
    feed(eng, beat(H, T0),
         ev("task-sent", T0, uuid="u1", name="proj.job", queue="q"),
         ev("task-received", T0, uuid="u1", name="proj.job", hostname=H),
         ev("task-rejected", T0 + 1, uuid="u1", hostname=H),
         ev("task-received", T0 + 2, uuid="u1", hostname=H))
    rec = eng.state.tasks["u1"]
    assert (rec.name, rec.queue, rec.state) == ("proj.job", "q", "RECEIVED")
    assert eng.state.workers[H].reserved == 1


def test_listening_gaps_follow_the_latest_arrival() -> None:
    """The state keeps the silences of at least GAP_SECONDS: an event arriving with an
    earlier time than the latest one is no gap, and a rule needing a longer silence
    picks the last gap longer than its own."""
    from flower_practices.state import GAP_SECONDS

    eng = engine({})
    assert eng.state.listening_since(30.0) is None
    feed(eng, beat(H, T0), beat(H, T0 + 80))
    feed(eng, ev("task-received", T0 + 30, uuid="x", name="proj.job", hostname=H))
    feed(eng, beat(H, T0 + 82))  # 52 s after the previous event, 2 s after the latest
    assert [at for at, _ in eng.state.gaps] == [T0, T0 + 80]
    assert eng.state.listening_since(GAP_SECONDS) == T0 + 80
    assert eng.state.listening_since(100.0) == T0  # no gap that long: the first event
    feed(eng, beat(H, T0 + 82 + GAP_SECONDS - 1))
    assert len(eng.state.gaps) == 2


def test_a_final_event_seen_twice_is_counted_once_and_a_redelivery_is_not_a_duplicate() -> None:
    """Celery 5.7 sends task-failed twice for a run stopped by its hard time limit: the
    second is dropped (``duplicate_final``), not counted as a second failure; a different
    late event, and a redelivered run's own end, still count."""
    eng = engine()
    failed = ev("task-failed", T0 + 2, uuid="u1", hostname=H,
                exception="TimeLimitExceeded(1.5,)")
    feed(eng, *started("u1", T0 + 1), dict(failed), dict(failed))
    assert eng.metrics.task_events[("failed", "proj.job", "q")] == 1
    assert eng.metrics.failures[("proj.job", "q", "TimeLimitExceeded")] == 1
    assert eng.stream_status.decode_errors["duplicate_final"] == 1
    assert "u1" not in eng.state.tasks
    # redelivered (a new task-received: a new life) and failing again: a second failure
    feed(eng, ev("task-received", T0 + 3, uuid="u1", name="proj.job", hostname=H),
         ev("task-started", T0 + 3, uuid="u1", hostname=H), dict(failed, timestamp=T0 + 4))
    assert eng.metrics.task_events[("failed", "proj.job", "q")] == 2
    # a late event of another type still counts under the task's labels
    feed(eng, ev("task-succeeded", T0 + 5, uuid="u1", hostname=H, runtime=0.1))
    assert eng.metrics.task_events[("succeeded", "proj.job", "q")] == 1
    assert eng.stream_status.decode_errors["duplicate_final"] == 1
    assert 'kind="duplicate_final"} 1.0' in scrape(eng)
    # two runs of one id at once (a redelivery while the first run goes on), on the same
    # worker or on two: each run's end counts
    for uuid, second in (("u2", H), ("u3", "w2@h")):
        feed(eng, *started(uuid, T0 + 10), ev("task-received", T0 + 11, uuid=uuid,
                                              name="proj.job", hostname=second),
             ev("task-started", T0 + 11, uuid=uuid, hostname=second),
             ev("task-succeeded", T0 + 12, uuid=uuid, hostname=H, runtime=2.0),
             ev("task-succeeded", T0 + 13, uuid=uuid, hostname=second, runtime=2.0))
    assert eng.metrics.task_events[("succeeded", "proj.job", "q")] == 5
    assert eng.stream_status.decode_errors["duplicate_final"] == 1


def test_a_duplicate_end_behind_a_late_start_is_still_a_duplicate() -> None:
    """A run stopped by its hard time limit whose task-started arrives behind its first
    task-failed (seen on real prefork workers on Redis and RabbitMQ: received, failed,
    started, failed): the late start counts as a start, the second task-failed is
    still the duplicate -- one failure, not two; and two runs' ends around late starts
    are still two."""
    eng = engine()
    failed = ev("task-failed", T0 + 2, uuid="u1", hostname=H,
                exception="TimeLimitExceeded(2,)")
    feed(eng, *started("u1", T0)[:2], dict(failed),
         ev("task-started", T0 + 0.1, uuid="u1", hostname=H), dict(failed))
    assert eng.metrics.task_events[("failed", "proj.job", "q")] == 1
    assert eng.metrics.task_events[("started", "proj.job", "q")] == 1
    assert eng.metrics.failures[("proj.job", "q", "TimeLimitExceeded")] == 1
    assert eng.stream_status.decode_errors["duplicate_final"] == 1
    assert "u1" not in eng.state.tasks
    assert eng.state.workers[H].running == 0
    # a second run (redelivered), its start also late: its end is no duplicate
    feed(eng, ev("task-received", T0 + 5, uuid="u1", name="proj.job", hostname=H),
         dict(failed, timestamp=T0 + 7), ev("task-started", T0 + 5.1, uuid="u1", hostname=H),
         dict(failed, timestamp=T0 + 7))
    assert eng.metrics.task_events[("failed", "proj.job", "q")] == 2
    assert eng.stream_status.decode_errors["duplicate_final"] == 2
    # a late end of another kind after it still counts (not taken for a duplicate)
    feed(eng, ev("task-succeeded", T0 + 8, uuid="u1", hostname=H, runtime=0.1))
    assert eng.metrics.task_events[("succeeded", "proj.job", "q")] == 1


def test_an_end_behind_an_idle_heartbeat_is_counted_once() -> None:
    """A worker's task events are buffered, its heartbeats are not: the heartbeat after a
    run killed by its hard time limit (``active=0``) can arrive before the run's two
    task-failed events (seen on real prefork workers on RabbitMQ). The heartbeat ends the
    run unreported; the first task-failed still counts as its end, the second is its
    duplicate -- one failure, not two."""
    eng = engine()
    failed = ev("task-failed", T0 + 2, uuid="u1", hostname=H,
                exception="TimeLimitExceeded(2,)")
    feed(eng, *started("u1", T0), beat(H, T0 + 2.1), dict(failed),
         dict(failed, timestamp=T0 + 2.001))
    assert eng.state.tasks_ended_unreported == 1
    assert eng.metrics.task_events[("failed", "proj.job", "q")] == 1
    assert eng.metrics.failures[("proj.job", "q", "TimeLimitExceeded")] == 1
    assert eng.stream_status.decode_errors["duplicate_final"] == 1
    assert "u1" not in eng.state.tasks and eng.state.workers[H].running == 0
