"""A blind window: the exporter's event stream is down while real workers carry on.

The exporter reaches the real Redis through a TCP proxy; the worker (threads pool) talks
to Redis directly. While a long task runs, the proxy makes the broker unreachable for
longer than the worker's heartbeat expiry plus ``lost_task``'s grace, then lets the
exporter reconnect. Nothing the exporter did not hear is a page: no ``lost_task`` while
it is blind nor after it is back (the worker is heard again within its heartbeat
interval). Then the worker is SIGKILLed: its running task is a ``lost_task`` (must
fire), so the detection still works after the window.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from flower_practices.config import Settings
from tests.apps import killable
from tests.support.brokers import fresh_redis_url, release_redis_dbs
from tests.support.exporter import RunningExporter, wait_for
from tests.support.tcp_proxy import BlackholeProxy
from tests.support.worker import WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.redis]

#: lost_task's grace here: with the worker's 4 s heartbeat expiry, a worker unheard for
#: 6 s would be judged lost
GRACE = 2.0
#: how long the exporter stays blind (well past expiry plus grace)
BLIND = 15.0
DISCONNECTED = "flower_practices_event_stream_disconnected_seconds_total"


def test_a_blind_window_pages_no_lost_task_and_a_kill_after_it_still_does() -> None:
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0,
                        clear_after_seconds=600.0,
                        practices={"lost_task": {"grace_seconds": GRACE}})
    with _blind_setup(settings, "blind", concurrency=2) as (exporter, proxy, worker, app):
        _run(exporter, proxy, worker, app, worker.name)


@contextmanager
def _blind_setup(settings: Settings, prefix: str, concurrency: int
                 ) -> Iterator[tuple[RunningExporter, BlackholeProxy, WorkerProcess, Any]]:
    """A fresh Redis database; the exporter reaching it through a proxy that can black
    it out; a threads worker (``concurrency`` slots) reaching it directly; the worker's
    app. Everything is killed and released on exit."""
    url = fresh_redis_url()
    db = int(url.rsplit("/", 1)[-1])
    try:
        with BlackholeProxy("127.0.0.1", 6379, trigger=b"\x00never\x00") as proxy:
            worker_app = killable.make_app(url)
            with RunningExporter(killable.make_app(proxy.url(db)), settings) as exporter:
                wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
                name = f"{prefix}{int(time.time() * 1000) % 100000}@fp-test"
                worker = WorkerProcess("tests.apps.killable", url, name=name, pool="threads",
                                       concurrency=concurrency).start(worker_app, timeout=60)
                try:
                    yield exporter, proxy, worker, worker_app
                finally:
                    worker.kill()
    finally:
        release_redis_dbs(url)


def _lost(exporter: RunningExporter) -> list[dict]:
    return exporter.findings("lost_task")


def _run(exporter: RunningExporter, proxy: BlackholeProxy, worker: WorkerProcess,
         app, name: str) -> None:
    app.send_task("killable.sleepy", args=("pid:blind", 600))
    wait_for(lambda: exporter.total("celery_task_events_total", type="started",
                                    task="killable.sleepy") >= 1,
             timeout=60, message="the long task started")
    wait_for(lambda: exporter.value("celery_worker_up", worker=name) == 1.0, timeout=30,
             message="the worker up")

    # blind: every connection of the exporter to Redis cut, new ones refused
    blind_before = exporter.total(DISCONNECTED)
    assert proxy.outage() >= 1
    wait_for(lambda: exporter.get("/healthz")[0] == 503, timeout=30,
             message="/healthz says the stream is down")
    assert exporter.get("/metrics")[0] == 200
    # judged again and again while blind, for longer than expiry plus grace
    wait_for(lambda: exporter.total(DISCONNECTED) - blind_before >= BLIND or _lost(exporter),
             timeout=BLIND + 60, interval=0.5, message="a long blind window")
    assert _lost(exporter) == [], "lost_task raised while the exporter was blind"
    # while blind, the worker keeps its last known state
    assert exporter.value("celery_worker_up", worker=name) == 1.0

    proxy.restore()
    wait_for(lambda: exporter.get("/healthz")[0] == 200, timeout=60,
             message="the stream is back")
    back = time.time()
    # evaluations long after the return, for longer than expiry plus grace: the worker was
    # heard again (heartbeats every 2 s) and its task is still running
    exporter.wait_evaluated(since=back + 4.0 + GRACE + 2.0, rounds=2, timeout=60)
    assert _lost(exporter) == [], "lost_task raised after the stream came back"
    assert exporter.total("celery_practice_violations_total", practice="lost_task") == 0
    assert exporter.value("celery_worker_up", worker=name) == 1.0

    # must fire: the worker is killed; its running task is lost
    worker.kill()
    found = wait_for(lambda: _lost(exporter), timeout=60,
                     message="lost_task for the killed worker's task")
    assert found[0]["task"] == "killable.sleepy"
    assert found[0]["worker"] == name


#: celery_queue_reserved_tasks of the worker's queue (the app's default queue)
RESERVED = ("celery_queue_reserved_tasks", "celery")


def test_tasks_reserved_before_a_blind_window_leave_the_reserved_gauge() -> None:
    """One pool slot (threads, prefetch 1): a gated task runs and a task waits reserved
    behind it. While the exporter is blind the gate opens and both run unheard: after the
    return ``celery_queue_reserved_tasks`` shows no phantom backlog. Must count: a task
    heard received after the return, waiting behind a new gated task, is in the gauge."""
    import redis

    settings = Settings(evaluation_interval=0.5, probe_interval=1.0)

    def reserved(exporter: RunningExporter) -> float | None:
        return exporter.value(RESERVED[0], queue=RESERVED[1])

    with _blind_setup(settings, "blindres", concurrency=1) as (exporter, proxy, worker,
                                                                 worker_app):
        store = redis.Redis.from_url(worker_app.conf.broker_url)
        try:
            def one_reserved_behind_a_gated_task(gate: str, pid_key: str, n: int) -> None:
                """The only slot held by a gated task (the ``n``-th), a task behind it."""
                worker_app.send_task("killable.gated", args=(gate, 300))
                wait_for(lambda: exporter.total("celery_task_events_total", type="started",
                                                task="killable.gated") >= n,
                         timeout=60, message=f"gated task {n} started")
                worker_app.send_task("killable.sleepy", args=(pid_key, 0))
                wait_for(lambda: reserved(exporter) == 1.0, timeout=60,
                         message=f"a task reserved behind gated task {n}")

            one_reserved_behind_a_gated_task("gate:before", "pid:behind", 1)

            assert proxy.outage() >= 1
            wait_for(lambda: exporter.get("/healthz")[0] == 503, timeout=30,
                     message="/healthz says the stream is down")
            store.set("gate:before", 1, ex=600)  # both run now, unheard
            wait_for(lambda: store.exists("pid:behind"), timeout=60,
                     message="the reserved task ran while the exporter was blind")
            assert reserved(exporter) == 1.0  # while blind: as last known
            proxy.restore()
            wait_for(lambda: exporter.get("/healthz")[0] == 200, timeout=60,
                     message="the stream is back")
            exporter.wait_evaluated(since=time.time(), rounds=2)
            assert reserved(exporter) == 0.0, "a phantom backlog after the window"

            # must count: reserved behind a gated task, both heard after the return
            one_reserved_behind_a_gated_task("gate:after", "pid:after", 2)
            store.set("gate:after", 1, ex=600)
            wait_for(lambda: reserved(exporter) == 0.0 and store.exists("pid:after"),
                     timeout=60, message="the reserved task started")
        finally:
            store.set("gate:before", 1, ex=600)
            store.set("gate:after", 1, ex=600)
