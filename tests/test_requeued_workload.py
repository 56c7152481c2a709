"""``raise Reject(requeue=True)`` in an ``acks_late`` task, on a real worker: Celery sends
task-rejected ``requeue=True`` and the broker delivers the same message again, as the code
asked. That second delivery is no ``duplicate_delivery`` (which is about a broker's
visibility/consumer timeout redelivering a message nobody handed back), on Redis and on
RabbitMQ.
"""

from __future__ import annotations

import time

import pytest

from flower_practices.config import Settings
from tests.apps import requeued
from tests.support.brokers import broker_and_redis
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

GRACE = 1.0


@pytest.mark.parametrize("broker_kind", [
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("rabbitmq", marks=[pytest.mark.redis, pytest.mark.rabbitmq]),
])
def test_a_message_requeued_by_reject_is_no_duplicate_delivery(broker_kind: str) -> None:
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0, clear_after_seconds=600.0,
                        practices={"duplicate_delivery": {"grace_seconds": GRACE}})
    with broker_and_redis(broker_kind) as (broker, counter):
        app = requeued.make_app(broker, counter)
        with RunningExporter(app, settings, app_loaded=True) as exporter:
            wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
            worker = WorkerProcess("tests.apps.requeued", broker,
                                   env={"FP_TEST_COUNTER_REDIS": counter})
            try:
                worker.start(app, timeout=60)
                for i in range(3):
                    app.send_task("requeued.once", args=(i,))

                def events(etype: str) -> float:
                    return exporter.total("celery_task_events_total", type=etype,
                                          task="requeued.once")

                wait_for(lambda: events("rejected") >= 3 and events("received") >= 6
                         and events("succeeded") >= 3, timeout=60,
                         message="three tasks rejected with requeue, redelivered, done")
                # every redelivery judged: past its grace, with the worker still up
                exporter.wait_evaluated(since=time.time() + GRACE + 0.5)
                assert worker.proc.poll() is None
                assert exporter.findings("duplicate_delivery") == []
                assert exporter.total("celery_practice_violations_total",
                                      practice="duplicate_delivery") == 0
            finally:
                worker.stop()
