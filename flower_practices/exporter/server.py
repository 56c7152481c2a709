"""Run the standalone exporter: engine threads plus the HTTP server on the main IOLoop.

HTTP limits (every endpoint is GET-only):

- request bodies: at most :data:`MAX_BODY_SIZE` bytes; a larger ``Content-Length`` (or a
  chunked body growing past it) is answered ``400`` and the connection closed before any of
  the body is read, so a 30 MB POST costs nothing;
- headers: at most :data:`MAX_HEADER_SIZE` bytes, and they must arrive within
  ``http_idle_timeout_seconds``, which is also how long an idle keep-alive connection is kept;
- connections: at most ``max_connections`` open at once; at the cap the connection that
  has waited longest for a request (an idle keep-alive, or a request that never finishes:
  a slow-loris client) is closed to make room, and only when none waits is one more
  answered an immediate ``503`` with ``Retry-After: 1`` and closed. Connections not yet
  accepted wait in the listen backlog (:data:`LISTEN_BACKLOG`, capped by the kernel's
  ``net.core.somaxconn``).

``/healthz`` is served by a process of its own (:mod:`.health_process`, which also accepts
every connection and hands all but ``/healthz`` to this one), so ``/metrics`` load cannot
delay it, not even through the GIL; with TLS (the session cannot be handed across
processes), or where the platform lacks memfd/SCM_RIGHTS, by a lane of its own in this
process instead (:mod:`.lanes`: its own thread and loop). The connection cap counts both.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import socket
import sys
from typing import Any

from celery import Celery
from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPMessageDelegate
from tornado.iostream import IOStream, StreamClosedError
from tornado.netutil import bind_sockets

from ..assembly import EngineRunner, build_engine
from ..config import Settings
from ..metrics import PracticesCollector
from . import health_link
from .handlers import make_application
from .health_board import BUSY as _BUSY
from .health_board import StatusBoard
from .health_link import HealthProcess
from .lanes import HealthLane
from .webconfig import BasicAuth, WebConfig

log = logging.getLogger("flower_practices.exporter")

#: request body bytes accepted (the endpoints are GET-only: nothing needs a body)
MAX_BODY_SIZE = 1024
#: request line + header bytes accepted
MAX_HEADER_SIZE = 16 * 1024
#: listen(2) backlog: connections the kernel queues while the server is busy
LISTEN_BACKLOG = 1024
#: refused connections being answered 503 at once; past it, excess ones are just closed
MAX_REFUSING = 64
#: socket send buffer per connection (the kernel doubles it). Without a cap, loopback
#: autotuning lets one send() copy a whole multi-megabyte page, and with hundreds of
#: scrapers one loop iteration copies gigabytes while /healthz waits
SEND_BUFFER = 64 * 1024
#: GIL switch interval of the exporter process with the in-process /healthz lane (TLS;
#: CPython's default: 5 ms). The lane waits this long for the GIL each time it wakes: at
#: 1000 gzip scrapers p99 250-330 ms at 0.2 ms, 85 ms at 0.1 ms (at the price of ~40 %
#: fewer scrapes served while saturated, every one still answered)
SWITCH_INTERVAL = 0.0001
#: the switch interval when /healthz has its own process: no thread here waits for
#: /healthz, only the event loop for the render thread, which it waits for up to this long
#: at every send() while a render runs (at 5 ms a render held scrapes up for seconds under
#: 1000 scrapers; 1 ms was the exporter's value before the lane, bench/)
PROCESS_SWITCH_INTERVAL = 0.001
#: the collector's thresholds in the exporter process (CPython's default: 700, 10, 10). A
#: /metrics render allocates ~10^5 tracked objects, so at the default a collection of every
#: generation ran about every second, each holding the GIL for 60-150 ms: that, not the
#: event loop, was what still delayed the /healthz lane (bench/). Reference counting frees
#: almost everything; these only make the cycle collector run less often
GC_THRESHOLDS = (50_000, 20, 10)
#: file descriptors kept free for the broker connections, probes and logs
RESERVED_FDS = 64



class BoundedHTTPServer(HTTPServer):
    """Tornado's HTTPServer with a cap on open connections: one more gets a fast 503."""

    def initialize(self, *args, max_connections: int = 2048,  # type: ignore[override]
                   peers: list[BoundedHTTPServer] | None = None, **kwargs) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        #: the servers whose open connections count against the cap (this one included)
        self.peers: list[BoundedHTTPServer] = peers if peers is not None else []
        self.peers.append(self)
        #: connections refused with 503 since start
        self.refused = 0
        self._refusing = 0
        #: shared with the /healthz process (None: no such process): its busy
        #: connections count against the cap too, and this server's are published there
        self.board: StatusBoard | None = None
        #: connections waiting for a request (idle keep-alive, or a request whose
        #: headers or body are still arriving), oldest first: at the cap the oldest is
        #: closed to make room, so clients that never finish a request (slow loris)
        #: cannot lock the others out
        self.waiting: dict[Any, None] = {}

    def _refused(self, _: object) -> None:
        self._refusing -= 1

    def busy_connections(self) -> int:
        """Open connections that are not waiting for a request (what the /healthz
        process counts against the cap: a waiting one would be closed for room)."""
        return len(self._connections) - len(self.waiting)

    def start_request(self, server_conn: Any, request_conn: Any) -> Any:
        # tornado asks for a delegate before it reads each request
        self.waiting.pop(server_conn, None)
        self.waiting[server_conn] = None
        self._publish()
        return _RequestRead(super().start_request(server_conn, request_conn), self,
                            server_conn)

    def request_read(self, server_conn: Any) -> None:
        self.waiting.pop(server_conn, None)
        self._publish()

    def _publish(self) -> None:
        if self.board is not None:
            self.board.set_main_connections(self.busy_connections())

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        self.waiting.pop(server_conn, None)
        self._publish()

    def _evict(self) -> bool:
        """Close the connection (of this server or a peer) that has waited longest for a
        request; False when none waits."""
        for peer in self.peers:
            for conn in peer.waiting:
                del peer.waiting[conn]
                conn.stream.close()
                return True
        return False

    def handle_stream(self, stream: IOStream, address: tuple) -> None:
        open_ = sum(len(peer._connections) for peer in self.peers)
        if self.board is not None:
            open_ += self.board.health_connections()
        if open_ >= self.max_connections and not self._evict():
            self.refused += 1
            if self._refusing >= MAX_REFUSING:  # a flood: no polite answer, close at once
                stream.close()
                return
            self._refusing += 1
            asyncio.ensure_future(_refuse(stream)).add_done_callback(self._refused)
            return
        with contextlib.suppress(OSError):  # bounded sends (see SEND_BUFFER)
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        super().handle_stream(stream, address)
        self._publish()


