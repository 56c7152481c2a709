"""Units of the exporter's HTTP front end: the render cache and the web config file."""

from __future__ import annotations

import asyncio
import base64
import socket
import subprocess
import threading
from pathlib import Path

import bcrypt
import pytest

from flower_practices.exporter.cache import RenderCache
from flower_practices.exporter.webconfig import (
    BasicAuth,
    WebConfigError,
    load_web_config,
)
from tests.support.binaries import require_binary


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_concurrent_requests_share_one_render_and_it_is_cached() -> None:
    clock = Clock()
    release = threading.Event()
    calls: list[str] = []

    def render(key: object) -> bytes:
        calls.append(str(key))
        release.wait(10)  # keeps the render in flight while every request arrives
        return f"{key}-{len(calls)}".encode()

    cache = RenderCache(render, max_age=1.0, clock=clock)

    async def main() -> None:
        waiters = [asyncio.ensure_future(cache.get("text")) for _ in range(50)]
        other = asyncio.ensure_future(cache.get("openmetrics"))
        while len(calls) < 1:  # the first render in flight, every request arrived
            await asyncio.sleep(0.005)
        release.set()
        bodies = await asyncio.gather(*waiters)
        assert set(bodies) == {b"text-1"}  # fifty scrapers, one rendering
        assert await other == b"openmetrics-2"  # a format of its own
        assert await cache.get("text") == b"text-1"  # fresh: from the cache
        clock.now += 1.0
        assert await cache.get("text") == b"text-3"  # expired: rendered again

    try:
        asyncio.run(main())
    finally:
        cache.close()
    assert calls == ["text", "openmetrics", "text"]
    assert cache.renders == 3


def test_a_failed_render_reaches_every_waiter_and_is_not_cached() -> None:
    attempts = []

    def render(key: object) -> bytes:
        attempts.append(key)
        if len(attempts) == 1:
            raise RuntimeError("boom")
        return b"ok"

    cache = RenderCache(render, max_age=60.0)

    async def main() -> None:
        results = await asyncio.gather(*(cache.get("k") for _ in range(5)),
                                       return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        assert await cache.get("k") == b"ok"

    try:
        asyncio.run(main())
    finally:
        cache.close()
    assert len(attempts) == 2


def test_a_cancelled_scraper_does_not_cancel_the_shared_render() -> None:
    release = threading.Event()

    started = threading.Event()

    def render(key: object) -> bytes:
        started.set()
        release.wait(10)
        return b"page"

    cache = RenderCache(render, max_age=60.0)

    async def main() -> None:
        first = asyncio.ensure_future(cache.get("k"))
        second = asyncio.ensure_future(cache.get("k"))
        while not started.is_set():  # the shared render in flight
            await asyncio.sleep(0.005)
        first.cancel()  # the client hung up
        release.set()
        assert await second == b"page"

    try:
        asyncio.run(main())
    finally:
        cache.close()
    assert cache.renders == 1


HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "expected"), [
    ("basic_auth_users: [a, b]\n", "basic_auth_users must map"),
    ("basic_auth_users:\n  prom: plaintext\n", "basic_auth_users.prom: not a bcrypt hash"),
    ("basic_auth_user:\n  prom: x\n", "unknown key basic_auth_user"),
    ("http_server_config:\n  http2: false\n", "http_server_config is not supported"),
    ("tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
     "tls_server_config.cert_file: no such file"),
    ("tls_server_config:\n  key_file: x\n", "tls_server_config.cert_file must be a file path"),
    ("basic_auth_users: {prom: [1\n", "not valid YAML"),
    ("- 1\n- 2\n", "expected a mapping at the top level"),
])
def test_bad_web_config_is_one_line_naming_the_key(tmp_path: Path, text: str,
                                                   expected: str) -> None:
    with pytest.raises(WebConfigError) as info:
        load_web_config(_write(tmp_path, text))
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_tls_files_are_loaded_relative_to_the_config_file(tmp_path: Path) -> None:
    openssl = require_binary("openssl", "openssl")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(tmp_path / "c.pem")], check=True, capture_output=True)
    config = load_web_config(_write(
        tmp_path, f"tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n"
                  f"  min_version: TLS13\nbasic_auth_users:\n  prom: '{HASH}'\n"))
    assert config.ssl_context is not None and config.scheme == "https"
    assert config.auth_required
    with pytest.raises(WebConfigError, match="cannot load cert_file/key_file"):
        load_web_config(_write(tmp_path, "tls_server_config:\n  cert_file: k.pem\n"
                                         "  key_file: k.pem\n"))
    with pytest.raises(WebConfigError, match="needs client_ca_file"):
        load_web_config(_write(tmp_path, "tls_server_config:\n  cert_file: c.pem\n"
                                         "  key_file: k.pem\n"
                                         "  client_auth_type: RequireAndVerifyClientCert\n"))


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_checks_bcrypt_and_remembers_successes() -> None:
    auth = BasicAuth({"prom": HASH.encode()})

    async def main() -> None:
        assert await auth.check(_basic("prom", "s3cret")) is True
        assert await auth.check(_basic("prom", "wrong")) is False
        assert await auth.check(_basic("nobody", "s3cret")) is False
        assert await auth.check("Bearer abc") is False
        assert await auth.check("Basic !!!not-base64") is False
        auth.users = {}  # a remembered success no longer needs bcrypt (nor the user table)
        assert await auth.check(_basic("prom", "s3cret")) is True
        assert await auth.check(_basic("prom", "wrong")) is False

    try:
        asyncio.run(main())
    finally:
        auth.close()


def test_health_lane_reads_without_blocking_like_recv_dontwait():
    from flower_practices.exporter.lanes import _recv_now

    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(BlockingIOError):
            _recv_now(a)
        b.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert _recv_now(a) == b"GET /healthz HTTP/1.1\r\n"
        b.close()
        assert _recv_now(a) == b""


def test_health_lane_accepts_nonblocking_sockets_with_the_peer_address():
    from flower_practices.exporter.lanes import _accept_handler

    async def main() -> list:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.setblocking(False)
        got: list = []
        done = asyncio.Event()

        def accepted(conn: socket.socket, address: tuple) -> None:
            got.append((conn, address))
            if len(got) == 3:
                done.set()

        remove = _accept_handler(listener, accepted)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        await asyncio.wait_for(done.wait(), 30)
        remove()
        names = sorted(c.getsockname() for c in clients)
        for c in clients:
            c.close()
        listener.close()
        out = [(conn.getblocking(), address) for conn, address in got]
        for conn, _ in got:
            conn.close()
        return out, names

    got, names = asyncio.run(main())
    assert [blocking for blocking, _ in got] == [False] * 3
    assert sorted(address for _, address in got) == names
