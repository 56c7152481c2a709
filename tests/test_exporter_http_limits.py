"""The standalone exporter's HTTP front end, as a real process over real sockets.

- request bodies are refused before they are read: three 30 MB POSTs to ``/metrics`` leave
  RSS where it was; a connection past ``max_connections`` gets an immediate 503;
- concurrent scrapers of a multi-megabyte page share renderings (one per flight) while
  ``/healthz`` keeps answering;
- ``--web-config-file``: basic auth with a bcrypt hash (401/200, ``/healthz`` open), a
  scrape over TLS with a self-signed certificate, and a bad file → exit 2, one line;
- the start-up log names the address actually bound.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.binaries import require_binary
from tests.support.events import publish_events, task_events
from tests.support.exporter import free_port, wait_for
from tests.support.process import log_tail, stop_process
from tests.support.worker import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.redis]


class ExporterProcess:
    """``python -m flower_practices exporter`` in a subprocess, its log in a file."""

    def __init__(self, broker: str, *, config: str = "", host: str = "127.0.0.1",
                 web_config: Path | None = None, scheme: str = "http",
                 context: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.scheme = scheme
        self.context = context
        self.log = Path(tempfile.mkstemp(prefix="fp-exporter-", suffix=".log")[1])
        cfg = Path(tempfile.mkstemp(prefix="fp-exporter-", suffix=".toml")[1])
        cfg.write_text("[exporter]\nprobe_interval = 3600\n" + config)
        cmd = [sys.executable, "-m", "flower_practices", "exporter", "--broker", broker,
               "--host", host, "--port", str(self.port), "--config", str(cfg)]
        if web_config is not None:
            cmd += ["--web-config-file", str(web_config)]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=str(ROOT))
        wait_for(self._up, timeout=40, message="the exporter to listen")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"exporter exited early:\n{self.output()}")
        return self.get("/healthz")[0] == 200

    def get(self, path: str, auth: tuple[str, str] | None = None,
            timeout: float = 30) -> tuple[int, bytes, Any]:
        request = urllib.request.Request(f"{self.scheme}://127.0.0.1:{self.port}{path}")
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.context) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers
        except OSError:
            return 0, b"", {}

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    def output(self) -> str:
        return log_tail(self.log)

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> ExporterProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _raw(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send ``request`` and return what the server answers (up to the first 4 KiB)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        try:
            return sock.recv(4096)
        except ConnectionResetError:
            return b""


def _post_huge(port: int, size: int, results: list) -> None:
    """POST ``size`` bytes to /metrics; record the status line the server answered."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        sock.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: %d\r\n\r\n" % size)
        chunk = b"x" * (1 << 20)
        sent = 0
        try:
            while sent < size:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # the server closed the connection: the rest is never read
            pass
        try:
            results.append((sent, sock.recv(64)))
        except OSError:
            results.append((sent, b""))
    finally:
        sock.close()


