"""stalled_consumer and duplicate_delivery on the engine, event by event: the retry and
warm-shutdown semantics, counting, restarts (state file) and the static check on a real
app module. The real-worker tests are in tests/test_consumer_practices.py."""

from __future__ import annotations

import importlib
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

from flower_practices.appinfo import snapshot_app
from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.probes.queues import QueueSample
from flower_practices.probes.workers import WorkerSample
from flower_practices.rules.duplicate_delivery import DuplicateDelivery
from flower_practices.store import StateStore

BROKER = "redis://h/0"


def engine(tmp_path: Path | None = None, **practices: dict) -> Engine:
    store = StateStore(tmp_path, BROKER) if tmp_path is not None else None
    return Engine(Settings(practices=practices, clear_after_seconds=600.0),
                  broker_url=BROKER, store=store)


def heartbeat(eng: Engine, host: str, t: float, active: int = 0) -> None:
    eng.observe({"type": "worker-heartbeat", "hostname": host, "timestamp": t,
                 "local_received": t, "freq": 2.0, "active": active, "processed": 0})


def task(eng: Engine, etype: str, uuid: str, t: float, host: str | None = None,
         **fields: object) -> None:
    event = {"type": etype, "uuid": uuid, "timestamp": t, "local_received": t,
             "name": "proj.job", "queue": "q", **fields}
    if host:
        event["hostname"] = host
    eng.observe(event)


def found(eng: Engine, practice: str) -> list[dict]:
    return [f for f in eng.practices_payload()["findings"] if f["practice"] == practice]


# -- duplicate_delivery ---------------------------------------------------------------------
def test_duplicate_delivery_counts_redeliveries_not_retries_nor_warm_shutdown() -> None:
    eng = engine(duplicate_delivery={"grace_seconds": 5.0})
    t0 = time.time() - 100
    for host in ("w1@h", "w2@h"):
        heartbeat(eng, host, t0)
    # a retry: its task-received (retries=1, on w2) overtakes w1's task-retried
    task(eng, "task-sent", "r", t0, retries=0)
    task(eng, "task-received", "r", t0, "w1@h", retries=0)
    task(eng, "task-started", "r", t0, "w1@h")
    task(eng, "task-sent", "r", t0 + 1, retries=1)
    task(eng, "task-received", "r", t0 + 1, "w2@h", retries=1)
    task(eng, "task-retried", "r", t0 + 1, "w1@h")
    task(eng, "task-started", "r", t0 + 2, "w2@h")
    # a warm shutdown: w1 reserved an ETA task, said goodbye, w2 got the restored message
    task(eng, "task-sent", "s", t0 + 2, retries=0)
    task(eng, "task-received", "s", t0 + 2, "w1@h", retries=0, eta="2030-01-01T00:00:00+00:00")
    task(eng, "task-received", "s", t0 + 3, "w2@h", retries=0)
    eng.observe({"type": "worker-offline", "hostname": "w1@h", "timestamp": t0 + 4,
                 "local_received": t0 + 4})
    # a real duplicate: delivered 3 times to w2, which stays up
    task(eng, "task-sent", "d", t0 + 5, retries=0)
    task(eng, "task-received", "d", t0 + 5, "w2@h", retries=0)
    task(eng, "task-received", "d", t0 + 8, "w2@h", retries=0)
    heartbeat(eng, "w2@h", t0 + 9)
    task(eng, "task-received", "d", t0 + 11, "w2@h", retries=0)
    for _ in range(3):  # the repeated run starts: one more start per delivery, no extra
        task(eng, "task-started", "d", t0 + 12, "w2@h")
    heartbeat(eng, "w2@h", t0 + 12)
    eng.evaluate(t0 + 12)  # within the grace: not judged yet
    assert found(eng, "duplicate_delivery") == []
    heartbeat(eng, "w2@h", t0 + 17)
    eng.evaluate(t0 + 17)
    [f] = found(eng, "duplicate_delivery")
    assert f["task"] == "proj.job" and f["queue"] == "q" and f["count"] == 2
    assert f["evidence"]["task_ids"] == ["d"]
    assert f["evidence"]["seconds_between_deliveries_min"] == 3.0
    assert f["evidence"]["visibility_timeout"] == "unknown (app not loaded)"


