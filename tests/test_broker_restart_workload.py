"""The broker goes away under running tasks and comes back: real Redis (a private
redis-server, killed and started again) and real RabbitMQ (every connection of a vhost of
our own closed by the server, as a node restart or failover does to its clients), real
workers (prefork and threads), the real exporter.

Every client loses the broker: the exporter is blind for a while, and each worker's
consumer reconnects -- Celery then sends worker-offline and worker-online from the same
process while its pool keeps running the task. That is no restart: no ``lost_task``, and
the run is still counted running (``celery_worker_tasks_running``). Must fire: the same
worker SIGKILLed afterwards loses its task.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from flower_practices.config import Settings
from tests.apps import killable
from tests.support.brokers import (
    delete_vhost,
    fresh_redis_url,
    rabbitmq_vhost_url,
    release_redis_dbs,
)
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

GRACE = 2.0


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> Iterator[dict]:
    """``url``, ``outage()`` (the broker drops every client, which must reconnect) and
    ``pid_store`` (the Redis where the task publishes its pid)."""
    if request.param == "redis":
        node = request.getfixturevalue("private_redis")

        def outage() -> None:
            node["kill"]()
            node["start"]()

        yield {"url": node["url"], "outage": outage, "pid_store": node["url"]}
        return
    url = rabbitmq_vhost_url()
    store = fresh_redis_url()
    vhost = url.rsplit("/", 1)[-1]

    def close_all() -> None:
        subprocess.run(["rabbitmqctl", "close_all_connections", "--vhost", vhost,
                        "fp broker restart test"], check=True, capture_output=True,
                       timeout=60)

    try:
        yield {"url": url, "outage": close_all, "pid_store": store}
    finally:
        delete_vhost(url)
        release_redis_dbs(store)


@pytest.mark.parametrize(("broker", "pool"), [
    pytest.param("redis", "prefork", marks=pytest.mark.redis),
    pytest.param("redis", "threads", marks=pytest.mark.redis),
    pytest.param("rabbitmq", "prefork", marks=pytest.mark.rabbitmq),
], indirect=["broker"], ids=["redis-prefork", "redis-threads", "rabbitmq-prefork"])
def test_a_broker_restart_is_no_lost_task_and_a_kill_after_it_is(broker: dict,
                                                                  pool: str) -> None:
    url = broker["url"]
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0,
                        clear_after_seconds=600.0,
                        practices={"lost_task": {"grace_seconds": GRACE}})
    app = killable.make_app(url, broker["pid_store"])
    with RunningExporter(killable.make_app(url), settings) as exporter:
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        name = f"restart-{pool}-{int(time.time() * 1000) % 100000}@fp-test"
        worker = WorkerProcess("tests.apps.killable", url, name=name, pool=pool,
                               concurrency=2,
                               env={"FP_TEST_PID_REDIS": broker["pid_store"]}
                               ).start(app, timeout=60)
        try:
            app.send_task("killable.sleepy", args=("pid:restart", 600))
            wait_for(lambda: exporter.value("celery_worker_tasks_running", worker=name) == 1,
                     timeout=60, message="the long task running")
            reconnects = exporter.total("flower_practices_broker_reconnects_total")

            broker["outage"]()
            wait_for(lambda: exporter.total("flower_practices_broker_reconnects_total")
                     > reconnects and exporter.get("/healthz")[0] == 200, timeout=60,
                     message="the exporter lost the broker and reconnected")
            # the worker's consumer reconnects too (worker-offline, worker-online) and its
            # heartbeats flow again: judged well past its expiry plus the grace
            wait_for(lambda: "Connected to" in worker.log().split(
                "Connection to broker lost")[-1], timeout=60,
                message="the worker reconnected")
            back = time.time()
            exporter.wait_evaluated(since=back + 4.0 + GRACE + 2.0, rounds=2, timeout=60)
            assert exporter.findings("lost_task") == [], "a broker restart paged lost_task"
            assert exporter.total("celery_practice_violations_total",
                                  practice="lost_task") == 0
            assert exporter.value("celery_worker_up", worker=name) == 1.0
            assert exporter.value("celery_worker_tasks_running", worker=name) == 1.0

            # must fire: the worker killed; its running task is lost
            worker.kill()
            found = wait_for(lambda: exporter.findings("lost_task"), timeout=60,
                             message="lost_task for the killed worker's task")
            assert found[0]["task"] == "killable.sleepy"
            assert found[0]["worker"] == name
        finally:
            worker.kill()