def test_bodies_refused_unread_connections_bounded_and_real_bind_address(
        redis_url: str) -> None:
    with ExporterProcess(redis_url, host="0.0.0.0", config="max_connections = 8\n") as exp:
        # the log names the address actually bound, not a loopback it does not bind
        wait_for(lambda: f"http://0.0.0.0:{exp.port}" in exp.output(),
                 message="the bind address in the log")
        assert "127.0.0.1" not in exp.output().split("listening on", 1)[1].split("\n")[0]

        # refused as soon as the headers announce the size: nothing of the body is sent
        answer = _raw(exp.port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Length: 31457280\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400"), answer
        # a chunked body is cut off at the limit too
        answer = _raw(exp.port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n"
                                + b"1000\r\n" + b"y" * 4096 + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 400"), answer

        assert exp.get("/metrics")[0] == 200
        before = exp.rss_kib()
        results: list = []
        posters = [threading.Thread(target=_post_huge, args=(exp.port, 30 << 20, results))
                   for _ in range(3)]
        for t in posters:
            t.start()
        for t in posters:
            t.join(60)
        after = exp.rss_kib()
        assert len(results) == 3
        # none of the 90 MB was buffered: the server stopped reading after the headers
        assert after - before < 10 * 1024, (before, after)
        assert all(sent < 30 << 20 or status.startswith(b"HTTP/1.1 400")
                   for sent, status in results), results
        assert exp.get("/healthz")[0] == 200

        # connections: 8 open keep-alive connections are the limit; a 9th is served, and
        # the one that has waited longest for a request is closed to make room
        idle = []
        try:
            for _ in range(8):
                sock = socket.create_connection(("127.0.0.1", exp.port), timeout=10)
                idle.append(sock)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            answer = _raw(exp.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200"), answer
            assert idle[0].recv(4096) == b""  # the oldest idle one, closed for room
        finally:
            for sock in idle:
                sock.close()
        wait_for(lambda: exp.get("/healthz")[0] == 200, message="served again")
        assert exp.proc.poll() is None


def _scrape(port: int, barrier: threading.Barrier, out: list) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    try:
        barrier.wait(60)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = bytearray()
        while chunk := sock.recv(1 << 16):
            data += chunk
        out.append(bytes(data))
    finally:
        sock.close()


def test_concurrent_scrapers_share_renderings_and_healthz_answers(redis_url: str) -> None:
    # cache window 0: only single flight shares renderings, so the count of distinct pages
    # measures flights; process_cpu_seconds_total differs between any two renderings
    with ExporterProcess(redis_url, config="metrics_cache_seconds = 0\n"
                                           "max_task_names = 2000\n"
                                           "max_series_per_metric = 100000\n") as exp:
        events = []
        for i in range(1500):
            events += task_events(f"bulk.task_{i}", "bulk", "w1@h")
        publish_events(redis_url, events)

        def counted() -> bool:
            status, body, _ = exp.get("/metrics")
            match = re.search(rb"^flower_practices_events_total(?:\{[^}]*\})? (\S+)$", body,
                              re.M)
            return status == 200 and match is not None and float(match.group(1)) >= len(events)

        wait_for(counted, timeout=60, message="the bulk events counted")
        assert len(exp.get("/metrics")[1]) > 2_000_000

        scrapers = 150
        barrier = threading.Barrier(scrapers + 1)
        pages: list[bytes] = []
        threads = [threading.Thread(target=_scrape, args=(exp.port, barrier, pages),
                                    daemon=True) for _ in range(scrapers)]
        for t in threads:
            t.start()
        health: list[int] = []
        barrier.wait(60)
        while any(t.is_alive() for t in threads):
            health.append(exp.get("/healthz", timeout=30)[0])
        for t in threads:
            t.join(120)

        assert len(pages) == scrapers
        bodies = []
        for page in pages:
            head, _, body = page.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            assert len(body) == length > 2_000_000
            bodies.append(hashlib.sha256(body).hexdigest())
        # one rendering per flight, not one per scraper
        assert len(set(bodies)) <= 10, len(set(bodies))
        families = list(text_string_to_metric_families(pages[0].partition(b"\r\n\r\n")[2]
                                                       .decode()))
        assert any(f.name == "celery_task_events" for f in families)
        # /healthz answered while the scrapes were served (timing is the benchmark's job)
        assert health and all(status == 200 for status in health), health


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> Path:
    openssl = require_binary("openssl", "openssl")
    directory = tmp_path_factory.mktemp("tls")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(directory / "server.key"),
                    "-out", str(directory / "server.crt")], check=True, capture_output=True)
    return directory


def test_basic_auth_and_tls_from_the_web_config_file(redis_url: str, tls_files: Path) -> None:
    hashed = bcrypt.hashpw(b"scrape-me", bcrypt.gensalt(rounds=6)).decode()
    web = tls_files / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                   f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    context = ssl.create_default_context(cafile=str(tls_files / "server.crt"))
    with ExporterProcess(redis_url, web_config=web, scheme="https", context=context) as exp:
        assert f"https://127.0.0.1:{exp.port}" in exp.output()
        status, _, headers = exp.get("/metrics")
        assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Basic")
        assert exp.get("/metrics", auth=("prometheus", "wrong"))[0] == 401
        assert exp.get("/metrics", auth=("nobody", "scrape-me"))[0] == 401
        assert exp.get("/api/practices")[0] == 401
        assert exp.get("/")[0] == 401
        for _ in range(3):  # the second and third are answered from the remembered check
            status, body, _ = exp.get("/metrics", auth=("prometheus", "scrape-me"))
            assert status == 200
            names = {f.name for f in text_string_to_metric_families(body.decode())}
            assert "flower_practices_events" in names
        assert exp.get("/api/practices", auth=("prometheus", "scrape-me"))[0] == 200
        # what Prometheus sends: OpenMetrics, gzip -- a rendering cached per format
        token = base64.b64encode(b"prometheus:scrape-me").decode()
        request = urllib.request.Request(
            f"https://127.0.0.1:{exp.port}/metrics",
            headers={"Authorization": f"Basic {token}", "Accept-Encoding": "gzip",
                     "Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"})
        with urllib.request.urlopen(request, timeout=30, context=context) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            text = gzip.decompress(resp.read()).decode()
        assert text.endswith("# EOF\n") and "flower_practices_events_total" in text
        assert exp.get("/healthz")[0] == 200  # open by design (documented)
        # plain HTTP on the TLS port gets no page
        plain = _raw(exp.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert not plain.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("text", [
    "basic_auth_users:\n  prometheus: not-a-hash\n",
    "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
    "basic_auth_users: {oops\n",
    "unknown_section: 1\n",
])
def test_bad_web_config_file_exits_2_with_one_line(tmp_path: Path, text: str) -> None:
    web = tmp_path / "web.yml"
    web.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "flower_practices", "exporter",
                           "--broker", "redis://127.0.0.1:6379/0", "--port", str(free_port()),
                           "--web-config-file", str(web)],
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT),
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {web}"), proc.stderr
    assert "Traceback" not in proc.stderr


