"""Two serving lanes in one process, so that ``/metrics`` load can never delay ``/healthz``.

The exporter serves ``/healthz`` from a process of its own (:mod:`.health_process`) when
it can; this in-process lane is what it uses with TLS (a TLS session cannot be handed to
another process) or where that process cannot run. :func:`adopt` serves both.

A tornado server writes every response from one event loop. Under 1000 scrapers of a 2 MB
page that loop spends hundreds of milliseconds per iteration writing pages, and a
``/healthz`` request waits behind them (bench/: p99 590-790 ms). So the exporter has two
loops, each with its own :class:`~.server.BoundedHTTPServer` over the same application:

- the **main lane** (the process's main asyncio loop) serves every connection whose first
  request is not ``/healthz``: ``/metrics``, ``/api/practices``, ``/``;
- the **health lane** (:class:`HealthLane`, its own thread and loop) accepts every
  connection on the listening sockets, does the TLS handshake if the web configuration
  asks for TLS, reads the first request line and hands the connection, with the bytes
  read, to the main lane -- or keeps it and serves it itself when that request is
  ``/healthz``. Accepting, a handshake and one line are a few tens of microseconds, so a
  load balancer's probe is answered while the main lane is busy writing pages.

Nothing else differs between the lanes: the same handlers (basic auth on everything but
``/healthz``), the same limits (body and header sizes, timeouts), one connection cap over
both lanes and the connections being routed, and the one render cache (thread-safe: a
keep-alive health connection that asks for ``/metrics`` next shares the same rendering).
A connection stays on the lane that got it: later requests on it are served there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, SSLIOStream
from tornado.netutil import add_accept_handler

from .health_board import ACCEPT_RETRY_SECONDS, OUT_OF_RESOURCES, is_health_request

log = logging.getLogger("flower_practices.exporter")

#: bytes read per ``recv`` while waiting for the first request line
_CHUNK = 16 * 1024


def adopt(server: HTTPServer, sock: socket.socket, head: bytes, address: Any) -> None:
    """Serve ``sock`` (TLS already negotiated if it is an ``SSLSocket``) on ``server``,
    in the calling thread's loop, as if it had accepted it and read ``head`` already."""
    kind = SSLIOStream if isinstance(sock, ssl.SSLSocket) else IOStream
    stream = kind(sock, max_buffer_size=server.max_buffer_size,
                  read_chunk_size=server.read_chunk_size)
    # what the lane read is what the HTTP parser reads first
    stream._read_buffer += head
    stream._read_buffer_size += len(head)
    server.handle_stream(stream, address)


class HealthLane:
    """Accepts on ``sockets`` in its own thread; serves ``/healthz`` there, hands the rest
    to ``main_server`` on ``main_loop`` (see the module docstring)."""

    def __init__(self, sockets: list[socket.socket], make_server: Callable[[], HTTPServer],
                 main_server: HTTPServer, main_loop: asyncio.AbstractEventLoop, *,
                 ssl_context: ssl.SSLContext | None, header_timeout: float,
                 max_header_size: int, max_routing: int) -> None:
        self.sockets = sockets
        self._make_server = make_server
        self.main_server = main_server
        self.main_loop = main_loop
        self.ssl_context = ssl_context
        self.header_timeout = header_timeout
        self.max_header_size = max_header_size
        self.max_routing = max_routing
        #: connections accepted whose first request line is not read yet
        self.routing = 0
        #: connections closed at once because ``max_routing`` were being routed
        self.dropped = 0
        self.server: HTTPServer | None = None
        #: routed to the main lane, not yet adopted there; a wake-up of the main loop is
        #: scheduled while ``_handover_scheduled`` (both under ``_handover_lock``)
        self._handover: list[tuple[socket.socket, bytes, Any]] = []
        self._handover_scheduled = False
        self._handover_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flower-practices-health",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # already stopped
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:  # pragma: no cover - logged, the main lane keeps serving
            log.exception("the /healthz lane stopped")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.server = self._make_server()
        for sock in self.sockets:
            with contextlib.suppress(AttributeError, OSError):  # Linux only; else no deferral
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
        removers = [_accept_handler(sock, self._accepted) for sock in self.sockets]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            for remove in removers:
                remove()
            for sock in self.sockets:
                sock.close()
            self.server.stop()

    def _accepted(self, conn: socket.socket, address: Any) -> None:
        if self.routing >= self.max_routing:
            self.dropped += 1
            conn.close()
            return
        if self.ssl_context is None:
            # the listening sockets defer accepting until data arrived (TCP_DEFER_ACCEPT),
            # so the request line is usually there: route it without a task or a wait.
            # Few system calls here: each one gives up the GIL, and under load getting it
            # back is what this lane waits for (the main lane's stream makes the socket
            # non-blocking itself)
            try:
                head = _recv_now(conn)
            except BlockingIOError:
                head = None
            except OSError:
                conn.close()
                return
            if head == b"":
                conn.close()
                return
            if head is not None and (b"\n" in head or len(head) >= self.max_header_size):
                self._dispatch(conn, head, address)
                return
        else:
            head = None
        conn.setblocking(False)
        self.routing += 1
        asyncio.ensure_future(self._route(conn, address, head or b""))

    def _dispatch(self, sock: socket.socket, head: bytes, address: Any) -> None:
        """Serve ``sock`` here if its first request is ``/healthz``, else on the main lane."""
        if is_health_request(head):
            assert self.server is not None
            adopt(self.server, sock, head, address)
            return
        # handed over in batches: one wake-up of the main loop for what was routed
        # meanwhile, not one (a system call) per connection
        with self._handover_lock:
            self._handover.append((sock, head, address))
            if self._handover_scheduled:
                return
            self._handover_scheduled = True
        try:
            self.main_loop.call_soon_threadsafe(self._adopt_handed_over)
        except RuntimeError:  # the main loop is gone: stopping
            for sock, _, _ in self._take_handover():
                sock.close()

    def _take_handover(self) -> list[tuple[socket.socket, bytes, Any]]:
        with self._handover_lock:
            batch = self._handover
            self._handover = []
            self._handover_scheduled = False
        return batch

    def _adopt_handed_over(self) -> None:
        """On the main loop: serve what the lane handed over since it was woken."""
        for sock, head, address in self._take_handover():
            adopt(self.main_server, sock, head, address)

    async def _route(self, conn: socket.socket, address: Any, head: bytes) -> None:
        holder = [conn]
        try:
            head = await asyncio.wait_for(self._head(holder, head), self.header_timeout)
        except (TimeoutError, EOFError, OSError, ValueError):
            # timed out, closed, a failed handshake, or not even a request line
            holder[0].close()
            return
        finally:
            self.routing -= 1
        self._dispatch(holder[0], head, address)

    async def _head(self, holder: list[socket.socket], data: bytes) -> bytes:
        """The TLS handshake (if any), then bytes up to the end of the request line."""
        if self.ssl_context is not None:
            holder[0] = self.ssl_context.wrap_socket(holder[0], server_side=True,
                                                     do_handshake_on_connect=False)
            await _io(holder[0], holder[0].do_handshake)
        sock = holder[0]
        while b"\n" not in data and len(data) < self.max_header_size:
            chunk = await _io(sock, lambda: sock.recv(_CHUNK))
            if not chunk:
                raise EOFError
            data += chunk
        return data


