"""Correct routing raises no single_default_queue, not even in the first seconds.

Real workers of ``tests.apps.holdouts`` (queues ``default`` and ``io``, ``task_routes``
set) on the real Redis and RabbitMQ: a worker consuming ``default,io`` and one consuming
``io`` start, and tasks flow to ``default`` at once (ETA tasks and quick ones), before the
exporter's probes learned the workers' queues. Until then the judgement is undecided:
tasks seen only in ``default`` are not "everything in one queue". A watcher reads
``/api/practices`` all along. The must-fire case (workers that consume only the default
queue) is tests/test_rules_queues.py::test_single_default_queue_and_sent_events_off.
"""

from __future__ import annotations

import threading
import time

import pytest

from flower_practices.config import Settings
from tests.apps import holdouts
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("broker_kind", ["redis", "rabbitmq"])
def test_tasks_in_the_default_queue_before_the_workers_queues_are_known(
        broker_kind: str, redis_url: str, request: pytest.FixtureRequest) -> None:
    broker = redis_url if broker_kind == "redis" else request.getfixturevalue("amqp_url")
    app = holdouts.make_app(broker, redis_url)
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0,
                        clear_after_seconds=600.0)
    stamp = int(time.time() * 1000) % 100000
    workers = [WorkerProcess("tests.apps.holdouts", broker, queues=q,
                             name=f"{q.replace(',', '-')}-{stamp}@fp-routing",
                             env={"FP_TEST_BACKEND": redis_url})
               for q in ("default,io", "io")]
    seen: list[tuple[str, str]] = []
    stop = threading.Event()
    with RunningExporter(app, settings, app_loaded=True) as exporter:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")

        def watch() -> None:
            while not stop.wait(0.2):
                seen.extend((f["practice"], f["summary"]) for f in exporter.findings()
                            if (f["practice"], f["summary"]) not in seen)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            for w in workers:
                w.start(app)
            for i in range(20):
                app.send_task("holdouts.later", args=(i,), countdown=2 + i % 3)
                app.send_task("holdouts.quick", args=(i,))

            def done(task: str) -> bool:
                return exporter.total("celery_task_events_total", type="succeeded",
                                      task=task) == 20

            wait_for(lambda: done("holdouts.later") and done("holdouts.quick"),
                     timeout=60, message="all tasks done")
            exporter.wait_evaluated()
            stop.set()
            watcher.join(5)
            assert seen == []
            assert exporter.findings() == []
            assert exporter.total("celery_practice_violations_total") == 0
        finally:
            stop.set()
            for w in workers:
                w.stop()