class _RequestRead(HTTPMessageDelegate):
    """Passes a request through to tornado's delegate, telling the server when the whole
    request has arrived (headers and body: the connection no longer waits for it)."""

    __slots__ = ("delegate", "server", "conn")

    def __init__(self, delegate: HTTPMessageDelegate, server: BoundedHTTPServer,
                 conn: Any) -> None:
        self.delegate = delegate
        self.server = server
        self.conn = conn

    def headers_received(self, start_line: Any, headers: Any) -> Any:
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.server.request_read(self.conn)
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()


async def _refuse(stream: IOStream) -> None:
    """Answer 503 and close; the request is read (up to 16 KiB, 1 s) so that closing does
    not reset the connection before the client has read the answer."""
    try:
        await asyncio.wait_for(stream.write(_BUSY), 2.0)
        await asyncio.wait_for(stream.read_bytes(MAX_HEADER_SIZE, partial=True), 1.0)
    except (TimeoutError, StreamClosedError, OSError):
        pass
    finally:
        stream.close()


def connection_limit(wanted: int) -> int:
    """``wanted``, lowered to what the open-files limit allows (with a warning)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or wanted + RESERVED_FDS <= soft:
        return wanted
    allowed = max(1, soft - RESERVED_FDS)
    log.warning("max_connections %d lowered to %d: the open-files limit (ulimit -n) is %d",
                wanted, allowed, soft)
    return allowed


def _shown(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_registry(engine) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(PracticesCollector(engine))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def _stopper(stop: asyncio.Event, sig: signal.Signals):
    def handle() -> None:
        log.info("received %s: stopping", sig.name)
        stop.set()
    return handle


async def serve(app: Celery, settings: Settings, *, app_loaded: bool, host: str, port: int,
                ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None, state_dir: str | None = None,
                web_config: WebConfig | None = None) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None).

    ``state_dir``: where findings are kept across restarts (None: not kept).
    """
    web_config = web_config or WebConfig()
    sys.setswitchinterval(SWITCH_INTERVAL)
    engine = build_engine(app, settings, app_loaded=app_loaded, state_dir=state_dir)
    runner = EngineRunner(app, engine)
    registry = make_registry(engine)
    auth = BasicAuth(web_config.users) if web_config.auth_required else None
    application = make_application(engine, registry, auth=auth)
    limit = connection_limit(settings.max_connections)
    peers: list[BoundedHTTPServer] = []

    def make_server() -> BoundedHTTPServer:
        return BoundedHTTPServer(
            application, xheaders=True, ssl_options=web_config.ssl_context,
            max_connections=limit, peers=peers,
            max_body_size=MAX_BODY_SIZE, max_header_size=MAX_HEADER_SIZE,
            idle_connection_timeout=settings.http_idle_timeout_seconds,
            body_timeout=settings.http_idle_timeout_seconds)

    server = make_server()
    sockets = bind_sockets(port, address=host or None, backlog=LISTEN_BACKLOG)
    # the /healthz process (or, with TLS, lane) accepts every connection: /healthz is
    # answered there, the rest comes here
    lane: HealthLane | HealthProcess | None = None
    if web_config.ssl_context is None and health_link.available():
        lane = HealthProcess(sockets, server, engine.stream_status,
                             header_timeout=settings.http_idle_timeout_seconds,
                             max_header_size=MAX_HEADER_SIZE, max_connections=limit)
        try:
            lane.start()
            server.board = lane.board
            sys.setswitchinterval(PROCESS_SWITCH_INTERVAL)
        except OSError:
            log.warning("the /healthz process could not start: serving /healthz from a "
                        "thread of this process", exc_info=True)
            lane.stop()
            lane = None
    if lane is None:
        lane = HealthLane(sockets, make_server, server, asyncio.get_running_loop(),
                          ssl_context=web_config.ssl_context,
                          header_timeout=settings.http_idle_timeout_seconds,
                          max_header_size=MAX_HEADER_SIZE, max_routing=limit)
        lane.start()
    # what start-up built (Celery, kombu, tornado, the engine: hundreds of thousands of
    # objects) lives until exit: out of the collector's reach, a full collection no longer
    # walks it. Those collections hold the GIL -- 60-95 ms each here before, triggered by a
    # /metrics render's allocations, and the /healthz lane waited for them (bench/)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        # SIGHUP stops cleanly too (no reload: a changed config is applied by a restart)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, _stopper(stop, sig))
    except (RuntimeError, ValueError):  # not the main thread (tests)
        pass
    runner.start()
    log.info("exporter listening on %s (%s; /metrics, /api/practices, /healthz)",
             ", ".join(f"{web_config.scheme}://{_shown(s)}" for s in sockets),
             "basic auth on all but /healthz" if auth else "no authentication")
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("stopping exporter")
        lane.stop()
        server.stop()
        if isinstance(lane, HealthProcess):
            for sock in sockets:
                sock.close()
        runner.stop()
        if engine.store is not None:
            engine.store.close()
        application.metrics_cache.close()
        application.api_cache.close()
        if auth is not None:
            auth.close()