#: libc through ``ctypes.PyDLL``: calls that keep the GIL. ``accept4`` on a non-blocking
#: listening socket and ``recv`` with ``MSG_DONTWAIT`` never block, so holding the GIL for
#: them costs microseconds, while releasing it (what ``socket.accept``/``recv`` do) makes
#: the lane wait to get it back after every connection -- under 1000 gzip scrapers the
#: main lane holds it almost always, and the probe waits behind every queued connect
try:
    _LIBC = ctypes.PyDLL(None, use_errno=True)
    _accept4 = _LIBC.accept4
    _accept4.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
    _recv = _LIBC.recv
    _recv.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    _recv.restype = ctypes.c_ssize_t
except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
    _accept4 = _recv = None
_RECV_BUFFER = ctypes.create_string_buffer(_CHUNK)


def _recv_now(conn: socket.socket) -> bytes:
    """``conn.recv(_CHUNK, MSG_DONTWAIT)``, keeping the GIL where libc allows it."""
    if _recv is None:
        return conn.recv(_CHUNK, socket.MSG_DONTWAIT)
    n = _recv(conn.fileno(), _RECV_BUFFER, _CHUNK, socket.MSG_DONTWAIT)
    if n < 0:
        err = ctypes.get_errno()
        if err in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise BlockingIOError(err, os.strerror(err))
        raise OSError(err, os.strerror(err))
    return _RECV_BUFFER.raw[:n]


def _accept_handler(sock: socket.socket, callback: Callable[[socket.socket, Any], None]
                    ) -> Callable[[], None]:
    """tornado's ``add_accept_handler``, accepting with ``accept4`` under the GIL."""
    if _accept4 is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return add_accept_handler(sock, callback)
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    flags = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC

    def ready() -> None:
        for _ in range(LISTEN_BATCH):
            conn_fd = _accept4(fd, None, None, flags)
            if conn_fd < 0:
                if ctypes.get_errno() in OUT_OF_RESOURCES and active:
                    # the socket stays readable: pause instead of spinning until
                    # descriptors are freed
                    loop.remove_reader(fd)
                    loop.call_later(ACCEPT_RETRY_SECONDS, resume)
                return  # EAGAIN (nothing queued), ECONNABORTED...: next time
            conn = socket.socket(sock.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, 0,
                                 conn_fd)
            try:
                address = conn.getpeername()
            except OSError:
                conn.close()
                continue
            callback(conn, address)

    active = [True]

    def resume() -> None:
        if active:
            loop.add_reader(fd, ready)

    def remove() -> None:
        active.clear()
        loop.remove_reader(fd)

    loop.add_reader(fd, ready)
    return remove


#: connections accepted per wake-up of the lane at most
LISTEN_BATCH = 128
#: accept errors that last until descriptors or memory are freed, and how long the lane
#: pauses accepting after one


async def _io(sock: socket.socket, call: Callable[[], Any]) -> Any:
    """``call()`` on non-blocking ``sock``, waiting for readiness until it completes."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return call()
        except (BlockingIOError, ssl.SSLWantReadError):
            add, remove = loop.add_reader, loop.remove_reader
        except ssl.SSLWantWriteError:
            add, remove = loop.add_writer, loop.remove_writer
        ready = loop.create_future()
        fd = sock.fileno()
        add(fd, _wake, ready)
        try:
            await ready
        finally:
            remove(fd)


def _wake(ready: asyncio.Future) -> None:
    if not ready.done():
        ready.set_result(None)
