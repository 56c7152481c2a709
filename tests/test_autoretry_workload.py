"""Autoretry with jittered back-off raises no finding, even when the retries run out.

A real worker (threads pool) of ``tests.apps.canvas`` on the real Redis, every rule
enabled, short thresholds: ``canvas.flaky`` (``autoretry_for``, ``retry_backoff=0.5``,
``retry_jitter=True``, ``max_retries=5``) fails twice with ``ConnectionError`` and then
succeeds; ``canvas.doomed`` (same policy, ``max_retries=2``) always fails and gives up
after its retries. Neither is ``retryless_failure`` (they retried) nor ``retry_storm``
(few retries, backed off; jitter draws some zero delays on purpose). The must-fire
task, ``canvas.noretry``, fails with ``ConnectionError`` and has no retry policy.
"""

from __future__ import annotations

import time

import pytest

from flower_practices.config import Settings
from tests.apps import canvas
from tests.support.brokers import fresh_redis_url, release_redis_dbs
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

OPTIONS = {
    "queue_without_consumer": {"grace_seconds": 3.0},
    "queue_starvation": {"max_wait_seconds": 10.0, "min_samples": 3},
    "prefetch_starvation": {"min_wait_seconds": 5.0},
    "events_disabled": {"min_processed": 2, "min_received": 2},
    "retry_storm": {"max_retries_per_window": 10, "window_seconds": 120.0},
    "missing_time_limit": {"max_runtime_seconds": 2.0},
    "lost_task": {"grace_seconds": 0.0},
}


def test_autoretry_with_backoff_succeeding_or_exhausted_raises_no_finding() -> None:
    url = fresh_redis_url()
    app = canvas.make_app(url, url)
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0, clear_after_seconds=600.0,
                        practices={k: dict(v) for k, v in OPTIONS.items()})
    worker = WorkerProcess("tests.apps.canvas", url, queues=",".join(canvas.QUEUES),
                           pool="threads", concurrency=4,
                           name=f"retry-{int(time.time() * 1000) % 100000}@fp-ar")
    try:
        with RunningExporter(app, settings, app_loaded=True) as exporter:
            wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
            worker.start(app)
            try:
                def events(kind: str, task: str) -> float:
                    return exporter.total("celery_task_events_total", type=kind, task=task)

                for i in range(4):
                    app.tasks["canvas.flaky"].delay(i, 2)
                for i in range(3):
                    app.tasks["canvas.doomed"].delay(i)
                for i in range(3):
                    app.tasks["canvas.noretry"].delay(i)
                wait_for(lambda: events("succeeded", "canvas.flaky") == 4
                         and events("failed", "canvas.doomed") == 3
                         and events("failed", "canvas.noretry") == 3, timeout=90,
                         message="flaky succeeded, doomed and noretry failed")
                assert events("retried", "canvas.flaky") == 8
                assert events("retried", "canvas.doomed") == 6
                wait_for(lambda: exporter.findings("retryless_failure"), timeout=30,
                         message="retryless_failure for canvas.noretry")
                exporter.wait_evaluated(since=time.time() + 1.0)
                findings = exporter.findings()
                assert [(f["practice"], f["task"]) for f in findings] == [
                    ("retryless_failure", "canvas.noretry")], findings
                assert findings[0]["count"] == 3
                assert exporter.total("celery_practice_violations_total",
                                      practice="retry_storm") == 0
            finally:
                worker.stop()
    finally:
        release_redis_dbs(url)
