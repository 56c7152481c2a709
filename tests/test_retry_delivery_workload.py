"""Manual retries with a jittered countdown on real threads workers are no duplicates.

``tests.apps.holdouts``' ``holdouts.fetch`` calls ``self.retry(countdown=uniform(0.5,
2**(n+1)))`` twice, then succeeds. On a threads worker the run's task-started can go
out *after* the retry message it published was received by the same worker, so the
stream reads: retry received, a start, task-retried, then the retry's own start -- which
looked like one retry message started twice (a false ``duplicate_delivery`` seen on
RabbitMQ). With every rule enabled and short thresholds, none of this is a finding; the
must-fire duplicates (visibility timeout, dropped connection) are in
tests/test_consumer_practices.py, and the exact stream is unit-tested in
tests/test_consumer_practices_units.py.
"""

from __future__ import annotations

import time

import pytest

from flower_practices.config import Settings
from tests.apps import holdouts
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

OPTIONS = {
    "duplicate_delivery": {"grace_seconds": 2.0},
    "retry_storm": {"max_retries_per_window": 10, "window_seconds": 120.0},
    "lost_task": {"grace_seconds": 0.0},
    "missing_time_limit": {"max_runtime_seconds": 1.0},
    "queue_starvation": {"max_wait_seconds": 5.0, "min_samples": 3},
}


@pytest.mark.parametrize("broker_kind", ["rabbitmq", "redis"])
def test_jittered_manual_retries_on_threads_workers_raise_nothing(
        broker_kind: str, redis_url: str, request: pytest.FixtureRequest) -> None:
    broker = redis_url if broker_kind == "redis" else request.getfixturevalue("amqp_url")
    app = holdouts.make_app(broker, redis_url)
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0,
                        clear_after_seconds=600.0,
                        practices={k: dict(v) for k, v in OPTIONS.items()})
    worker = WorkerProcess("tests.apps.holdouts", broker, queues="io", concurrency=4,
                           name=f"io-{int(time.time() * 1000) % 100000}@fp-retries",
                           env={"FP_TEST_BACKEND": redis_url})
    n = 24
    with RunningExporter(app, settings, app_loaded=True) as exporter:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        try:
            worker.start(app)
            for i in range(n):
                app.send_task("holdouts.fetch", args=(i,))

            def total(etype: str) -> float:
                return exporter.total("celery_task_events_total", type=etype,
                                      task="holdouts.fetch")

            wait_for(lambda: total("succeeded") == n, timeout=90,
                     message=f"{n} fetches succeeded after two retries each")
            assert total("retried") == 2 * n
            # judged past duplicate_delivery's grace
            exporter.wait_evaluated(since=time.time() + OPTIONS["duplicate_delivery"][
                "grace_seconds"])
            findings = exporter.findings()
            assert findings == [], [(f["practice"], f["summary"]) for f in findings]
            assert exporter.total("celery_practice_violations_total") == 0
        finally:
            worker.stop()
