"""Issue 2's done criterion: kill and restart Redis mid-run; the exporter lives on.

Uses a private redis-server (the shared one is never touched): the exporter and a real
worker run against it, Redis is SIGKILLed and restarted on the same port, and the
exporter must stay up, report 503 while disconnected, reconnect (counted) and count new
task events again.
"""

from __future__ import annotations

import time

import pytest

from flower_practices.apploader import load_app
from tests.conftest import make_producer
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow


def succeeded(exporter: RunningExporter) -> float:
    return exporter.total("celery_task_events_total", type="succeeded", task="basic.add")


def test_redis_killed_and_restarted(private_redis: dict) -> None:
    url = private_redis["url"]
    producer = make_producer(url)
    app, _ = load_app(None, url)
    with RunningExporter(app) as exporter, \
            WorkerProcess("tests.apps.basic", url, queues="celery").start(producer):
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        for i in range(3):
            producer.send_task("basic.add", args=(i, i))
        wait_for(lambda: succeeded(exporter) == 3, message="3 tasks counted")

        private_redis["kill"]()
        status, body = wait_for(
            lambda: (lambda r: r if r[0] == 503 else None)(exporter.get("/healthz")),
            timeout=30, message="healthz 503 after Redis died")
        assert "not connected" in body
        assert exporter.total("flower_practices_event_stream_connected") == 0
        time.sleep(2)  # down for a while: several reconnect attempts fail
        assert exporter.get("/metrics")[0] == 200  # still serving

        private_redis["start"]()
        wait_for(lambda: exporter.get("/healthz")[0] == 200, timeout=60,
                 message="healthz 200 after Redis came back")
        assert exporter.total("flower_practices_broker_reconnects_total") >= 1
        # State survived: the old counts are still there.
        assert succeeded(exporter) == 3

        def send_and_count() -> bool:
            producer.send_task("basic.add", args=(1, 1))
            return succeeded(exporter) >= 5

        # The worker reconnects on its own schedule; keep sending until counted.
        wait_for(send_and_count, timeout=90, interval=2.0,
                 message="new tasks counted after the restart")
