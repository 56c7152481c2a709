"""Throttled and unusually configured workers raise no finding while they work.

Real workers of ``tests.apps.paced`` (a prefork and a threads worker, ``-Q
celery,paced,metrics``) on the real Redis and RabbitMQ, every rule enabled with short
thresholds. Healthy flow: ``rate_limit`` tasks ('10/s' and '30/m') sent below their
rate and drained at it (the workers receive and hold them reserved), tasks routed by
``task_routes`` through a topic exchange to the ``metrics`` queue (routing key
``metrics.cpu``, not the queue's name), plain tasks. A watcher reads ``/api/practices``
all along: no finding may appear, also while a burst of rate-limited tasks drains
longer than ``max_wait_seconds`` at its rate (they wait on purpose: no
``queue_starvation``). Must fire: once the workers are gone ``queue_without_consumer``
names the routed queue ``metrics`` (on RabbitMQ also for messages sent by exchange and
routing key alone, whose events are counted under ``metrics`` too), never a routing key.

Second test: a ``-O fair`` prefork and a threads worker with ``task_acks_late`` and
prefetch multiplier 1, both ``--without-heartbeat`` (no worker event at all, task events
only), working through plain, rate-limited and routed tasks and a rate-limited backlog:
no finding, and no ``celery_worker_up`` series (their liveness cannot be known; it was 0).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from celery import Celery

from flower_practices.config import Settings
from tests.apps import paced
from tests.support.brokers import broker_and_redis
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

OPTIONS = {
    "queue_without_consumer": {"grace_seconds": 3.0},
    "queue_starvation": {"max_wait_seconds": 8.0, "min_samples": 3},
    "prefetch_starvation": {"min_wait_seconds": 3.0},
    "stalled_consumer": {"threshold_seconds": 5.0},
    "events_disabled": {"min_processed": 2, "min_received": 2, "warmup_seconds": 0.0},
    "lost_task": {"grace_seconds": 0.0},
}


def _findings(exporter: RunningExporter) -> set:
    return {(f["practice"], f["task"], f["queue"], f["worker"]) for f in exporter.findings()}


@contextmanager
def watched(app: Celery, workers: list[WorkerProcess]
            ) -> Iterator[tuple[RunningExporter, Callable[[], set]]]:
    """The exporter (every rule, OPTIONS) with ``workers`` started, and a watcher reading
    the findings every 0.5 s: yields the exporter and ``seen()``, which stops the watcher
    and returns every finding it saw (and those active now); workers stopped after."""
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0,
                        clear_after_seconds=600.0,
                        practices={k: dict(v) for k, v in OPTIONS.items()})
    found: set = set()
    stop = threading.Event()
    try:
        with RunningExporter(app, settings, app_loaded=True) as exporter:
            for w in workers:
                w.start(app)

            def watch() -> None:
                while not stop.wait(0.5):
                    found.update(_findings(exporter))

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()

            def seen() -> set:
                stop.set()
                watcher.join(5)
                return found | _findings(exporter)

            yield exporter, seen
    finally:
        stop.set()
        for w in workers:
            w.stop()


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_rate_limited_and_routed_workers(broker: str) -> None:
    with broker_and_redis(broker) as (url, _):
        app = paced.make_app(url)
        workers = [WorkerProcess("tests.apps.paced", url, queues="celery,paced,metrics",
                                 pool=pool, concurrency=2,
                                 name=f"{pool}-{int(time.time() * 1000) % 100000}@fp-thr")
                   for pool in ("prefork", "threads")]
        with watched(app, workers) as (exporter, seen):
            start = time.time()
            n = 0
            while time.time() - start < 8.0:  # below the rates: 30/m x 2 workers = 1/s
                app.send_task("throttled.slowpaced", args=(n,))
                for _ in range(3):
                    app.send_task("throttled.paced", args=(n,))
                app.send_task("throttled.routed", args=(n,))
                app.send_task("throttled.plain", args=(n,))
                n += 1
                time.sleep(1.3)
            wait_for(lambda: exporter.total("celery_task_events_total", type="succeeded")
                     >= n * 6, timeout=40, message="every task to succeed")
            exporter.wait_evaluated(since=time.time() + 5.0)
            assert seen() == set()
            # a burst that takes longer than max_wait_seconds to drain at its rate (12 at
            # 1/s): its tasks wait for their rate, on purpose -- not a starved queue; the
            # backlog shows as the queue's length and reserved tasks instead
            for i in range(12):
                app.send_task("throttled.slowpaced", args=(i,))
            wait_for(lambda: exporter.value("celery_queue_reserved_tasks", queue="paced"),
                     timeout=20, message="the burst held reserved on the workers")
            wait_for(lambda: exporter.total("celery_task_events_total", type="succeeded",
                                            task="throttled.slowpaced") >= n + 12,
                     timeout=40, message="the burst drained at its rate")
            exporter.wait_evaluated()
            assert not exporter.findings("queue_starvation")
            assert exporter.total("celery_practice_violations_total",
                                  practice="queue_starvation") == 0
            for w in workers:
                w.stop()
            for i in range(3):
                app.send_task("throttled.routed", args=(i,))
                if broker == "rabbitmq":  # by exchange and routing key alone, no queue named
                    app.send_task("throttled.plain", args=(i,), exchange="telemetry",
                                  routing_key="metrics.disk")
            # named by the queue, not by the routing key; both sends counted on RabbitMQ
            want = 6 if broker == "rabbitmq" else 3
            wait_for(lambda: [f["evidence"]["messages_waiting"] for f in
                              exporter.findings("queue_without_consumer")
                              if f["queue"] == "metrics"] == [want], timeout=30,
                     message="queue_without_consumer for the routed queue")
            assert not {f["queue"] for f in exporter.findings()} & {"metrics.cpu",
                                                                    "metrics.disk"}
            # and the events' own figures too: the task-sent of a message sent by
            # exchange and routing key names no queue; the app's bindings (topic
            # 'metrics.#') say it lands in 'metrics', the queue the broker reports
            assert exporter.total("celery_task_events_total", queue="metrics.disk") == 0
            if broker == "rabbitmq":
                assert exporter.total("celery_task_events_total", type="sent",
                                      task="throttled.plain", queue="metrics") == 3
            assert not exporter.findings("single_default_queue")


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_fair_acks_late_workers_without_heartbeat(broker: str) -> None:
    """``-O fair`` with prefetch 1 and ``task_acks_late``, and ``--without-heartbeat``
    (no worker-heartbeat, no worker-online/offline: task events only)."""
    with broker_and_redis(broker) as (url, _):
        app = paced.make_app(url, acks_late=True)
        workers = [WorkerProcess("tests.apps.paced", url, queues="celery,paced,metrics",
                                 pool=pool, concurrency=2, extra=extra,
                                 env={"FP_ACKS_LATE": "1"},
                                 name=f"{pool}-{int(time.time() * 1000) % 100000}@fp-nohb")
                   for pool, extra in (("prefork", ["-O", "fair", "--without-heartbeat"]),
                                       ("threads", ["--without-heartbeat"]))]
        with watched(app, workers) as (exporter, seen):
            start = time.time()
            n = 0
            while time.time() - start < 4.0:
                app.send_task("throttled.plain", args=(n,))
                app.send_task("throttled.paced", args=(n,))
                app.send_task("throttled.routed", args=(n,))
                n += 1
                time.sleep(0.7)
            # a burst the heartbeat-less workers drain at their rate (30/m each, 1/s in
            # all): ~6 s (rate-limited waits are on purpose: no queue_starvation either way)
            for i in range(6):
                app.send_task("throttled.slowpaced", args=(i,))
            wait_for(lambda: exporter.total("celery_task_events_total", type="succeeded")
                     >= n * 3 + 6, timeout=40, message="every task to succeed")
            assert exporter.value("celery_worker_up", worker=workers[0].name) is None
            exporter.wait_evaluated(since=time.time() + 5.0)
            assert seen() == set()
