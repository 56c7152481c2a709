"""Tasks that end with no outcome event (``Task.replace``, ``raise Ignore()``) on real
workers: Celery acknowledges their message and sends no task-succeeded/failed, so the run
is over when the worker's next heartbeat says it runs nothing. Such a run must not stay
"running": no ``missing_time_limit`` however long ago it started, and no ``lost_task``
when the worker then shuts down cleanly. Threads and prefork pools on Redis, threads on
RabbitMQ.
"""

from __future__ import annotations

import time

import pytest

from flower_practices.config import Settings
from tests.apps import replaced
from tests.support.brokers import broker_and_redis
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

#: past the worker's heartbeat interval (2 s) with room for a late heartbeat on a busy
#: box: until the idle heartbeat comes, a run that sent no outcome is still running
MAX_RUNTIME = 6.0
OFFLINE_GRACE = 1.0
QUIET = ("missing_time_limit", "lost_task", "duplicate_delivery", "worker_process_killed")


@pytest.mark.parametrize("broker_kind,pool", [
    pytest.param("redis", "threads", marks=pytest.mark.redis),
    pytest.param("redis", "prefork", marks=pytest.mark.redis),
    pytest.param("rabbitmq", "threads", marks=[pytest.mark.redis, pytest.mark.rabbitmq]),
])
def test_replaced_and_ignored_tasks_are_not_running_nor_lost(broker_kind: str,
                                                              pool: str) -> None:
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0, clear_after_seconds=600.0,
                        practices={"missing_time_limit": {"max_runtime_seconds": MAX_RUNTIME},
                                   "lost_task": {"grace_seconds": 0.0,
                                                 "offline_grace_seconds": OFFLINE_GRACE}})
    with broker_and_redis(broker_kind) as (broker, _):
        app = replaced.make_app(broker)
        name = f"ig{int(time.time() * 1000) % 100000}@fp-test"
        with RunningExporter(app, settings, app_loaded=True) as exporter:
            wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
            worker = WorkerProcess("tests.apps.replaced", broker, name=name, pool=pool)
            try:
                worker.start(app, timeout=60)
                for i in range(3):
                    app.send_task("replaced.entry", args=(i,))
                    app.send_task("replaced.ignoring", args=(i,))
                # a replaced task keeps its id: its replacement's success is counted under
                # the name the id was first seen with
                wait_for(lambda: exporter.total("celery_task_events_total", type="started",
                                                task="replaced.ignoring") >= 3
                         and exporter.total("celery_task_events_total", type="succeeded",
                                            task="replaced.entry") >= 3,
                         timeout=60, message="three ignored and three replaced runs")
                last_start = time.time()
                # the worker's next idle heartbeat ends the runs that sent no outcome
                wait_for(lambda: exporter.value("celery_worker_tasks_running",
                                                worker=name) == 0,
                         timeout=30, message="no task running on the idle worker")
                exporter.wait_evaluated(since=last_start + MAX_RUNTIME + 1.0)
                for practice in QUIET:
                    assert exporter.findings(practice) == [], practice
            finally:
                worker.stop()
            assert worker.proc.poll() is not None
            # a clean shutdown (worker-offline), then past the offline grace
            wait_for(lambda: exporter.value("celery_worker_up", worker=name) is None,
                     timeout=30, message="the worker's clean leave seen")
            exporter.wait_evaluated(since=time.time() + OFFLINE_GRACE + 1.0)
            for practice in QUIET:
                assert exporter.findings(practice) == [], practice
                assert exporter.total("celery_practice_violations_total",
                                      practice=practice) == 0, practice
