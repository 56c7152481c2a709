"""Reachability of the real brokers, and isolated broker URLs per test.

Outside CI a missing broker skips the test with the reason; under ``CI=true`` it fails.
Redis isolation: each test gets its own database number (kombu scopes the event fanout
channel by database). RabbitMQ isolation: each test session gets its own vhost.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

REDIS_HOST = os.environ.get("FP_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("FP_TEST_REDIS_PORT", "6379"))
AMQP_HOST = os.environ.get("FP_TEST_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("FP_TEST_AMQP_PORT", "5672"))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require(service: str, host: str, port: int) -> None:
    """Skip (or, under CI, fail) when ``service`` is not listening."""
    if reachable(host, port):
        return
    message = f"{service} is not reachable on {host}:{port}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: broker-backed tests must run)")
    pytest.skip(f"{message}; start it to run this test")


def fresh_redis_url() -> str:
    """A redis:// URL on a database (1-15) claimed for this test and flushed.

    Claims live in database 0 as ``fp-test-claim:<db>`` keys with a one-hour expiry, so
    concurrent test runs on one Redis do not share (and flush) each other's databases.
    """
    import redis

    require("Redis", REDIS_HOST, REDIS_PORT)
    claims = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    owner = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    for _ in range(600):
        for db in range(1, 16):
            if claims.set(f"fp-test-claim:{db}", owner, nx=True, ex=3600):
                _claimed.append(db)
                redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db).flushdb()
                return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
        time.sleep(0.5)
    raise RuntimeError("no free Redis test database (1-15) for 5 minutes")


_claimed: list[int] = []


def release_redis_dbs(url: str | None = None) -> None:
    """Flush and release the database of ``url`` (None: every one this process claimed).

    A fixture releases its own database only, so a module-scoped environment that is still
    running is never flushed by another fixture's teardown.
    """
    import redis

    dbs = [int(url.rsplit("/", 1)[-1])] if url else list(_claimed)
    claims = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    for db in dbs:
        if db not in _claimed:
            continue
        _claimed.remove(db)
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db).flushdb()
        claims.delete(f"fp-test-claim:{db}")


def rabbitmq_vhost_url() -> str:
    """An amqp:// URL on a vhost created for this test (deleted by the caller)."""
    require("RabbitMQ", AMQP_HOST, AMQP_PORT)
    vhost = f"fp-test-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True,
                       timeout=60)
        subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*",
                        ".*"], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        # Sharing the default vhost would mix this test's queues and counts with whatever
        # else runs on the broker: refuse instead of passing on contaminated numbers.
        message = (f"cannot create a private RabbitMQ vhost with rabbitmqctl "
                   f"({type(exc).__name__}: {exc})")
        if in_ci():
            pytest.fail(f"{message} (CI=true: broker-backed tests must run)")
        pytest.skip(message)
    return f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{vhost}"


def delete_vhost(url: str) -> None:
    vhost = url.rsplit("/", 1)[-1]
    if vhost.startswith("fp-test-"):
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)


@contextmanager
def broker_and_redis(kind: str) -> Iterator[tuple[str, str]]:
    """A broker URL of ``kind`` (``"redis"``: a database of its own; ``"rabbitmq"``: a
    vhost of its own) and a Redis URL beside it for what tasks hand back to the test (the
    broker's own database on Redis); both released after."""
    redis_url = broker = fresh_redis_url()
    try:
        if kind == "rabbitmq":
            broker = rabbitmq_vhost_url()
        yield broker, redis_url
    finally:
        release_redis_dbs(redis_url)
        if broker != redis_url:
            delete_vhost(broker)
