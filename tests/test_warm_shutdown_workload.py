"""A warm shutdown (SIGTERM) of a real worker while a task with a hard time limit runs:
Celery sends worker-offline at once and lets the task finish, up to its limit. Running
past ``offline_grace_seconds`` in that shutdown is no ``lost_task`` while its hard time
limit has not passed (the app is loaded, so the limit is known); the task's late
task-succeeded shows it finished. Threads and prefork pools, on Redis.
"""

from __future__ import annotations

import signal
import time

import pytest

from flower_practices.config import Settings
from tests.apps import lifecycle
from tests.support.brokers import broker_and_redis
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.redis]

OFFLINE_GRACE = 1.0
RUN = 6.0  # seconds the task sleeps: past the offline grace, within its limit


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_warm_shutdown_of_a_time_limited_task_is_no_lost_task(pool: str) -> None:
    assert RUN < lifecycle.BOUNDED_LIMIT
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0, clear_after_seconds=600.0,
                        practices={"lost_task": {"grace_seconds": 0.0,
                                                 "offline_grace_seconds": OFFLINE_GRACE}})
    with broker_and_redis("redis") as (broker, pid_store):
        app = lifecycle.make_app(broker, pid_store)
        with RunningExporter(app, settings, app_loaded=True) as exporter:
            wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
            name = f"ws{int(time.time() * 1000) % 100000}@fp-test"
            worker = WorkerProcess("tests.apps.lifecycle", broker, name=name, pool=pool,
                                   env={"FP_TEST_PID_REDIS": pid_store})

            def events(etype: str) -> float:
                return exporter.total("celery_task_events_total", type=etype,
                                      task="lifecycle.bounded")

            try:
                worker.start(app, timeout=60)
                app.send_task("lifecycle.bounded", args=(RUN,))
                wait_for(lambda: events("started") >= 1, timeout=60, message="task started")
                worker.proc.send_signal(signal.SIGTERM)  # warm shutdown
                # worker-offline seen (a clean leave: no celery_worker_up series)...
                wait_for(lambda: exporter.value("celery_worker_up", worker=name) is None,
                         timeout=30, message="worker-offline seen")
                # ...and judged past the offline grace while the task still runs
                exporter.wait_evaluated(since=time.time() + OFFLINE_GRACE + 0.5)
                assert events("succeeded") == 0, "the task finished too soon to judge"
                assert exporter.findings("lost_task") == []
                wait_for(lambda: events("succeeded") >= 1, timeout=60,
                         message="the task finished in the warm shutdown")
                wait_for(lambda: worker.proc.poll() is not None, timeout=30,
                         message="the worker exited")
                exporter.wait_evaluated()
                assert exporter.findings("lost_task") == []
                assert exporter.total("celery_practice_violations_total",
                                      practice="lost_task") == 0
            finally:
                worker.stop()
