"""The exporter's ``/healthz`` process (``exporter/health_process.py``), for real.

- with the main process stopped (SIGSTOP) the health process still answers ``/healthz``:
  the published status at first, then -- once the main process has not updated it for
  ``STALE_SECONDS`` -- an honest 503 saying so; after SIGCONT it is 200 again and the
  connections handed over meanwhile are served;
- every other connection is handed over to the main process, keep-alive ones included
  (after their ``/healthz`` requests), with the bytes already read;
- no helper is left behind after SIGTERM, SIGINT, SIGHUP or SIGKILL of the exporter, and a
  helper that dies is replaced;
- unit level: the document equals ``api.health_document`` for the same stream status, the
  shared board round-trips, the request parser keeps odd requests for tornado.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
from pathlib import Path

import pytest

from flower_practices.api import health_document
from flower_practices.events.status import StreamStatus
from flower_practices.exporter.health_board import (
    STALE_SECONDS,
    StatusBoard,
    health_response,
    pack_handover,
    unpack_handover,
)
from flower_practices.exporter.health_process import _plain_health_get
from tests.support.events import publish_events, task_events
from tests.support.exporter import wait_for
from tests.test_exporter_http_limits import ExporterProcess, _raw


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _helper(exp: ExporterProcess) -> int:
    def found() -> int | None:
        for pid in _children(exp.proc.pid):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"flower_practices.exporter.health_process" in cmdline:
                return pid
        return None
    return wait_for(found, timeout=30, message="the /healthz process")  # type: ignore[return-value]


def _healthz(port: int, timeout: float = 5.0) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.redis
def test_healthz_answers_while_the_main_process_is_stopped(redis_url: str) -> None:
    with ExporterProcess(redis_url) as exp:
        publish_events(redis_url, task_events("hp.task", "hp", "w1@h"))
        helper = _helper(exp)
        assert exp.get("/metrics")[0] == 200  # handed over to the main process
        os.kill(exp.proc.pid, signal.SIGSTOP)
        try:
            # answered by the helper alone: the status as last published...
            status, doc = _healthz(exp.port)
            assert status == 200 and doc["status"] == "ok", doc
            # ...then, the main process silent, an honest 503 (each probe answered fast)

            def stale() -> dict | None:
                code, body = _healthz(exp.port)
                return body if code == 503 else None

            doc = wait_for(stale, timeout=STALE_SECONDS + 30, interval=0.5,
                           message="/healthz 503 while the main process is stopped")
            assert doc["status"] == "unavailable"  # type: ignore[index]
            silent = re.fullmatch(  # type: ignore[index]
                r"exporter not responding: its main process has not updated its status "
                r"for (\d+)s \(stopped, hung or starved of CPU\)", doc["reason"])
            assert silent and int(silent[1]) >= STALE_SECONDS, doc  # not before
            assert isinstance(doc["since"], float)  # type: ignore[index]
            # a scrape meanwhile is handed over and waits for the main process
            scrape = socket.create_connection(("127.0.0.1", exp.port), timeout=60)
            scrape.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _alive(helper)
        finally:
            os.kill(exp.proc.pid, signal.SIGCONT)
        wait_for(lambda: _healthz(exp.port)[0] == 200, timeout=30,
                 message="/healthz 200 after SIGCONT")
        data = b""
        with scrape:
            while chunk := scrape.recv(1 << 16):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200") and b"flower_practices_events_total" in data
        assert _helper(exp) == helper  # the same helper throughout


@pytest.mark.slow
@pytest.mark.redis
def test_connections_are_handed_over_with_what_was_read(redis_url: str) -> None:
    with ExporterProcess(redis_url) as exp:
        publish_events(redis_url, task_events("hp.task", "hp", "w1@h"))
        _helper(exp)
        # keep-alive: /healthz answered by the helper, then the connection is handed over
        # with the /metrics request it read; pipelined requests too
        with socket.create_connection(("127.0.0.1", exp.port), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /healthz?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(1 << 16):
                data += chunk
        assert data.count(b"HTTP/1.1 200 OK") == 3, data[:500]
        assert b"flower_practices_events_total" in data
        # what the helper does not serve itself is served as tornado serves it
        assert _raw(exp.port, b"GET /healthz HTTP/1.1\r\n\r\n").startswith(
            b"HTTP/1.1 400")  # HTTP/1.1 without Host
        assert _raw(exp.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
            b"HTTP/1.1 405")
        assert _raw(exp.port, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
            b"HTTP/1.1 404")
        # HTTP/1.0 keep-alive as tornado answers it
        answer = _raw(exp.port, b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK") and b"Connection: Keep-Alive" in answer


def _wait_gone(pid: int) -> None:
    wait_for(lambda: not _alive(pid), timeout=30, message=f"process {pid} gone")


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                 signal.SIGKILL])
def test_no_helper_left_behind(redis_url: str, sig: signal.Signals) -> None:
    with ExporterProcess(redis_url) as exp:
        helper = _helper(exp)
        exp.proc.send_signal(sig)
        exp.proc.wait(30)
        _wait_gone(helper)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", exp.port), timeout=5).close()


@pytest.mark.slow
@pytest.mark.redis
def test_a_helper_that_dies_is_replaced(redis_url: str) -> None:
    with ExporterProcess(redis_url) as exp:
        helper = _helper(exp)
        os.kill(helper, signal.SIGKILL)
        _wait_gone(helper)
        wait_for(lambda: _helper(exp) != helper, timeout=30, message="a new helper")
        wait_for(lambda: exp.get("/healthz")[0] == 200, message="/healthz again")
        assert exp.get("/metrics")[0] == 200
        assert "the /healthz process exited" in exp.output()


# -- unit level -------------------------------------------------------------------------

class _Engine:
    def __init__(self, status: StreamStatus) -> None:
        self.stream_status = status


def test_document_equals_the_main_process_one() -> None:
    status = StreamStatus()
    board = StatusBoard()
    try:
        for change in (status.begin, status.mark_connected,
                       lambda: status.mark_disconnected("ConnectionError"),
                       lambda: status.mark_disconnected("TimeoutError", final=True),
                       status.mark_connected):
            change()
            board.publish(status, heartbeat=True)
            code, body = health_response(board.read())
            assert (code, json.loads(body)) == health_document(_Engine(status))  # type: ignore[arg-type]
        # past the staleness limit: 503, however the stream was
        snapshot = board.read()
        assert snapshot is not None and snapshot.connected
        code, body = health_response(snapshot, now=snapshot.heartbeat + STALE_SECONDS + 3)
        doc = json.loads(body)
        assert code == 503 and doc["status"] == "unavailable"
        assert "has not updated its status for 13s" in doc["reason"]
    finally:
        board.close()


def test_board_round_trips_a_long_error_and_the_counters() -> None:
    status = StreamStatus()
    status.begin()
    status.mark_disconnected("é" * 5000)
    board = StatusBoard()
    try:
        assert board.read() is None
        board.publish(status)
        snapshot = board.read()
        assert snapshot is not None and not snapshot.connected
        assert snapshot.last_error == "é" * 512 and snapshot.down_since is not None
        other = StatusBoard(os.dup(board.fd))  # the helper's view
        board.set_main_connections(7)
        other.set_health_connections(3)
        assert other.main_connections() == 7 and board.health_connections() == 3
        other.close()
    finally:
        board.close()


def test_a_closed_board_takes_late_writes_without_raising() -> None:
    """At shutdown a connection can close after the board was unmapped (seen: tornado's
    on_close reporting the count to a closed mmap raised TypeError in the IOLoop)."""
    status = StreamStatus()
    status.begin()
    board = StatusBoard()
    board.publish(status)
    board.close()
    board.close()  # idempotent
    board.set_main_connections(2)
    board.set_health_connections(1)
    board.publish(status, heartbeat=True)
    assert board.read() is None
    assert board.main_connections() == 0 and board.health_connections() == 0


def test_request_parser_keeps_odd_requests_for_tornado() -> None:
    assert _plain_health_get(b"GET /healthz HTTP/1.1\r\nHost: x") == (True, b"")
    assert _plain_health_get(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Close") == (
        False, b"Connection: close\r\n")
    assert _plain_health_get(b"GET /healthz HTTP/1.0") == (False, b"")
    assert _plain_health_get(b"GET /healthz HTTP/1.1\nHost: x\nContent-Length: 0") == (
        True, b"")
    for odd in (b"GET /healthz HTTP/1.1",  # no Host: 400
                b"HEAD /healthz HTTP/1.1\r\nHost: x",
                b"GET /healthz HTTP/2.0\r\nHost: x",
                b"GET  /healthz HTTP/1.1\r\nHost: x",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n folded",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon"):
        assert _plain_health_get(odd) is None, odd
    entries = [(socket.AF_INET, ("127.0.0.1", 5), b"GET / HTTP/1.1\r\n"),
               (socket.AF_INET6, ("::1", 65535, 0, 3), b""),
               (socket.AF_INET, ("10.0.0.1", 80), b"x" * 70000)]
    assert unpack_handover(pack_handover(entries)) == entries
    assert unpack_handover(pack_handover([])) == []
