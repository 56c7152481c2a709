"""Queue and worker rules fed event sequences directly (edge cases hard to time on brokers).

The real engine, state and rules; the events are what Celery workers and clients send,
with chosen timestamps so that waits of minutes take no time.
"""

from __future__ import annotations

from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.probes.poller import apply_worker_samples
from flower_practices.probes.workers import WorkerSample
from flower_practices.rules.events_disabled import EventsDisabled
from flower_practices.rules.prefetch_starvation import PrefetchStarvation
from flower_practices.rules.queue_starvation import QueueStarvation
from flower_practices.rules.single_default_queue import SingleDefaultQueue

T0 = 1_800_000_000.0


def engine(rule, **options) -> Engine:
    settings = Settings(clear_after_seconds=0.0, practices={rule.id: options})
    return Engine(settings, broker_url="redis://127.0.0.1:6379/0", rule_classes=[rule])


def ev(etype: str, ts: float, **fields) -> dict:
    return {"type": etype, "timestamp": ts, "local_received": ts, **fields}


def heartbeat(host: str, ts: float, processed: int = 0, active: int = 0) -> dict:
    """``active``: the tasks the worker runs, as Celery counts them (0 ends the runs that
    sent no outcome, as after ``Ignore``)."""
    return ev("worker-heartbeat", ts, hostname=host, freq=2.0, processed=processed,
              active=active)


def findings(e: Engine, practice: str) -> list[dict]:
    return [f for f in e.practices_payload()["findings"] if f["practice"] == practice]


def test_eta_tasks_do_not_count_as_starved() -> None:
    e = engine(QueueStarvation, max_wait_seconds=60.0, min_samples=1)
    e.observe(heartbeat("w@h", T0))
    e.observe(ev("task-sent", T0, uuid="eta", name="t.later", queue="q", eta="2027-01-15T08:00"))
    e.observe(ev("task-received", T0 + 1, uuid="eta", name="t.later", hostname="w@h",
                 eta="2027-01-15T08:00"))
    e.observe(ev("task-started", T0 + 100, uuid="eta", hostname="w@h"))
    e.observe(heartbeat("w@h", T0 + 100))
    e.evaluate(T0 + 101)
    assert findings(e, "queue_starvation") == []
    e.observe(ev("task-sent", T0 + 100, uuid="late", name="t.now", queue="q"))
    e.observe(ev("task-started", T0 + 190, uuid="late", hostname="w@h"))
    e.observe(heartbeat("w@h", T0 + 190))
    e.evaluate(T0 + 191)
    [f] = findings(e, "queue_starvation")
    assert f["queue"] == "q" and f["evidence"]["wait_p95_seconds"] == 90.0
    assert f["evidence"]["samples"] == 1  # the eta task's 99 s are not a sample


def test_priority_inversion_is_named_only_when_another_queue_held_the_workers() -> None:
    """A starved queue whose worker ran a few short tasks of another queue (a loaded
    machine) is not blamed on that queue; one whose worker spent the wait on another
    queue's long runs -- finished in the window, or still going -- is."""

    def starved(other_runs: list[tuple[float, float | None]]) -> dict:
        e = engine(QueueStarvation, max_wait_seconds=30.0, min_samples=1)
        e.apply_worker_probes({"w@h": WorkerSample(("q", "bulk"), prefetch=1,
                                                   concurrency=1)})
        e.observe(heartbeat("w@h", T0))
        for i, (start, end) in enumerate(other_runs):
            uuid = f"bulk{i}"
            e.observe(ev("task-sent", T0 + start, uuid=uuid, name="t.bulk", queue="bulk"))
            e.observe(ev("task-received", T0 + start, uuid=uuid, name="t.bulk",
                         hostname="w@h"))
            e.observe(ev("task-started", T0 + start, uuid=uuid, hostname="w@h"))
            if end is not None:
                e.observe(ev("task-succeeded", T0 + end, uuid=uuid, hostname="w@h",
                             runtime=end - start))
        e.observe(ev("task-sent", T0 + 1, uuid="urgent", name="t.urgent", queue="q"))
        e.observe(ev("task-started", T0 + 80, uuid="urgent", hostname="w@h"))
        e.observe(heartbeat("w@h", T0 + 80, active=1))
        e.evaluate(T0 + 81)
        [f] = findings(e, "queue_starvation")
        assert f["queue"] == "q"
        return f

    f = starved([(2.0, 2.1), (40.0, 40.2)])  # 0.3 s of 'bulk' in all
    assert "priority inversion" not in f["summary"], f["summary"]
    assert f["evidence"]["occupied_by"][0]["queue"] == "bulk"  # listed, not blamed
    f = starved([(2.0, 78.0)])  # a 76 s 'bulk' run
    assert "priority inversion" in f["summary"] and "'bulk'" in f["summary"]
    f = starved([(2.0, 40.0), (41.0, None)])  # 38 s finished, one still running
    assert "priority inversion" in f["summary"]
    assert f["evidence"]["occupied_by"][0]["running_now"] == 1
    assert f["evidence"]["occupied_by"][0]["running_seconds"] >= 39.0


