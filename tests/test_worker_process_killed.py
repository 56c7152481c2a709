"""worker_process_killed against real prefork workers on the real Redis and on the real
RabbitMQ (a vhost of the module's own; the pool processes' pids go through Redis then).

A task publishes its pool process's pid and sleeps; the test SIGKILLs that process (what
the OOM killer does): the task fails with WorkerLostError, the worker stays up, and the
finding appears in /api/practices and /metrics with count == the violations counter.
It must not fire when the whole worker is killed (lost_task's case), on a warm shutdown
(SIGTERM) while a task finishes, nor for ordinary exceptions.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from celery import Celery

from flower_practices.config import Settings
from tests.apps import killable
from tests.support.brokers import broker_and_redis
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

PRACTICE = "worker_process_killed"


@dataclass
class Env:
    broker: str
    #: the Redis the pool processes publish their pids to (the broker's when it is Redis)
    pid_store: str
    app: Celery
    exporter: RunningExporter
    redis: redis.Redis

    def worker(self, tag: str) -> WorkerProcess:
        name = f"{tag}{int(time.time() * 1000) % 100000}@fp-test"
        return WorkerProcess("tests.apps.killable", self.broker, name=name, pool="prefork",
                             concurrency=1, env={"FP_TEST_PID_REDIS": self.pid_store}
                             ).start(self.app, timeout=60)

    def pid(self, key: str) -> int:
        return int(wait_for(lambda: self.redis.get(key), timeout=60,
                            message=f"pool process pid at {key}"))

    def findings(self, task: str, practice: str = PRACTICE) -> list[dict]:
        return [f for f in self.exporter.findings(practice) if f["task"] == task]

    def events(self, etype: str, task: str) -> float:
        return self.exporter.total("celery_task_events_total", type=etype, task=task)

    def no_finding(self, task: str) -> None:
        assert self.findings(task) == []
        # the families are there (a missing series is not read as zero)
        assert self.exporter.total("celery_practice_violations_total", practice=PRACTICE,
                                   task=task) == 0
        assert self.exporter.total("celery_practice_violation", practice=PRACTICE,
                                   task=task) == 0


@pytest.fixture(scope="module", params=[
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("rabbitmq", marks=[pytest.mark.redis, pytest.mark.rabbitmq]),
])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0, clear_after_seconds=600.0,
                        practices={"lost_task": {"grace_seconds": 0.0}})
    with broker_and_redis(request.param) as (broker, pid_store):
        app = killable.make_app(broker, pid_store)
        with RunningExporter(app, settings, app_loaded=True) as exporter:
            wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
            yield Env(broker, pid_store, app, exporter, redis.Redis.from_url(pid_store))


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_killed_pool_process_is_found_while_the_worker_stays_up(env: Env) -> None:
    worker = env.worker("oom")
    try:
        env.app.send_task("killable.hog", args=("pid:hog", 120))
        pid = env.pid("pid:hog")
        assert pid != worker.proc.pid  # the pool child, not the worker
        os.kill(pid, signal.SIGKILL)  # what the OOM killer does
        (f,) = wait_for(lambda: env.findings("killable.hog"), timeout=60,
                        message="worker_process_killed finding")
        assert f["worker"] == worker.name and f["severity"] == "warning"
        assert f["queue"] == "celery"
        assert f["count"] == 1
        ev = f["evidence"]
        assert ev["count"] == 1 and ev["worker"] == worker.name and ev["task"] == "killable.hog"
        assert ev["signals"] == {"SIGKILL": 1}
        assert ev["acks_late"] is False and ev["reject_on_worker_lost"] is False
        assert "SIGKILL" in f["summary"]
        # never the exception's message
        assert "prematurely" not in json.dumps(f) and "Job" not in json.dumps(ev)
        assert env.exporter.total("celery_practice_violation", practice=PRACTICE,
                                  task="killable.hog", worker=worker.name) == 1
        assert env.exporter.total("celery_practice_violations_total", practice=PRACTICE,
                                  task="killable.hog", queue="celery") == f["count"] == 1
        assert env.exporter.total("celery_task_failures_total", task="killable.hog",
                                  exception="WorkerLostError") == 1
        # the worker stayed up: alive, and it still runs tasks
        assert worker.proc.poll() is None
        assert env.exporter.total("celery_worker_up", worker=worker.name) == 1
        env.app.send_task("killable.quick")
        wait_for(lambda: env.events("succeeded", "killable.quick") >= 1, timeout=60,
                 message="a task after the kill")
        assert env.findings("killable.hog", "lost_task") == []
        # counted once: further evaluations do not count it again
        env.exporter.wait_evaluated(rounds=3)
        assert env.exporter.total("celery_practice_violations_total", practice=PRACTICE,
                                  task="killable.hog") == 1
        (f,) = env.findings("killable.hog")
        assert f["count"] == 1
    finally:
        worker.stop()
        worker.kill()


def test_killed_pool_process_the_worker_retries_is_found(env: Env) -> None:
    """``retry_on_worker_lost`` (Celery >= 5.7): the kill is reported as a task-retried
    with WorkerLostError and the task runs again to success -- still a killed pool
    process (found, ``retried`` 1), and no retry-less failure, lost task or duplicate."""
    worker = env.worker("retr")
    try:
        env.app.send_task("killable.hog_retried", args=("pid:hog_retried", 120))
        os.kill(env.pid("pid:hog_retried"), signal.SIGKILL)
        (f,) = wait_for(lambda: env.findings("killable.hog_retried"), timeout=60,
                        message="worker_process_killed finding for a retried kill")
        assert f["worker"] == worker.name and f["count"] == 1
        ev = f["evidence"]
        assert ev["count"] == 1 and ev["retried"] == 1 and ev["signals"] == {"SIGKILL": 1}
        assert ev["retry_on_worker_lost"] is True
        assert "retried after WorkerLostError" in f["summary"]
        assert env.exporter.total("celery_practice_violations_total", practice=PRACTICE,
                                  task="killable.hog_retried") == 1
        wait_for(lambda: env.events("succeeded", "killable.hog_retried") >= 1, timeout=60,
                 message="the retried run succeeded")
        assert env.events("retried", "killable.hog_retried") == 1
        assert env.events("failed", "killable.hog_retried") == 0
        env.exporter.wait_evaluated(rounds=3)
        for quiet in ("retryless_failure", "lost_task", "duplicate_delivery", "retry_storm"):
            assert env.findings("killable.hog_retried", quiet) == [], quiet
        (f,) = env.findings("killable.hog_retried")
        assert f["count"] == 1  # not counted again
    finally:
        worker.stop()
        worker.kill()


def test_whole_worker_killed_is_lost_task_not_this(env: Env) -> None:
    worker = env.worker("whole")
    child = None
    try:
        env.app.send_task("killable.sleepy", args=("pid:whole", 120))
        child = env.pid("pid:whole")
        wait_for(lambda: env.events("started", "killable.sleepy") >= 1, timeout=60,
                 message="sleepy started")
        worker.kill()  # SIGKILL to the worker itself: the node / main process died
        _kill(child)
        # the scenario was judged: lost_task saw the worker go
        (lost,) = wait_for(lambda: env.findings("killable.sleepy", "lost_task"), timeout=60,
                           message="lost_task finding")
        assert lost["worker"] == worker.name
        env.exporter.wait_evaluated(rounds=3)
        env.no_finding("killable.sleepy")
    finally:
        worker.kill()
        if child is not None:
            _kill(child)


def test_warm_shutdown_and_ordinary_exceptions_raise_nothing(env: Env) -> None:
    worker = env.worker("warm")
    try:
        kills_before = env.exporter.total("celery_practice_violations_total",
                                          practice=PRACTICE, task="killable.hog")
        started = env.events("started", "killable.hog")
        succeeded = env.events("succeeded", "killable.hog")
        for kind in ("ValueError", "KeyError"):
            env.app.send_task("killable.boom", args=(kind,))
        wait_for(lambda: env.events("failed", "killable.boom") >= 2, timeout=60,
                 message="two ordinary failures")
        env.app.send_task("killable.hog", args=("pid:warm", 3))
        env.pid("pid:warm")
        wait_for(lambda: env.events("started", "killable.hog") > started, timeout=60,
                 message="hog started on the leaving worker")
        worker.stop(timeout=60)  # SIGTERM: warm shutdown, the task finishes first
        assert worker.proc.returncode is not None
        wait_for(lambda: env.events("succeeded", "killable.hog") > succeeded, timeout=60,
                 message="task finished during the warm shutdown")
        # judged after the worker's last events
        env.exporter.wait_evaluated(rounds=3)
        env.no_finding("killable.boom")
        assert env.exporter.total("celery_task_failures_total", task="killable.boom",
                                  exception="ValueError") == 1
        assert env.exporter.total("celery_practice_violations_total", practice=PRACTICE,
                                  task="killable.hog") == kills_before
    finally:
        worker.kill()
