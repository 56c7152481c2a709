"""``acks_late`` + ``task_reject_on_worker_lost``: a pool process killed under a task
(SIGKILL, what the OOM killer does) makes Celery send task-rejected ``requeue=True`` and
the broker deliver the message again; it runs to success. On real prefork workers on
Redis and RabbitMQ, with every rule on and short thresholds: that kill is a
``worker_process_killed`` (``requeued`` 1: the app, loaded, shows nothing else requeues
the task), the redelivery is no ``duplicate_delivery``, the run is no ``lost_task`` (the
worker stayed up) and no ``retryless_failure`` (no task-failed at all). A task that
hands its message back itself (``raise Reject(requeue=True)``) is no kill, nor one that
does it through a helper function. A run killed
by its own hard ``time_limit`` under the same settings fails (TimeLimitExceeded; Celery
replaces the process and does not requeue): no ``worker_process_killed`` and no
duplicate either.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from flower_practices.config import Settings
from tests.apps import rejecting
from tests.support.brokers import broker_and_redis
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess
from tests.test_well_behaved_workload import OPTIONS

pytestmark = pytest.mark.slow

QUIET = ("duplicate_delivery", "lost_task", "retryless_failure", "stalled_consumer",
         "prefetch_starvation", "missing_time_limit")
#: and for the run its own time limit killed
QUIET_OVERRUN = ("worker_process_killed",)
#: tasks whose requeue or failure is no killed pool process
NOT_KILLED = ("rejecting.overrun", "rejecting.bouncer", "rejecting.deferring")


@pytest.mark.parametrize("broker_kind", ["redis", "rabbitmq"])
def test_a_killed_pool_process_requeued_and_run_again_is_no_duplicate_nor_lost(
        broker_kind: str) -> None:
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0,
                        clear_after_seconds=600.0,
                        practices={k: dict(v) for k, v in OPTIONS.items()})
    with broker_and_redis(broker_kind) as (broker, store):
        app = rejecting.make_app(broker, store)
        with RunningExporter(app, settings, app_loaded=True) as exporter:
            wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
            worker = WorkerProcess(
                "tests.apps.rejecting", broker, pool="prefork", concurrency=2,
                name=f"rj{int(time.time() * 1000) % 100000}@fp-test",
                env={"FP_TEST_PID_REDIS": store}).start(app, timeout=60)
            try:
                pids = redis.Redis.from_url(store)
                app.send_task("rejecting.hog", args=("pid:hog", 60))
                for _ in range(4):
                    app.send_task("rejecting.quick")
                pid = int(wait_for(lambda: pids.get("pid:hog"), timeout=60,
                                   message="the hog's pool process pid"))
                assert pid != worker.proc.pid
                os.kill(pid, signal.SIGKILL)

                def events(etype: str) -> float:
                    return exporter.total("celery_task_events_total", type=etype,
                                          task="rejecting.hog")

                wait_for(lambda: events("succeeded") == 1, timeout=60,
                         message="the requeued hog ran again")
                assert events("rejected") == 1 and events("failed") == 0
                assert events("received") == 2
                (killed,) = wait_for(
                    lambda: [f for f in exporter.findings("worker_process_killed")
                             if f["task"] == "rejecting.hog"],
                    timeout=60, message="worker_process_killed for the requeued kill")
                assert killed["worker"] == worker.name and killed["count"] == 1
                assert killed["evidence"]["requeued"] == 1
                assert killed["evidence"]["reject_on_worker_lost"] is True
                for task, key in (("rejecting.bouncer", "bounce"),
                                  ("rejecting.deferring", "defer")):
                    app.send_task(task, args=(key,))
                    wait_for(lambda task=task: exporter.total(
                        "celery_task_events_total", type="succeeded", task=task) == 1,
                        timeout=60, message=f"{task} ran again after its Reject")
                    assert exporter.total("celery_task_events_total", type="rejected",
                                          task=task) == 1
                app.send_task("rejecting.overrun", args=(10,))
                wait_for(lambda: exporter.total("celery_task_events_total", type="failed",
                                                task="rejecting.overrun") >= 1,
                         timeout=60, message="the overrun killed by its time limit")
                assert exporter.total("celery_task_events_total", type="failed",
                                      task="rejecting.overrun") == 1
                # judged past the longest grace of the rules above (duplicate_delivery's)
                exporter.wait_evaluated(since=time.time() + 10.0)
                found = [(f["practice"], f["summary"]) for f in exporter.findings()
                         if f["practice"] in QUIET or (f["practice"] in QUIET_OVERRUN
                                                      and f["task"] in NOT_KILLED)]
                assert found == []
                assert exporter.total("celery_practice_violations_total",
                                      practice="worker_process_killed") == 1
                for practice in QUIET:
                    assert exporter.total("celery_practice_violations_total",
                                          practice=practice) == 0
                assert worker.proc.poll() is None
            finally:
                worker.stop()
