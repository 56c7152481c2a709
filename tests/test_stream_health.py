"""Unit tests of the stream's health bookkeeping, the reconnect back-off and the broker
URL check (no broker needed; the real outages are in tests/test_hardening_broker.py)."""

from __future__ import annotations

import pytest

from flower_practices.brokers import broker_url_problem
from flower_practices.events import status as status_module
from flower_practices.events.reconnect import MAX_BACKOFF, MIN_BACKOFF, jittered
from flower_practices.events.status import StreamStatus


class FakeClock:
    """Stands in for the ``time`` module inside :mod:`flower_practices.events.status`:
    time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(status_module, "time", fake)
    return fake


def test_blind_time_counts_from_the_start_and_includes_the_ongoing_gap(
        clock: FakeClock) -> None:
    status = StreamStatus()
    assert status.disconnected_seconds() == 0.0  # not consuming yet: not blind
    clock.advance(5)
    assert status.disconnected_seconds() == 0.0
    status.begin()
    clock.advance(1.5)
    assert status.disconnected_seconds() == 1.5  # connecting at start-up is blind time
    status.mark_connected()
    clock.advance(10)
    assert status.disconnected_seconds() == 1.5  # frozen while connected
    assert status.gaps == 0

    status.mark_disconnected("ConnectionError: gone")
    assert status.gaps == 1
    clock.advance(2)
    assert status.disconnected_seconds() == 3.5  # the ongoing gap grows the counter
    status.mark_disconnected("ConnectionRefusedError: refused")  # a failed retry
    assert status.gaps == 1  # the same gap
    clock.advance(1)
    status.mark_connected()
    assert status.disconnected_seconds() == 4.5
    status.mark_disconnected("again")
    assert status.gaps == 2


def test_reason_is_current(clock: FakeClock) -> None:
    status = StreamStatus()
    status.begin()
    status.mark_connected()
    status.mark_disconnected("ConnectionError: closed by the server")
    status.mark_disconnected("ConnectionRefusedError: [Errno 111] refused")
    reason = status.reason()
    assert reason.startswith("event stream not connected: ConnectionRefusedError")
    assert "disconnected for 0s" in reason and "last attempt 0s ago" in reason
    clock.advance(42)
    assert "disconnected for 42s" in status.reason()
    assert "last attempt 42s ago" in status.reason()
    status.mark_disconnected("ConnectionRefusedError: [Errno 111] refused")
    assert "disconnected for 42s, last attempt 0s ago" in status.reason()


def test_a_stopped_stream_and_a_database_broker_are_not_blind_time(clock: FakeClock) -> None:
    status = StreamStatus()
    status.mark_disconnected("the broker is a database", final=True)
    clock.advance(30)
    assert status.disconnected_seconds() == 0.0 and status.gaps == 0
    status.begin()
    status.mark_connected()
    clock.advance(3)
    status.mark_disconnected("stopped", final=True)
    frozen = status.disconnected_seconds()
    clock.advance(30)
    assert status.disconnected_seconds() == frozen


def test_backoff_is_jittered_and_capped() -> None:
    step, waits = MIN_BACKOFF, []
    for _ in range(20):
        wait = jittered(min(step, MAX_BACKOFF))
        assert min(step, MAX_BACKOFF) / 2 <= wait <= min(step, MAX_BACKOFF)
        waits.append(wait)
        step *= 2
    assert max(waits) <= 5.0 and len(set(waits)) > 1


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0", "redis://:pw@h:6379/15", "rediss://h:6380/1",
    "amqp://guest:guest@127.0.0.1:5672//", "amqp://u:p@h/vhost", "pyamqp://h//",
    "memory://", "redis://h/1;redis://g/2", "sqla+postgresql://u:p@h/db",
    "sentinel://h:26379;sentinel://g:26379",
])
def test_broker_urls_that_may_work_pass(url: str) -> None:
    assert broker_url_problem(url) is None


@pytest.mark.parametrize(("url", "needle"), [
    ("nosuch://h//", "unknown scheme 'nosuch'"),
    ("redis://h:99999/0", "out of range"),
    ("redis://h:6379/zero", "Redis database 'zero' is not a number"),
    ("redis://h/0;redis://g:70000/0", "out of range"),
    ("amqp://u:secret@h:abc//", "could not be cast"),
])
def test_broker_urls_that_can_never_work_are_named(url: str, needle: str) -> None:
    problem = broker_url_problem(url)
    assert problem is not None and needle in problem
    assert "secret" not in problem


def test_close_cause_blames_the_output_buffer_limit_only_on_its_signals(
        caplog: pytest.LogCaptureFixture) -> None:
    """Redis >= 7.2 counts these disconnections (this machine's 7.0 does not: the real
    flood test in test_hardening_broker.py covers the other branch)."""
    from flower_practices.events.redis_close import CloseCause
    from tests.support.exporter import free_port

    cause = CloseCause(("127.0.0.1", free_port()), (None, None))  # CONFIG GET unreachable
    key = b"client_output_buffer_limit_disconnections"
    cause.before = {b"run_id": b"a", key: b"3", b"evicted_clients": b"0"}
    assert cause.explain({b"run_id": b"a", key: b"3", b"evicted_clients": b"0"}) is None
    assert cause.explain({b"run_id": b"b", key: b"9"}) is None  # restarted: not the limit
    assert cause.explain({}) is None  # INFO not answered: unknown
    said = cause.explain({b"run_id": b"a", key: b"4", b"evicted_clients": b"0"})
    assert said is not None and "client-output-buffer-limit pubsub" in said
    assert "client-output-buffer-limit pubsub" in caplog.text
    # older Redis without the counter and with no readable limit: no claim
    cause.before = {b"run_id": b"a", b"evicted_clients": b"0"}
    assert cause.explain({b"run_id": b"a", b"evicted_clients": b"0"}) is None