def test_duplicate_delivery_counts_an_excused_redelivery_that_finishes_twice() -> None:
    """RabbitMQ: w1's connection drops while it runs an acks_late task; Celery restarts its
    consumer (worker-offline, worker-online), the broker requeues the message to w2. The
    redelivery alone looks like a worker that went away; the first run finishing as well
    shows the task ran twice. A redelivery after a worker really went (one completion)
    stays excused."""
    eng = engine(duplicate_delivery={"grace_seconds": 2.0})
    t0 = time.time() - 100
    for host in ("w1@h", "w2@h"):
        heartbeat(eng, host, t0)
    for uuid in ("x", "lost"):
        task(eng, "task-sent", uuid, t0, retries=0)
        task(eng, "task-received", uuid, t0, "w1@h", retries=0)
        task(eng, "task-started", uuid, t0, "w1@h")
    eng.observe({"type": "worker-offline", "hostname": "w1@h", "timestamp": t0 + 1,
                 "local_received": t0 + 1})
    for uuid in ("x", "lost"):
        task(eng, "task-received", uuid, t0 + 1, "w2@h", retries=0)
        task(eng, "task-started", uuid, t0 + 1, "w2@h")
    heartbeat(eng, "w1@h", t0 + 1.5)  # back online: the consumer reconnected
    eng.evaluate(t0 + 5)
    assert found(eng, "duplicate_delivery") == []  # excused, so far
    task(eng, "task-succeeded", "x", t0 + 6, "w1@h")   # the first run went on
    task(eng, "task-succeeded", "x", t0 + 7, "w2@h")
    task(eng, "task-succeeded", "lost", t0 + 7, "w2@h")  # one completion only
    eng.evaluate(t0 + 8)
    [f] = found(eng, "duplicate_delivery")
    assert f["count"] == 1 and f["evidence"]["task_ids"] == ["x"]
    assert f["evidence"]["first_workers"] == ["w1@h"]
    assert f["evidence"]["redelivered_to"] == ["w2@h"]


def test_duplicate_delivery_table_drops_the_oldest_at_its_cap() -> None:
    """The deliveries table holds ``max_tracked_tasks`` ids, the oldest dropped first (in
    O(1): bench/run.py --only memory shows the cost per event with the table full). A
    redelivery of a dropped id is a first delivery again; one of a kept id still counts."""
    eng = Engine(Settings(max_tracked_tasks=3, clear_after_seconds=600.0,
                          practices={"duplicate_delivery": {"grace_seconds": 2.0}}),
                 broker_url=BROKER)
    [rule] = [r for r in eng.rules if isinstance(r, DuplicateDelivery)]
    t0 = time.time() - 100
    for host in ("w1@h", "w2@h"):
        heartbeat(eng, host, t0)
    for i in range(5):
        task(eng, "task-received", f"t{i}", t0 + i * 0.01, "w1@h", retries=0)
    assert list(rule.deliveries) == ["t2", "t3", "t4"]
    for uuid in ("t0", "t4"):  # t0 was dropped: a first delivery again; t4 is a repeat
        task(eng, "task-received", uuid, t0 + 1, "w2@h", retries=0)
        task(eng, "task-started", uuid, t0 + 1, "w2@h")
    for uuid in ("t0", "t4"):
        task(eng, "task-succeeded", uuid, t0 + 2, "w2@h")
    eng.evaluate(t0 + 8)
    [f] = found(eng, "duplicate_delivery")
    assert f["evidence"]["task_ids"] == ["t4"]


def test_duplicate_delivery_survives_a_restart_without_recount(tmp_path: Path) -> None:
    t0 = time.time() - 100
    eng = engine(tmp_path, duplicate_delivery={"grace_seconds": 1.0})
    heartbeat(eng, "w1@h", t0)
    task(eng, "task-sent", "d", t0, retries=0)
    task(eng, "task-received", "d", t0, "w1@h", retries=0)
    task(eng, "task-received", "d", t0 + 1, "w1@h", retries=0)
    eng.evaluate(t0 + 3)
    [before] = found(eng, "duplicate_delivery")
    assert before["count"] == 1
    again = engine(tmp_path, duplicate_delivery={"grace_seconds": 1.0})
    again.evaluate(t0 + 10)
    [after] = found(again, "duplicate_delivery")
    assert (after["first_seen"], after["count"]) == (before["first_seen"], 1)
    assert after["evidence"]["task_ids"] == ["d"]