def _keep_alive_statuses(port: int, paths: list[str]) -> list[tuple[int, int]]:
    """GET each of ``paths`` over one keep-alive connection: (status, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        out = []
        for path in paths:
            conn.request("GET", path)
            response = conn.getresponse()
            out.append((response.status, len(response.read())))
            assert not response.will_close, f"{path} closed the keep-alive connection"
        return out
    finally:
        conn.close()


def test_both_lanes_serve_every_endpoint_and_a_split_request_line(redis_url: str) -> None:
    """The /healthz lane routes on the first request line: a connection that starts with
    /healthz stays on that lane and is served /metrics and /api/practices there (the
    render cache shared across the two loops); one that starts with /metrics stays on the
    main lane and is served /healthz there; a request line arriving in pieces is routed
    once it is complete."""
    with ExporterProcess(redis_url) as exp:
        publish_events(redis_url, task_events("lanes.task", "lanes", "w1@h"))
        health_first = _keep_alive_statuses(
            exp.port, ["/healthz", "/metrics", "/api/practices", "/healthz", "/metrics"])
        assert [s for s, _ in health_first] == [200] * 5, health_first
        assert health_first[1][1] > 1000 and health_first[4][1] > 1000
        metrics_first = _keep_alive_statuses(exp.port, ["/metrics", "/healthz", "/metrics"])
        assert [s for s, _ in metrics_first] == [200] * 3, metrics_first

        for path in (b"/healthz", b"/metrics"):
            with socket.create_connection(("127.0.0.1", exp.port), timeout=20) as sock:
                sock.sendall(b"GET " + path[:4])
                threading.Event().wait(0.3)  # the lane has the first piece, not the line
                sock.sendall(path[4:] + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := sock.recv(1 << 16):
                    data += chunk
            assert data.startswith(b"HTTP/1.1 200"), (path, data[:200])
        assert exp.proc.poll() is None


def test_an_unparsable_accept_header_gets_the_text_format(redis_url: str) -> None:
    """prometheus_client's content negotiation raises on some ``Accept`` headers (an
    OpenMetrics ``version`` that is not a number): one unauthenticated request must not
    get a 500 and leave a traceback in the log each time. It is served the text format;
    a well-formed OpenMetrics request still gets OpenMetrics."""
    with ExporterProcess(redis_url) as exp:
        for accept in (b"application/openmetrics-text; version=abc",
                       b"application/openmetrics-text; version=<script>",
                       b"application/openmetrics-text;;;version===, text/plain;q=x"):
            answer = _raw(exp.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: " + accept
                          + b"\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200"), (accept, answer[:300])
            assert b"Content-Type: text/plain; version=0.0.4" in answer, answer[:300]
        answer = _raw(exp.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: "
                      b"application/openmetrics-text; version=1.0.0\r\n"
                      b"Connection: close\r\n\r\n")
        assert b"Content-Type: application/openmetrics-text" in answer, answer[:300]
        assert exp.proc.poll() is None
        assert "Traceback" not in exp.output() and "Uncaught" not in exp.output()


def test_concurrent_api_requests_share_one_document(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``/api/practices`` is unauthenticated by default and its document (up to 2000
    findings: ~1 MB, ~15 ms, part of it under the engine's lock) was built on the event
    loop for every request: a flood of requests stalled the loop and the event consumer.
    Requests that arrive while a document is being built now share it (single flight,
    off the loop), as scrapers of /metrics share a rendering."""
    from flower_practices.exporter import handlers
    from tests.conftest import make_producer
    from tests.support.exporter import RunningExporter

    real = handlers.practices_document
    builds: list[float] = []

    def slow_document(engine: Any, **kwargs: Any) -> dict:
        builds.append(1.0)
        threading.Event().wait(0.3)  # as long as a document of thousands of findings
        return real(engine, **kwargs)

    monkeypatch.setattr(handlers, "practices_document", slow_document)
    with RunningExporter(make_producer(redis_url), metrics_cache_seconds=0.0) as exp:
        clients = 40
        barrier = threading.Barrier(clients)
        answers: list[tuple[int, str]] = []

        def ask() -> None:
            barrier.wait(30)
            answers.append(exp.get("/api/practices"))

        threads = [threading.Thread(target=ask, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [status for status, _ in answers] == [200] * clients
        assert all("findings" in json_doc for _, json_doc in answers)
        assert len(builds) <= 4, f"{len(builds)} documents built for {clients} requests"


@pytest.mark.parametrize("partial", [
    pytest.param(b"GET /heal", id="request-line"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHo", id="healthz-headers"),
    pytest.param(b"GET /metrics HTTP/1.1\r\nHo", id="metrics-headers"),
])
def test_connections_that_never_finish_a_request_do_not_lock_out_healthz(
        redis_url: str, partial: bytes) -> None:
    """A slow-loris client: twice ``max_connections`` connections, each sending part of
    a request (the request line; the headers of a /healthz the /healthz process keeps;
    the headers of a /metrics handed to the main process) and then nothing. The oldest
    waiting ones are closed to make room, and /healthz (what a liveness probe asks) and
    /metrics still answer."""
    with ExporterProcess(redis_url, config="max_connections = 8\n") as exp:
        slow = []
        try:
            for _ in range(16):
                sock = socket.create_connection(("127.0.0.1", exp.port), timeout=5)
                sock.sendall(partial)
                slow.append(sock)

            def closed() -> int:  # by the server, to make room (EOF, no answer)
                n = 0
                for sock in slow:
                    try:
                        sock.setblocking(False)
                        if sock.recv(4096) == b"":
                            n += 1
                    except BlockingIOError:
                        pass
                    except OSError:
                        n += 1
                return n

            wait_for(lambda: closed() >= 8, timeout=30,
                     message="the oldest waiting connections closed for room")
            for _ in range(5):
                assert exp.get("/healthz", timeout=5)[0] == 200
                assert exp.get("/metrics", timeout=5)[0] == 200
        finally:
            for sock in slow:
                sock.close()
