"""RabbitMQ as a first-class broker, against real workers on a real RabbitMQ (own vhost).

- The direct AMQP consumer (``events/fast_amqp.py``) is the one chosen for ``amqp://``
  under ``event_consumer = "auto"``, and it receives a real worker's events, prefork
  (whose task events come grouped in list bodies) and threads pools alike.
- Priority labels mean one thing on every broker: a real ``x-max-priority`` queue holding
  messages at priorities 0, 3, 6 and 9 is one series ``priority=""`` (depth, split
  unknown) on RabbitMQ, never ``priority="0"``; the same workload on Redis is split per
  priority sub-queue.
- The backlog prefetched by a worker (received, not started) appears as
  ``celery_queue_reserved_tasks`` beside ``celery_queue_length``, and in
  ``queue_starvation``'s evidence; it goes back to 0 once the worker catches up.
- Flower with the plugin keeps a busy RabbitMQ stream (heartbeats sent while events
  flow): nothing lost, no reconnect.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from celery import Celery
from kombu import Exchange, Queue

from flower_practices.config import Settings
from tests.apps.queues import make_app
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow


def consumer_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("flower-practices-ev")}


def settings(**practices: dict) -> Settings:
    return Settings(evaluation_interval=0.5, probe_interval=1.0, practices=practices)


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_direct_amqp_consumer_receives_real_worker_events(amqp_url: str, pool: str) -> None:
    producer = make_app(amqp_url)
    with RunningExporter(producer, settings(), app_loaded=True) as exporter:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        assert "flower-practices-events-amqp" in consumer_threads()
        name = f"{pool}-{int(time.time() * 1000) % 100000}@fp-amqp"
        with WorkerProcess("tests.apps.queues", amqp_url, queues="celery", name=name,
                           pool=pool, concurrency=2).start(producer) as w:
            wait_for(lambda: exporter.total("celery_worker_up", worker=w.name) == 1,
                     message="worker up (heartbeats through the direct consumer)")
            for i in range(30):
                producer.send_task("queues.quick", args=(i,))
            # every event arrives; a worker's event that overtakes its task-sent (worker
            # and producer publish on different connections; on a loaded machine even
            # task-started can) is counted before its queue is known, so only task-sent,
            # which carries the queue, is counted per queue label
            for etype in ("sent", "received", "started", "succeeded"):
                queue = {"queue": "celery"} if etype == "sent" else {}
                wait_for(lambda etype=etype, queue=queue: exporter.total(
                    "celery_task_events_total", type=etype, task="queues.quick",
                    **queue) == 30, timeout=90, message=f"30 task-{etype}")
        assert exporter.total("flower_practices_event_decode_errors_total") == 0
        assert exporter.total("flower_practices_broker_reconnects_total") == 0


PRIORITIES = {0: 1, 3: 2, 6: 3, 9: 4}  # priority -> messages


def priority_app(broker: str) -> Celery:
    app = make_app(broker)
    app.conf.task_queues = [Queue("prio", Exchange("prio"), routing_key="prio",
                                  queue_arguments={"x-max-priority": 10})]
    return app


def publish_priorities(app: Celery) -> None:
    for priority, n in PRIORITIES.items():
        for i in range(n):
            app.send_task("queues.quick", args=(i,), queue="prio", priority=priority)


def lengths(exporter: RunningExporter, queue: str) -> dict[str, float]:
    return {dict(labels)["priority"]: v for (name, labels), v in exporter.samples().items()
            if name == "celery_queue_length" and dict(labels).get("queue") == queue}


def test_rabbitmq_priority_queue_depth_is_unsplit(amqp_url: str) -> None:
    app = priority_app(amqp_url)
    with RunningExporter(app, settings(), app_loaded=True) as exporter:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        publish_priorities(app)
        wait_for(lambda: lengths(exporter, "prio") == {"": 10.0}, timeout=30,
                 message=f"one unsplit series: {lengths(exporter, 'prio')}")
        # a plain RabbitMQ queue is reported the same way: the broker never splits
        app.send_task("queues.quick", args=(1,), queue="celery")
        wait_for(lambda: lengths(exporter, "celery") == {"": 1.0}, timeout=30,
                 message=f"plain queue: {lengths(exporter, 'celery')}")


def test_redis_priority_queue_depth_is_split(redis_url: str) -> None:
    app = priority_app(redis_url)
    with RunningExporter(app, settings(), app_loaded=True) as exporter:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        publish_priorities(app)
        expected = {str(p): float(n) for p, n in PRIORITIES.items()}
        wait_for(lambda: lengths(exporter, "prio") == expected, timeout=30,
                 message=f"per-priority series: {lengths(exporter, 'prio')}")


@pytest.mark.parametrize("broker", ["amqp_url", "redis_url"], ids=["rabbitmq", "redis"])
def test_prefetched_backlog_of_a_starved_queue(broker: str,
                                               request: pytest.FixtureRequest) -> None:
    """One worker (concurrency 1, prefetch multiplier 4) runs a long task while the quick
    tasks behind it sit in its prefetch: the broker no longer counts them, the reserved
    gauge does, and queue_starvation's evidence shows both."""
    url = request.getfixturevalue(broker)
    producer = make_app(url)
    cfg = settings(queue_starvation={"max_wait_seconds": 2.0, "min_samples": 1})
    name = f"greedy-{int(time.time() * 1000) % 100000}@fp-amqp"
    with RunningExporter(producer, cfg, app_loaded=True) as exporter, \
            WorkerProcess("tests.apps.queues", url, queues="celery", name=name,
                          concurrency=1).start(producer):
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        wait_for(lambda: exporter.total("celery_worker_up", worker=name) == 1,
                 message="worker up")
        # nothing prefetched while the worker keeps up: the gauge is there, at 0
        producer.send_task("queues.quick", args=(0,))
        wait_for(lambda: exporter.total("celery_task_events_total", type="succeeded",
                                        task="queues.quick") == 1, message="quick done")
        assert exporter.value("celery_queue_reserved_tasks", queue="celery") == 0
        producer.send_task("queues.slow", args=(15.0,))
        wait_for(lambda: exporter.total("celery_task_events_total", type="started",
                                        task="queues.slow") == 1, message="slow started")
        for i in range(6):
            producer.send_task("queues.quick", args=(i,))

        def split() -> tuple[float, float]:
            return (exporter.total("celery_queue_reserved_tasks", queue="celery"),
                    exporter.total("celery_queue_length", queue="celery"))

        seen: list[tuple[float, float]] = []

        def held() -> bool:
            seen.append(split())
            return seen[-1][0] >= 3 and sum(seen[-1]) == 6

        # the worker holds some (prefetch 4), the broker the rest
        try:
            wait_for(held, timeout=20, message="reserved beside the broker's length")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; (reserved, length) seen: {seen[-8:]}") from None
        f = wait_for(lambda: next(iter(exporter.findings("queue_starvation")), None),
                     timeout=20, message="queue_starvation")
        ev = f["evidence"]
        assert ev["reserved_on_workers"] >= 3, ev
        assert ev["queue_length"] is not None and ev["queue_length"] >= 0, ev
        assert ev["reserved_on_workers"] + ev["queue_length"] <= 6, ev
        wait_for(lambda: exporter.total("celery_task_events_total", type="succeeded",
                                        task="queues.quick") == 7, timeout=40,
                 message="backlog done")
        wait_for(lambda: split() == (0.0, 0.0), timeout=10, message="nothing left waiting")


