"""unread_results on a Sentinel result backend (``sentinel://``, Redis HA).

A real redis-server as the master and a real Redis Sentinel monitoring it: the exporter
reaches the master the way Celery's ``SentinelBackend`` does (the URL's sentinels, the
master's name from ``result_backend_transport_options``) and reads idle times and result
channels there. Without ``master_name`` the coverage says why it cannot.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from flower_practices.assembly import build_engine
from flower_practices.config import Settings
from flower_practices.probes.results import KEY_PREFIX, ResultStore
from tests.support.brokers import reachable
from tests.support.exporter import free_port, wait_for

MASTER = "fp-results"


@pytest.fixture
def sentinel(private_redis: dict, tmp_path: Path) -> Iterator[str]:
    """The URL of a Redis Sentinel (``sentinel://127.0.0.1:<port>/0``) that monitors the
    private redis-server as master :data:`MASTER`."""
    binary = shutil.which("redis-server")
    assert binary is not None  # else private_redis skipped (or failed under CI) already
    port = free_port()
    conf = tmp_path / "sentinel.conf"  # Sentinel rewrites its configuration file
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {private_redis['port']} 1\n"
                    f"sentinel down-after-milliseconds {MASTER} 60000\n")
    proc = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: reachable("127.0.0.1", port, 0.2), timeout=10,
                 message="redis sentinel listening")
        client = redis.Redis(port=port)
        wait_for(lambda: client.sentinel_get_master_addr_by_name(MASTER), timeout=10,
                 message="the sentinel to know its master")
        yield f"sentinel://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(10)


def test_idle_times_and_channels_are_read_on_the_sentinels_master(
        sentinel: str, private_redis: dict) -> None:
    store = ResultStore.from_url(sentinel, transport_options={"master_name": MASTER})
    assert store is not None
    master = redis.Redis.from_url(private_redis["url"])
    written, absent = uuid.uuid4().hex, uuid.uuid4().hex
    master.set(KEY_PREFIX + written, b"{}")
    idle, clock = store.idle_times_clocked([written, absent])
    assert idle == {written: idle[written], absent: None} and idle[written] >= 0
    assert clock is not None
    waiter = master.pubsub()
    waiter.subscribe(KEY_PREFIX + written)
    wait_for(lambda: store.subscribed(100) == ({written}, True), timeout=5,
             message="the subscription seen through the sentinel's master")
    waiter.close()


def test_the_sentinels_connections_stay_bounded_with_sentinel_kwargs(sentinel: str) -> None:
    """``sentinel_kwargs`` (e.g. the sentinels' own password) replace the connection
    options for the sentinel connections: the exporter's timeouts are kept under them
    (redis-py before 8 has no default), so an unresponsive sentinel cannot hang the
    evaluation."""
    store = ResultStore.from_url(sentinel, transport_options={
        "master_name": MASTER, "sentinel_kwargs": {"socket_keepalive": True}})
    assert store is not None
    absent = uuid.uuid4().hex
    assert store.idle_times([absent]) == {absent: None}  # reached the master
    [sentinel_client] = store.client.connection_pool.sentinel_manager.sentinels
    kwargs = sentinel_client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 5 and kwargs["socket_keepalive"] is True


def app_with(backend: str, **options: object) -> Celery:
    app = Celery("sentinel_results", broker="redis://127.0.0.1:1/0", backend=backend,
                 set_as_current=False)
    if options:
        app.conf.result_backend_transport_options = dict(options)
    return app


def test_the_engine_of_an_app_on_sentinel_results_is_active(sentinel: str) -> None:
    engine = build_engine(app_with(sentinel, master_name=MASTER), Settings(),
                          app_loaded=True)
    assert engine.ctx.results is not None
    assert engine.coverage()["unread_results"] == "active"


def test_without_master_name_the_coverage_says_why(sentinel: str) -> None:
    engine = build_engine(app_with(sentinel), Settings(), app_loaded=True)
    assert engine.ctx.results is None
    assert engine.coverage()["unread_results"] == (
        "unsupported: cannot use the result backend (a sentinel:// result backend needs "
        "master_name in result_backend_transport_options (known with -A))")