def test_duplicate_delivery_static_check_on_a_real_app(tmp_path: Path, monkeypatch) -> None:
    module = tmp_path / "fp_dup_app.py"
    module.write_text(textwrap.dedent("""
        from celery import Celery
        app = Celery("fp_dup_app", broker="redis://127.0.0.1:6379/0", set_as_current=False)
        app.conf.broker_transport_options = {"visibility_timeout": 60}

        @app.task(name="fp_dup_app.remind", bind=True, default_retry_delay=120,
                  autoretry_for=(OSError,))
        def remind(self, n):
            if n:
                raise self.retry(countdown=30)

        @app.task(name="fp_dup_app.long", acks_late=True, time_limit=600)
        def long(n):
            return n

        @app.task(name="fp_dup_app.ok", time_limit=30)
        def ok(n):
            remind.apply_async((n,), countdown=7200)
            remind.apply_async((n,), countdown=5)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        app = importlib.import_module("fp_dup_app").app
        info = snapshot_app(app)
    finally:
        sys.modules.pop("fp_dup_app", None)
    assert info.visibility_timeout == 60.0
    found_ = DuplicateDelivery.static_check(info)
    by_task = {}
    for name, message in found_:
        by_task.setdefault(name, []).append(message)
    assert any("default_retry_delay 120s" in m for m in by_task["fp_dup_app.remind"])
    assert any("acks_late" in m and "600s" in m for m in by_task["fp_dup_app.long"])
    assert "fp_dup_app.ok" not in by_task
    [literal] = by_task[None]  # countdown=7200 only: 30 and 5 are below 60
    assert f"{module}:" in literal and "apply_async(countdown=7200)" in literal
    # the transport default (3600 s) when nothing is set; nothing on RabbitMQ
    info.visibility_timeout = None
    assert [m for t, m in DuplicateDelivery.static_check(info) if t is None]
    info.broker_url = "amqp://guest@h//"
    assert DuplicateDelivery.static_check(info) == []


# -- stalled_consumer -----------------------------------------------------------------------
def stall(eng: Engine, t0: float, start: int, end: int, lengths: callable,
          concurrency: int = 2, active: int = 0) -> None:
    """Heartbeats, worker and queue probes and an evaluation every second."""
    for s in range(start, end):
        now = t0 + s
        heartbeat(eng, "w1@h", now, active=active)
        eng.apply_worker_probes({"w1@h": WorkerSample(("q",), 8, concurrency)})
        eng.apply_queue_probes({"q": QueueSample(lengths={"0": lengths(s)})}, now,
                               consumers_from_workers=True)
        eng.evaluate(now)


def test_stalled_consumer_fires_not_when_saturated_and_survives_a_restart(
        tmp_path: Path) -> None:
    opts = {"threshold_seconds": 10.0}
    t0 = time.time() - 1000
    eng = engine(tmp_path, stalled_consumer=opts)
    heartbeat(eng, "w1@h", t0)
    task(eng, "task-sent", "a", t0)
    task(eng, "task-received", "a", t0, "w1@h", retries=0)
    task(eng, "task-started", "a", t0, "w1@h")
    task(eng, "task-succeeded", "a", t0, "w1@h")
    # saturated: the pool (1) is busy by the heartbeats' count: nothing reported
    stall(eng, t0, 1, 20, lambda s: 1 + s // 2, concurrency=1, active=1)
    assert found(eng, "stalled_consumer") == []
    # free slots and nothing received: reported threshold_seconds after it was last busy
    stall(eng, t0, 20, 29, lambda s: 1 + s // 2)
    assert found(eng, "stalled_consumer") == []
    stall(eng, t0, 29, 32, lambda s: 1 + s // 2)
    [f] = found(eng, "stalled_consumer")
    assert f["queue"] == "q" and f["severity"] == "critical"
    assert f["evidence"]["stalled_workers"][0]["worker"] == "w1@h"
    assert f["evidence"]["stalled_workers"][0]["pool_size"] == 2
    growth = f["evidence"]["queue_growth"]
    assert growth >= 1 and f["count"] == growth
    # restart: the finding and the counted length are kept, nothing counted twice
    again = engine(tmp_path, stalled_consumer=opts)
    [restored] = found(again, "stalled_consumer")
    assert (restored["first_seen"], restored["count"]) == (f["first_seen"], f["count"])
    stall(again, t0, 40, 52, lambda s: 16)  # same length: no new occurrence
    [f2] = found(again, "stalled_consumer")
    assert f2["first_seen"] == f["first_seen"] and f2["count"] == f["count"] + 0
    stall(again, t0, 52, 54, lambda s: 18)  # +2 messages while stalled
    [f3] = found(again, "stalled_consumer")
    assert f3["count"] == f["count"] + 2


def test_stalled_consumer_on_rabbitmq_lists_a_worker_that_never_answered_by_its_receipts(
        ) -> None:
    """On RabbitMQ a zombie's remote control shares its dead connection: a worker whose
    ``active_queues`` the exporter never learned still lists the queue it took tasks
    from; a worker that took nothing from the queue does not."""
    eng = Engine(Settings(practices={"stalled_consumer": {"threshold_seconds": 10.0}},
                          clear_after_seconds=600.0), broker_url="amqp://h//")
    t0 = time.time() - 1000
    for host in ("w1@h", "w2@h"):
        heartbeat(eng, host, t0)
    task(eng, "task-sent", "a", t0)
    task(eng, "task-received", "a", t0, "w1@h", retries=0)
    task(eng, "task-started", "a", t0, "w1@h")
    task(eng, "task-succeeded", "a", t0, "w1@h")
    for s in range(1, 16):  # no worker ever answers inspect; RabbitMQ counts 1 consumer
        now = t0 + s
        for host in ("w1@h", "w2@h"):
            heartbeat(eng, host, now)
        eng.apply_queue_probes({"q": QueueSample(lengths={"": 1 + s // 2}, consumers=1)},
                               now, consumers_from_workers=False)
        eng.evaluate(now)
    [f] = found(eng, "stalled_consumer")
    ev = f["evidence"]
    assert ev["listing_workers"] == ["w1@h"] == ev["queues_known_from_receipts"]
    assert [w["worker"] for w in ev["stalled_workers"]] == ["w1@h"]
    assert ev["stalled_workers"][0]["prefetch_count"] is None
    assert found(eng, "queue_without_consumer") == []


def test_worker_without_heartbeat_is_known_from_its_task_events() -> None:
    """``--without-heartbeat``: no worker event at all, task events only. The worker has
    no up/down series (its liveness cannot be known) and, for ``silent_grace`` after its
    last task event, consumes the queues it took tasks from."""
    from flower_practices.rules.queue_view import queue_consumers
    from flower_practices.state import RuntimeState

    state = RuntimeState(Settings())
    t0 = 1000.0
    state.apply("task-sent", {"type": "task-sent", "uuid": "u1", "name": "t",
                              "queue": "paced", "timestamp": t0, "local_received": t0})
    state.apply("task-received", {"type": "task-received", "uuid": "u1", "name": "t",
                                  "hostname": "nohb@h", "timestamp": t0 + 1,
                                  "local_received": t0 + 1})
    worker = state.workers["nohb@h"]
    assert not worker.heartbeats
    ups, _ = state.worker_gauges(t0 + 60)
    assert "nohb@h" not in ups
    queue = state.queues["paced"]
    assert queue_consumers(state, queue, t0 + 60, False, silent_grace=300.0).count == 1
    assert queue_consumers(state, queue, t0 + 400, False, silent_grace=300.0).count == 0


def test_the_benchmark_stream_retries_are_not_duplicate_deliveries() -> None:
    """bench/events.py's stream is a healthy workload: its retried tasks are received
    again with ``retries=1``, as Celery sends them, so the exporter's benchmarked work
    has no duplicate deliveries to judge (it had one per 20 tasks)."""
    from bench.events import stream

    eng = engine()
    start = time.time() - 60.0
    for ev in stream(6000, start=start, rate=2000.0):
        ev["local_received"] = ev["timestamp"]
        eng.observe(ev)
    assert eng.stream_status.events >= 6000
    assert sum(eng.stream_status.decode_errors.values()) == 0
    rule = next(r for r in eng.rules if isinstance(r, DuplicateDelivery))
    assert not rule.candidates and not rule.found
    eng.evaluate(time.time())
    assert not [f for f in eng.findings.active() if f.practice == "duplicate_delivery"]


def test_a_requeue_excuses_its_redelivery_even_when_the_rejection_comes_after_it() -> None:
    """``Reject(requeue=True)``: the worker hands the message back and the broker delivers
    it again. In a grouped body under load the redelivery's task-received can come before
    the task-rejected; the redelivery is still not a duplicate. A message redelivered with
    no rejection still is."""
    eng = engine(duplicate_delivery={"grace_seconds": 5.0})
    t0 = time.time() - 100
    heartbeat(eng, "w1@h", t0, active=1)
    for uuid in ("requeued", "redelivered"):
        task(eng, "task-sent", uuid, t0, retries=0)
        task(eng, "task-received", uuid, t0, "w1@h", retries=0)
        task(eng, "task-started", uuid, t0, "w1@h")
        # the broker's second delivery, in the same body
        task(eng, "task-received", uuid, t0 + 1, "w1@h", retries=0)
        task(eng, "task-started", uuid, t0 + 1, "w1@h")
    task(eng, "task-rejected", "requeued", t0 + 1, "w1@h", requeue=True)
    heartbeat(eng, "w1@h", t0 + 2, active=1)
    eng.evaluate(t0 + 10)
    [f] = found(eng, "duplicate_delivery")
    assert f["evidence"]["task_ids"] == ["redelivered"]


def _late_started_retry(eng: Engine, uuid: str, t0: float, countdown: float | None) -> None:
    """A manual ``self.retry`` on a threads worker, as RabbitMQ delivered it: the retried
    run's task-started is sent after the retry message it published was received."""
    def eta(at: float) -> dict:
        return {} if countdown is None else {
            "eta": datetime.fromtimestamp(at + countdown, UTC).isoformat()}

    task(eng, "task-sent", uuid, t0, retries=0)
    task(eng, "task-received", uuid, t0 + 0.005, "w1@h", retries=0)
    task(eng, "task-started", uuid, t0 + 0.013, "w1@h")
    task(eng, "task-sent", uuid, t0 + 0.029, retries=1, **eta(t0 + 0.029))
    task(eng, "task-retried", uuid, t0 + 0.045, "w1@h")
    task(eng, "task-received", uuid, t0 + 0.073, "w1@h", retries=1, **eta(t0 + 0.029))
    r1 = t0 + 0.029 + (countdown or 0.0)  # the first retry runs: it retries again
    task(eng, "task-sent", uuid, r1 + 0.003, retries=2, **eta(r1 + 0.003))
    task(eng, "task-received", uuid, r1 + 0.006, "w1@h", retries=2, **eta(r1 + 0.003))
    task(eng, "task-started", uuid, r1 + 0.007, "w1@h")   # the first retry's, sent late
    task(eng, "task-retried", uuid, r1 + 0.016, "w1@h")
    r2 = r1 + 0.003 + (countdown or 0.0)
    task(eng, "task-started", uuid, r2 + 0.002, "w1@h")   # the second retry's run
    task(eng, "task-succeeded", uuid, r2 + 0.003, "w1@h", runtime=0.001)


def test_a_retried_runs_late_task_started_is_not_a_duplicate_of_its_retry() -> None:
    """Seen on a real threads worker on RabbitMQ (tests/test_retry_delivery_workload.py):
    with a countdown the late start comes before the retry's eta; without one the run's
    task-retried follows it. Neither is a duplicate; a retry message really delivered and
    started twice still is."""
    eng = engine(duplicate_delivery={"grace_seconds": 2.0})
    t0 = time.time() - 100
    heartbeat(eng, "w1@h", t0, active=1)
    _late_started_retry(eng, "eta", t0, countdown=1.4)
    _late_started_retry(eng, "now", t0 + 5, countdown=None)
    # a retry's message delivered twice (received and started twice, no retry between)
    task(eng, "task-sent", "dup", t0 + 10, retries=1)
    task(eng, "task-received", "dup", t0 + 10, "w1@h", retries=1)
    task(eng, "task-started", "dup", t0 + 10, "w1@h")
    task(eng, "task-received", "dup", t0 + 13, "w1@h", retries=1)
    task(eng, "task-started", "dup", t0 + 13, "w1@h")
    heartbeat(eng, "w1@h", t0 + 14, active=1)
    eng.evaluate(t0 + 20)
    [f] = found(eng, "duplicate_delivery")
    assert f["evidence"]["task_ids"] == ["dup"] and f["count"] == 1