def test_flower_plugin_keeps_a_busy_rabbitmq_stream(amqp_url: str, tmp_path) -> None:
    """Events arriving more often than Flower's drain timeout for longer than RabbitMQ
    waits on a silent client (~30 s after its last frame): the plugin's receiver must
    keep sending heartbeats, or RabbitMQ drops it and its event queue with the events
    in it."""
    from tests.support.events import publish_raw
    from tests.test_flower_plugin_integration import FlowerProcess

    flower = FlowerProcess(amqp_url, ["flower-practices"], tmp_path)
    try:
        wait_for(lambda: flower.get("/healthz")[0] == 200, timeout=60,
                 message=f"Flower's /healthz 200\n{flower.output()}")
        sent = 0
        t_end = time.time() + 45.0
        while time.time() < t_end:
            batch = [("task.sent", json.dumps({
                "type": "task-sent", "uuid": str(uuid.uuid4()), "name": "busy.task",
                "queue": "celery", "hostname": "client@h", "timestamp": time.time(),
                "utcoffset": 0, "clock": 1}).encode(), {}) for _ in range(10)]
            sent += publish_raw(amqp_url, batch)
            time.sleep(0.1)

        def counted() -> float:
            return sum(float(line.rsplit(" ", 1)[1])
                       for line in flower.get("/metrics")[1].splitlines()
                       if line.startswith("flower_events_total{")
                       and 'task="busy.task"' in line)

        wait_for(lambda: counted() == sent, timeout=30,
                 message=f"Flower counted all {sent} events")
        metrics = flower.get("/metrics")[1]
        assert "flower_practices_broker_reconnects_total 0.0" in metrics
        assert "flower_practices_event_stream_gaps_total 0.0" in metrics
    finally:
        flower.stop()