def test_worker_finding_clears_once_events_are_enabled() -> None:
    e = engine(EventsDisabled, min_processed=3, window_seconds=10.0)
    for i in range(6):
        e.observe(heartbeat("blind@h", T0 + 2 * i, processed=2 * i))
    e.evaluate(T0 + 11)
    [f] = findings(e, "events_disabled")
    assert f["worker"] == "blind@h"
    # processed as of the previous heartbeat (8): the latest one's events may be in flight
    assert f["evidence"]["processed_without_task_events"] == 8
    # `celery control enable_events`: every new task now has its task-started event.
    ts = T0 + 12
    for n in range(11, 14):
        e.observe(ev("task-sent", ts, uuid=f"u{n}", name="t.a", queue="celery"))
        e.observe(ev("task-received", ts, uuid=f"u{n}", name="t.a", hostname="blind@h"))
        e.observe(ev("task-started", ts, uuid=f"u{n}", hostname="blind@h"))
        e.observe(heartbeat("blind@h", ts, processed=n))
        ts += 2
        e.evaluate(ts)
    [f] = findings(e, "events_disabled")  # still within window_seconds of the last rise
    # 12 processed as of the previous heartbeat, 3 of them with task events
    assert f["evidence"]["processed_without_task_events"] == 9  # no longer growing
    # the next heartbeat settles task 10 (counted blind one heartbeat late), then the
    # count stays put and the finding clears window_seconds later
    for _ in range(7):
        ts += 2
        e.observe(heartbeat("blind@h", ts, processed=13))
        e.evaluate(ts)
    assert findings(e, "events_disabled") == []


def test_prefetch_needs_a_busy_worker_and_an_idle_peer() -> None:
    e = engine(PrefetchStarvation, min_wait_seconds=5.0)
    apply_worker_samples(e, {"a@h": WorkerSample(("q",), prefetch=8, concurrency=2),
                             "b@h": WorkerSample(("q",), prefetch=8, concurrency=2)})
    e.observe(heartbeat("b@h", T0))
    e.observe(heartbeat("a@h", T0))
    for n in range(3):
        e.observe(ev("task-sent", T0, uuid=f"u{n}", name="t.slow", queue="q"))
        e.observe(ev("task-received", T0, uuid=f"u{n}", name="t.slow", hostname="a@h"))
    e.observe(ev("task-started", T0, uuid="u0", hostname="a@h"))
    for t in (T0 + 2, T0 + 4, T0 + 6):
        e.observe(heartbeat("a@h", t, active=1))
        e.observe(heartbeat("b@h", t))
    e.evaluate(T0 + 7)
    assert findings(e, "prefetch_starvation") == []  # a@h still has a free slot (1 of 2)
    e.observe(ev("task-started", T0 + 7, uuid="u1", hostname="a@h"))
    e.evaluate(T0 + 7.5)
    [f] = findings(e, "prefetch_starvation")
    assert (f["queue"], f["worker"]) == ("q", "a@h")
    assert f["evidence"]["idle_workers"] == ["b@h"]
    assert f["evidence"]["reserved_waiting"] == 1
    # the peer picks up work: no longer idle
    e.observe(ev("task-received", T0 + 7.6, uuid="x", name="t.slow", hostname="b@h"))
    e.observe(ev("task-started", T0 + 7.6, uuid="x", hostname="b@h"))
    e.evaluate(T0 + 7.8)
    assert findings(e, "prefetch_starvation") == []


def test_a_second_queue_means_no_single_default_queue() -> None:
    e = engine(SingleDefaultQueue)
    e.observe(ev("task-sent", T0, uuid="a", name="t.a", queue="celery"))
    e.observe(ev("task-sent", T0, uuid="b", name="t.b", routing_key="celery"))
    e.evaluate(T0 + 1)
    [f] = findings(e, "single_default_queue")
    assert f["evidence"]["queue_source"] == "task-sent queue"
    e.observe(ev("task-sent", T0 + 2, uuid="c", name="t.c", queue="bulk"))
    e.evaluate(T0 + 3)
    assert findings(e, "single_default_queue") == []


def test_single_default_queue_waits_for_a_new_workers_queues() -> None:
    """Two workers came online (one consumes ``bulk``) and tasks flow to the default
    queue before remote control told their queues: undecided, nothing reported (seen
    with real workers: tests/test_queue_routing_workload.py). Once the queues are known
    the second queue settles it; a worker that never answers stops deferring after
    ``unanswered_worker_grace_seconds``, and then the default queue alone is reported."""
    e = engine(SingleDefaultQueue)
    for host in ("a@h", "b@h"):
        e.observe(ev("worker-online", T0, hostname=host, freq=2.0))
    e.observe(ev("task-sent", T0 + 0.1, uuid="a", name="t.a", queue="celery"))
    e.observe(ev("task-sent", T0 + 0.2, uuid="b", name="t.b", queue="celery"))
    e.evaluate(T0 + 0.5)
    assert findings(e, "single_default_queue") == []
    e.state.workers["a@h"].active_queues = ("celery",)
    e.state.workers["b@h"].active_queues = ("bulk",)
    e.evaluate(T0 + 1)
    assert findings(e, "single_default_queue") == []
    assert e.metrics.violations_total == {}

    mute = engine(SingleDefaultQueue, unanswered_worker_grace_seconds=30.0)
    mute.observe(ev("worker-online", T0, hostname="m@h", freq=2.0))
    mute.observe(ev("task-sent", T0 + 0.1, uuid="a", name="t.a", queue="celery"))
    mute.observe(ev("task-sent", T0 + 0.2, uuid="b", name="t.b", queue="celery"))
    for t in (T0 + 10, T0 + 20, T0 + 29):
        mute.observe(heartbeat("m@h", t))
        mute.evaluate(t)
        assert findings(mute, "single_default_queue") == []
    mute.observe(heartbeat("m@h", T0 + 31))
    mute.evaluate(T0 + 31)
    [f] = findings(mute, "single_default_queue")
    assert f["evidence"]["queue_source"] == "task-sent queue"
    assert mute.metrics.violations_total[("single_default_queue", "celery", "t.a")] == 1
