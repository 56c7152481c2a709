"""The standalone exporter against real brokers with a real worker running real tasks."""

from __future__ import annotations

import pytest

from flower_practices.apploader import load_app
from tests.conftest import make_producer
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

EXPECTED = {
    # (type, task): count for 5x add, 3x boom, 1x flaky (retries twice, then succeeds)
    ("sent", "basic.add"): 5, ("received", "basic.add"): 5, ("started", "basic.add"): 5,
    ("succeeded", "basic.add"): 5,
    ("sent", "basic.boom"): 3, ("received", "basic.boom"): 3, ("started", "basic.boom"): 3,
    ("failed", "basic.boom"): 3,
    ("sent", "basic.flaky"): 3, ("received", "basic.flaky"): 3, ("started", "basic.flaky"): 3,
    ("retried", "basic.flaky"): 2, ("succeeded", "basic.flaky"): 1,
}


def run_workload(producer) -> None:
    for i in range(5):
        producer.send_task("basic.add", args=(i, i))
    for _ in range(3):
        producer.send_task("basic.boom")
    producer.send_task("basic.flaky")


def assert_counts(exporter: RunningExporter, expected: dict[tuple[str, str], int]) -> None:
    def counts_match() -> bool:
        return all(exporter.total("celery_task_events_total", type=t, task=name) == n
                   for (t, name), n in expected.items())

    wait_for(counts_match, timeout=40, message="task event counts to match the workload")
    for (t, name), n in expected.items():
        if t == "received":
            # a task-received that overtakes its task-sent (worker and producer publish
            # on different connections) is counted before its queue is known
            continue
        assert exporter.total("celery_task_events_total", type=t, task=name,
                              queue="celery") == n, (t, name)


def exercise(broker: str) -> None:
    producer = make_producer(broker)
    app, _ = load_app(None, broker)
    with RunningExporter(app) as exporter:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        # Messages waiting before any worker exists: length 4, nobody consuming.
        for i in range(4):
            producer.send_task("basic.add", args=(i, 0), queue="celery")
        wait_for(lambda: exporter.total("celery_queue_length", queue="celery") == 4,
                 message="queue length 4")
        with WorkerProcess("tests.apps.basic", broker, queues="celery").start(producer) as w:
            wait_for(lambda: exporter.total("celery_queue_length", queue="celery") == 0,
                     message="queue drained")
            wait_for(lambda: exporter.total("celery_queue_consumers", queue="celery") == 1,
                     message="one consumer")
            wait_for(lambda: exporter.total("celery_worker_up", worker=w.name) == 1,
                     message="worker up")
            wait_for(lambda: exporter.total("celery_task_events_total", type="succeeded",
                                            task="basic.add") == 4, message="backlog done")
            run_workload(producer)
            # The 4 backlog tasks add to basic.add's counts.
            expected = dict(EXPECTED)
            for state in ("sent", "received", "started", "succeeded"):
                expected[(state, "basic.add")] += 4
            assert_counts(exporter, expected)
            # Runtime histogram counts successes and failures separately.
            assert exporter.total("celery_task_runtime_seconds_count", task="basic.boom",
                                  state="failed") == 3
            assert exporter.total("celery_task_runtime_seconds_count", task="basic.add",
                                  state="succeeded") == 9
            assert exporter.total("celery_task_queue_wait_seconds_count", queue="celery") == 15
            assert exporter.total("flower_practices_event_decode_errors_total") == 0
            assert exporter.total("flower_practices_last_event_timestamp_seconds") > 0


def test_exporter_counts_on_redis(redis_url: str) -> None:
    exercise(redis_url)


def test_exporter_counts_on_rabbitmq(amqp_url: str) -> None:
    exercise(amqp_url)
