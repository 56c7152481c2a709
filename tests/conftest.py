"""Shared fixtures: isolated real brokers, producer apps, workers and exporters."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from tests.support.brokers import (
    delete_vhost,
    fresh_redis_url,
    in_ci,
    rabbitmq_vhost_url,
    reachable,
    release_redis_dbs,
)
from tests.support.exporter import free_port


def pytest_configure(config) -> None:
    # Exporters and Flowers started by tests keep no state file unless a test passes
    # --state-dir / --practices_state_dir itself: no test restores another's findings or
    # writes into ~/.local/state.
    os.environ["FLOWER_PRACTICES_STATE_DIR"] = "none"


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A real Redis broker URL on a database of this test's own."""
    url = fresh_redis_url()
    yield url
    release_redis_dbs(url)


@pytest.fixture
def amqp_url() -> Iterator[str]:
    url = rabbitmq_vhost_url()
    yield url
    delete_vhost(url)


def make_producer(broker: str, *, sent_events: bool = True, backend: str | None = None) -> Celery:
    """A client app that publishes by task name, like a separate web process would."""
    app = Celery("producer", broker=broker, backend=backend, set_as_current=False)
    app.conf.task_send_sent_event = sent_events
    app.conf.broker_connection_retry_on_startup = True
    return app


@pytest.fixture
def private_redis() -> Iterator[dict]:
    """A redis-server of our own on a free port, so a test may kill and restart it."""
    yield from _private_redis()


@pytest.fixture(scope="module")
def private_redis_module() -> Iterator[dict]:
    """:func:`private_redis` shared by the tests of one module."""
    yield from _private_redis()


def _private_redis() -> Iterator[dict]:
    binary = shutil.which("redis-server")
    if binary is None:
        if in_ci():
            pytest.fail("redis-server binary not found (CI=true)")
        pytest.skip("redis-server binary not found")
    port = free_port()
    info: dict = {"port": port, "url": f"redis://127.0.0.1:{port}/0", "proc": None}

    def start() -> None:
        info["proc"] = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while not reachable("127.0.0.1", port, 0.2):
            if info["proc"].poll() is not None:  # e.g. the port was taken meanwhile
                raise RuntimeError(f"private redis-server exited ({info['proc'].returncode})")
            if time.time() > deadline:
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.05)
        pid = redis.Redis(port=port).info("server")["process_id"]
        if pid != info["proc"].pid:
            raise RuntimeError(f"port {port} is served by another redis-server (pid {pid})")

    def kill() -> None:
        proc = info["proc"]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    info["start"], info["kill"] = start, kill
    start()
    yield info
    kill()
