"""A well-behaved workload with every rule in ALL_RULES enabled raises no finding at all.

Real workers (one per queue) of ``tests.apps.good_tasks`` on the real Redis, and again on
the real RabbitMQ (queue lengths and consumers then come from AMQP, results still go to
Redis): retries with
back-off for transient errors, ignored results, results that are read, primary keys as
arguments, time limits, sent events on. Thresholds are short so that a wrong finding
would have time to appear.
"""

from __future__ import annotations

import time

import pytest

from flower_practices.catalogue import BY_ID
from flower_practices.config import Settings
from flower_practices.rules import ALL_RULES
from tests.apps import good_tasks
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

#: short thresholds, so that a wrong finding would have time to appear
OPTIONS = {
    "queue_without_consumer": {"grace_seconds": 3.0},
    "queue_starvation": {"max_wait_seconds": 5.0, "min_samples": 3},
    "prefetch_starvation": {"min_wait_seconds": 5.0},
    "events_disabled": {"min_processed": 2, "min_received": 2},
    "retry_storm": {"max_retries_per_window": 10, "window_seconds": 120.0},
    "unread_results": {"grace_seconds": 6.0, "min_samples": 5, "tolerance_seconds": 1.0},
    "missing_time_limit": {"max_runtime_seconds": 1.0},
    "lost_task": {"grace_seconds": 0.0},
}
#: the longest of the time thresholds above (a window is not one)
LONGEST_THRESHOLD = max(v for o in OPTIONS.values() for k, v in o.items()
                        if k.endswith("_seconds") and k != "window_seconds")


@pytest.mark.parametrize("broker_kind", ["redis", "rabbitmq"])
def test_well_behaved_workload_has_zero_findings(broker_kind: str, redis_url: str,
                                                  request: pytest.FixtureRequest) -> None:
    broker = redis_url if broker_kind == "redis" else request.getfixturevalue("amqp_url")
    enabled = {cls.id for cls in ALL_RULES}
    assert enabled == set(BY_ID), sorted(set(BY_ID) - enabled)  # every practice has a rule
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0, clear_after_seconds=600.0,
                        practices={k: dict(v) for k, v in OPTIONS.items()})
    app = good_tasks.make_app(broker, redis_url)
    workers = [WorkerProcess("tests.apps.good_tasks", broker, queues=q,
                             name=f"{q}-{int(time.time() * 1000) % 100000}@fp-wb",
                             env={"FP_TEST_BACKEND": redis_url})
               for q in good_tasks.QUEUES]
    with RunningExporter(app, settings, app_loaded=True) as exporter:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        try:
            for w in workers:
                w.start(app)
            coverage = exporter.practices()["coverage"]
            assert set(coverage.values()) == {"active"}, coverage
            for i in range(3):
                app.send_task("good.fetch", args=(i,))        # io: retries with back-off
            for pk in range(5):
                app.send_task("good.touch", args=(pk,))       # default: a primary key
            app.send_task("good.crunch", args=(1.5,))         # default: long, time-limited
            reports = [app.send_task("good.report", args=(i,)) for i in range(6)]

            def done(task: str, n: int) -> bool:
                return exporter.total("celery_task_events_total", type="succeeded",
                                      task=task) >= n

            wait_for(lambda: done("good.report", 6), timeout=60, message="reports done")
            # the workload, not a wait: the caller reads results a little later (poll-later)
            time.sleep(2.5)
            assert [r.get(timeout=10) for r in reports] == list(range(1, 7))
            read_at = time.time()
            wait_for(lambda: done("good.touch", 5) and done("good.crunch", 1)
                     and done("good.fetch", 3), timeout=60,
                     message="the whole workload to finish")
            # Every rule judged the workload past its thresholds (the longest is
            # unread_results' grace after the reads).
            unread = OPTIONS["unread_results"]
            exporter.wait_evaluated(since=max(time.time() + LONGEST_THRESHOLD, read_at
                                              + 2 * unread["grace_seconds"]  # both looks
                                              + unread["tolerance_seconds"]))
            payload = exporter.practices()
            assert exporter.total("celery_task_events_total", type="retried",
                                  task="good.fetch") == 6
            assert payload["findings"] == []
            assert exporter.total("celery_practice_violation") == 0
            assert exporter.total("celery_practice_violations_total") == 0
        finally:
            for w in workers:
                w.stop()
