"""celery_task_failures_total and celery_queue_oldest_task_age_seconds against real workers.

Failures of two exception classes are counted per class; with ``max_exception_classes``
= 2 further classes fold into ``__other__`` (counted as label overflow), and no exception
message reaches /metrics. The oldest-task age of a queue nobody consumes rises with
time, an eta task does not count, and it drops to 0 once a worker drains the queue.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from celery import Celery

from flower_practices.config import Settings
from tests.apps import killable
from tests.support.brokers import fresh_redis_url, release_redis_dbs
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

FAILURES = "celery_task_failures_total"
OLDEST = "celery_queue_oldest_task_age_seconds"


@dataclass
class Env:
    broker: str
    app: Celery
    exporter: RunningExporter

    def worker(self, queues: str) -> WorkerProcess:
        name = f"{queues}{int(time.time() * 1000) % 100000}@fp-test"
        return WorkerProcess("tests.apps.killable", self.broker, name=name, queues=queues,
                             concurrency=2).start(self.app, timeout=60)

    def events(self, etype: str, task: str, **labels: str) -> float:
        return self.exporter.total("celery_task_events_total", type=etype, task=task,
                                   **labels)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    broker = fresh_redis_url()
    app = killable.make_app(broker)
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0, max_exception_classes=2)
    try:
        with RunningExporter(app, settings) as exporter:
            wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
            yield Env(broker, app, exporter)
    finally:
        release_redis_dbs(broker)


def test_failures_counted_per_exception_class_and_capped(env: Env) -> None:
    worker = env.worker("celery")
    try:
        for kind in ("ValueError", "ValueError", "KeyError"):
            env.app.send_task("killable.boom", args=(kind,))
        wait_for(lambda: env.events("failed", "killable.boom") == 3, timeout=60,
                 message="three failures")
        # per task, summed over the queue label: a task-failed that overtakes its
        # task-sent (a busy machine) is counted at once with the queue then unknown
        labels = {"task": "killable.boom"}
        assert env.exporter.value(FAILURES, exception="ValueError", **labels) == 2
        assert env.exporter.value(FAILURES, exception="KeyError", **labels) == 1
        assert env.exporter.total("flower_practices_label_overflow_total",
                                  label="exception") == 0
        # past max_exception_classes = 2: new classes fold into __other__
        for kind in ("TypeError", "LookupError", "TypeError"):
            env.app.send_task("killable.boom", args=(kind,))
        wait_for(lambda: env.events("failed", "killable.boom") == 6, timeout=60,
                 message="six failures")
        assert env.exporter.value(FAILURES, exception="__other__", **labels) == 3
        assert env.exporter.value(FAILURES, exception="TypeError") is None
        assert env.exporter.value(FAILURES, exception="LookupError") is None
        assert env.exporter.total("flower_practices_label_overflow_total",
                                  label="exception") == 3
        # the per-class series add up to the failed events; never a message
        assert env.exporter.total(FAILURES, task="killable.boom") == 6
        _, text = env.exporter.get("/metrics")
        assert "secret-message-never-exported" not in text
    finally:
        worker.stop()
        worker.kill()


def test_oldest_task_age_rises_without_consumer_and_drops_when_drained(env: Env) -> None:
    for _ in range(2):
        env.app.send_task("killable.quick", queue="backlog")
    # an eta task waits on purpose: not counted as waiting
    env.app.send_task("killable.quick", queue="later", countdown=3600)
    first = wait_for(lambda: (env.exporter.value(OLDEST, queue="backlog") or 0) > 0,
                     timeout=60, message="backlog has an oldest task age") and \
        env.exporter.value(OLDEST, queue="backlog")
    # it rises while nobody consumes the queue
    wait_for(lambda: env.exporter.value(OLDEST, queue="backlog") > first + 1.0, timeout=60,
             message="the oldest task age rising")
    wait_for(lambda: env.events("sent", "killable.quick", queue="later") == 1, timeout=60,
             message="the eta task's task-sent")
    assert env.exporter.value(OLDEST, queue="later") == 0  # present, and 0
    worker = env.worker("backlog")
    try:
        wait_for(lambda: env.events("succeeded", "killable.quick", queue="backlog") == 2,
                 timeout=60, message="the backlog drained")
        # a known queue with no waiting task reads 0 (not absent)
        wait_for(lambda: env.exporter.value(OLDEST, queue="backlog") == 0, timeout=30,
                 message="the oldest task age back to 0")
    finally:
        worker.stop()
        worker.kill()
