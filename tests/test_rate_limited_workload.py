"""Rate-limited tasks: the queue they wait in is not starved; the queues they block are.

Real worker, real broker (Redis with a prefork pool, RabbitMQ with threads), every rule
on. Celery keeps a task that waits for its ``rate_limit`` reserved in the worker's
prefetch, so one worker consuming both ``limited`` (rate-limited tasks, 2/s) and
``celery`` fetches nothing else while its prefetch is full of them: ``celery`` starves
and is reported, its summary and evidence naming the rate-limited tasks held
(``rate_limited_reserved``). The ``limited`` queue's own tasks wait for their rate, on
purpose (the app's configuration says so): no ``queue_starvation`` for it, and nothing
from ``prefetch_starvation``, ``lost_task``, ``stalled_consumer`` or
``duplicate_delivery``.
"""

from __future__ import annotations

import time

import pytest

from flower_practices.config import Settings
from tests.apps.throttled import QUEUES, make_app
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

MAX_WAIT = 3.0
OPTIONS = {
    "queue_starvation": {"max_wait_seconds": MAX_WAIT, "min_samples": 3},
    "prefetch_starvation": {"min_wait_seconds": MAX_WAIT},
    "lost_task": {"grace_seconds": 0.0},
    "stalled_consumer": {"threshold_seconds": MAX_WAIT},
}
SILENT = ("prefetch_starvation", "lost_task", "stalled_consumer", "duplicate_delivery")


@pytest.mark.parametrize("broker,pool", [("redis_url", "prefork"), ("amqp_url", "threads")],
                         ids=["redis-prefork", "rabbitmq-threads"])
def test_rate_limited_tasks_starve_their_neighbours_not_their_queue(
        broker: str, pool: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(broker)
    app = make_app(url)
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0, clear_after_seconds=600.0,
                        practices={k: dict(v) for k, v in OPTIONS.items()})
    worker = WorkerProcess("tests.apps.throttled", url, queues=",".join(QUEUES), pool=pool,
                           concurrency=2,
                           name=f"throttled-{int(time.time() * 1000) % 100000}@fp-rl")
    try:
        with RunningExporter(app, settings, app_loaded=True) as exporter:
            wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
            worker.start(app)
            limited, quick = app.tasks["throttled.limited"], app.tasks["throttled.quick"]

            def succeeded(task: str) -> float:
                return exporter.total("celery_task_events_total", type="succeeded", task=task)

            for i in range(60):
                limited.delay(i)
            sent = 0

            def starved() -> dict | None:
                nonlocal sent
                for _ in range(3):  # 6/s into the blocked queue: more than slots free up
                    quick.delay(sent)
                    sent += 1
                return next((f for f in exporter.findings("queue_starvation")
                             if f["queue"] == "celery"), None)

            f = wait_for(starved, timeout=60, interval=0.5,
                         message="queue_starvation for the blocked 'celery' queue")
            assert f["evidence"]["rate_limited_reserved"] >= 1, f
            assert "rate-limited task(s) in their prefetch" in f["summary"]
            # the rate-limited tasks themselves waited far past MAX_WAIT, on purpose
            wait_for(lambda: succeeded("throttled.limited") >= 20, timeout=60,
                     message="20 rate-limited tasks done")
            exporter.wait_evaluated()
            found = exporter.findings()
            assert not [x for x in found if x["practice"] == "queue_starvation"
                        and x["queue"] == "limited"], found
            assert not [x for x in found if x["practice"] in SILENT], found
            assert exporter.total("celery_practice_violations_total",
                                  practice="queue_starvation", queue="limited") == 0
            worker.stop()
    finally:
        worker.kill()
