"""Task-lifecycle workloads against a real prefork worker on the real Redis and on the
real RabbitMQ (a vhost of the module's own; the pool processes' pids go through Redis).

One worker with ``--max-tasks-per-child=1`` runs, in turn:

* quick tasks: every pool process is recycled on purpose after one task; that is no
  ``worker_process_killed``, ``lost_task`` nor ``duplicate_delivery``;
* a running task revoked with ``terminate=True``: the operator's kill (Celery sends
  task-revoked ``terminated``, no task-failed) is no ``worker_process_killed`` nor
  ``lost_task``; it ran past ``max_runtime_seconds`` with no limit: ``missing_time_limit``
  (must fire);
* tasks revoked or expired before they ran (task-revoked, ``expired`` for the latter) are
  no ``lost_task``, ``queue_starvation`` nor ``unread_results``;
* a task over its per-task hard ``time_limit`` (TimeLimitExceeded; Celery kills and
  replaces the pool process) is no ``worker_process_killed`` and no
  ``missing_time_limit``; runs stopped by a per-call ``time_limit`` / ``soft_time_limit``
  leave no ``missing_time_limit`` finding (the app-wide ``task_time_limit`` is covered by
  the well-behaved workload's app).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from celery import Celery

from flower_practices.config import Settings
from tests.apps import lifecycle
from tests.support.brokers import broker_and_redis
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

QUIET = ("worker_process_killed", "lost_task", "duplicate_delivery", "queue_starvation",
         "unread_results")


@dataclass
class Env:
    broker: str
    pid_store: str
    app: Celery
    exporter: RunningExporter
    redis: redis.Redis

    def events(self, etype: str, task: str) -> float:
        return self.exporter.total("celery_task_events_total", type=etype, task=task)

    def findings(self, practice: str, task: str | None = None) -> list[dict]:
        return [f for f in self.exporter.findings(practice)
                if task is None or f["task"] == task]

    def quiet(self, practice: str, task: str | None = None) -> None:
        labels = {"task": task} if task else {}
        assert self.findings(practice, task) == [], practice
        assert self.exporter.total("celery_practice_violations_total", practice=practice,
                                   **labels) == 0, practice


@pytest.fixture(scope="module", params=[
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("rabbitmq", marks=[pytest.mark.redis, pytest.mark.rabbitmq]),
])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0, clear_after_seconds=600.0,
                        practices={"lost_task": {"grace_seconds": 0.0},
                                   "missing_time_limit": {"max_runtime_seconds": 1.0,
                                                          "clear_after_seconds": 0}})
    with broker_and_redis(request.param) as (broker, pid_store):
        app = lifecycle.make_app(broker, pid_store)
        with RunningExporter(app, settings, app_loaded=True) as exporter:
            wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
            yield Env(broker, pid_store, app, exporter, redis.Redis.from_url(pid_store))


def test_recycle_revoke_expire_and_time_limit_page_nothing(env: Env) -> None:
    name = f"lc{int(time.time() * 1000) % 100000}@fp-test"
    worker = WorkerProcess("tests.apps.lifecycle", env.broker, name=name, pool="prefork",
                           concurrency=2, extra=["--max-tasks-per-child=1"],
                           env={"FP_TEST_PID_REDIS": env.pid_store}).start(env.app, timeout=60)
    try:
        # 1. recycled pool processes (one task per child)
        for _ in range(6):
            env.app.send_task("lifecycle.quick")
        wait_for(lambda: env.events("succeeded", "lifecycle.quick") >= 6, timeout=60,
                 message="six quick tasks on recycled children")
        # 2. a running task revoked with terminate=True: SIGTERM (Celery's default), then
        # SIGKILL (what an operator uses on a task that ignores SIGTERM)
        for n, sig in enumerate(("SIGTERM", "SIGKILL"), start=1):
            key = f"pid:sleepy-{sig}"
            running = env.app.send_task("lifecycle.sleepy", args=(key, 120))
            int(wait_for(lambda key=key: env.redis.get(key), timeout=60,
                         message=f"sleepy pid ({sig})"))
            wait_for(lambda n=n: env.events("started", "lifecycle.sleepy") >= n, timeout=60,
                     message=f"sleepy started ({sig})")
            if n == 1:
                wait_for(lambda: env.findings("missing_time_limit", "lifecycle.sleepy"),
                         timeout=60,
                         message="missing_time_limit for the unlimited running task")
            env.app.control.revoke(running.id, terminate=True, signal=sig)
            wait_for(lambda n=n: env.events("revoked", "lifecycle.sleepy") >= n, timeout=60,
                     message=f"task-revoked of the terminated task ({sig})")
        # 3. a task revoked before it ran, and two that expire in the queue
        queued = env.app.send_task("lifecycle.quick", countdown=2)
        wait_for(lambda: env.events("received", "lifecycle.quick") >= 7, timeout=60,
                 message="the countdown task reserved")
        env.app.control.revoke(queued.id)
        for _ in range(2):
            env.app.send_task("lifecycle.quick", countdown=2, expires=1)
        wait_for(lambda: env.events("revoked", "lifecycle.quick") >= 3, timeout=60,
                 message="one revoked and two expired quick tasks")
        # 4. a task over its own hard time limit
        env.app.send_task("lifecycle.limited", args=(30,))
        wait_for(lambda: env.events("failed", "lifecycle.limited") >= 1, timeout=60,
                 message="limited failed")
        # 5. per-call limits (hard, then soft) on a task that has none of its own: the
        # failure proves the limit, so the completed runs are no missing_time_limit
        env.app.send_task("lifecycle.napper", args=(30,), time_limit=lifecycle.LIMIT)
        env.app.send_task("lifecycle.napper", args=(30,), soft_time_limit=lifecycle.LIMIT)
        wait_for(lambda: env.exporter.total("celery_task_failures_total",
                                            task="lifecycle.napper",
                                            exception="SoftTimeLimitExceeded") >= 1
                 and env.exporter.total("celery_task_failures_total", task="lifecycle.napper",
                                        exception="TimeLimitExceeded") >= 1,
                 timeout=60, message="napper failed by its per-call limits")
        # the worker still runs tasks on a replacement process
        env.app.send_task("lifecycle.quick")
        wait_for(lambda: env.events("succeeded", "lifecycle.quick") >= 7, timeout=60,
                 message="a task after the time limit")
        assert worker.proc.poll() is None
        env.exporter.wait_evaluated(rounds=3)
        # one run, one failure: Celery 5.7 sends task-failed twice for a run stopped by its
        # hard time limit; the second is dropped as a duplicate final event
        assert env.events("failed", "lifecycle.limited") == 1
        assert env.exporter.total("celery_task_failures_total", task="lifecycle.limited",
                                  exception="TimeLimitExceeded") == 1
        for practice in QUIET:
            env.quiet(practice)
        env.quiet("missing_time_limit", "lifecycle.limited")
        env.quiet("missing_time_limit", "lifecycle.quick")
        # Celery reports a terminated task as revoked (terminated), not as failed
        assert env.events("failed", "lifecycle.sleepy") == 0
        # while running past max_runtime_seconds a per-call limit is unknowable (it may have
        # been counted then); once it failed by it, no finding stays
        assert env.findings("missing_time_limit", "lifecycle.napper") == []
        assert env.exporter.total("celery_practice_violations_total",
                                  practice="missing_time_limit", task="lifecycle.sleepy") == 1
    finally:
        worker.stop()
        worker.kill()
