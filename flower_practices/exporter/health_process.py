"""The exporter's ``/healthz`` process: accepts every connection, answers ``/healthz``, hands
the rest to the main process.

Run by :mod:`.health_link` (``python -m flower_practices.exporter.health_process``) with
the listening sockets, one end of a ``SOCK_SEQPACKET`` socket pair (the *link*) and the
:class:`~.health_board.StatusBoard`'s memfd as inherited descriptors. It imports the
standard library only, and holds no GIL the main process could make it wait for: a load
balancer's probe is answered while the main process writes pages to 1000 scrapers
(bench/README.md).

Per accepted connection (``TCP_DEFER_ACCEPT``: the request is usually there already) it
reads up to the end of the first request line, then:

- ``GET /healthz`` (HTTP/1.0 or 1.1, complete headers, no body): answered here from the
  board, as the main process would answer it (:func:`~.health_board.health_response`;
  503 once the main process stopped updating the board for ``STALE_SECONDS``). A
  keep-alive connection stays here while it asks for ``/healthz``; the first request that
  is anything else hands the connection over, with the bytes read of it;
- anything else (another path, another method, a body, a malformed ``/healthz`` request):
  handed over: the descriptor and the bytes read go over the link (``SCM_RIGHTS``, in
  batches), and the main process serves the connection as if it had read them itself.

Limits as in the main process: ``max_connections`` counts the connections open here and
the main process's busy ones (both counts on the board), at most ``max_connections``
being routed, headers within ``max_header_size`` bytes and the timeout. At a cap, the
connection that has waited longest for a request (an idle keep-alive, or a request that
never finishes: a slow-loris client) is closed to make room; only when none waits does a
new ``/healthz`` get the immediate 503. It exits when the link reaches EOF (the main
process closed it or died), and is killed with its parent (``PR_SET_PDEATHSIG``); SIGINT
and SIGHUP are ignored (the main process handles them and closes the link).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import os
import re
import signal
import socket
import sys
from email.utils import formatdate

from .health_board import (
    ACCEPT_RETRY_SECONDS,
    BUSY,
    HANDOVER_BATCH,
    HANDOVER_BYTES,
    OUT_OF_RESOURCES,
    StatusBoard,
    health_response,
    is_health_request,
    pack_handover,
)

#: bytes per ``recv``
CHUNK = 16 * 1024
#: connections accepted per wake-up at most
LISTEN_BATCH = 128
#: connections being answered the 503 at once; past it excess ones are just closed
MAX_REFUSING = 64
_HEADERS_END = re.compile(rb"\r?\n\r?\n")
_REASONS = {200: b"OK", 503: b"Service Unavailable"}
_PR_SET_PDEATHSIG = 1


class HealthServer:
    """The accept loop, the ``/healthz`` answers and the handover (module docstring)."""

    def __init__(self, listeners: list[socket.socket], link: socket.socket,
                 board: StatusBoard, *, timeout: float, max_header_size: int,
                 max_connections: int, server_header: str) -> None:
        self.listeners = listeners
        self.link = link
        self.board = board
        self.timeout = timeout
        self.max_header_size = max_header_size
        self.max_connections = max_connections
        self.server_header = server_header.encode("latin-1")
        #: accepted, first request line not read yet
        self.routing = 0
        #: connections kept here (asking for /healthz)
        self.serving = 0
        #: connections waiting for request bytes (first line being routed; kept here
        #: between or inside /healthz requests) -> their task, oldest first: at a cap the
        #: oldest is closed to make room (a client that never finishes a request cannot
        #: lock the others out)
        self.waiting_route: dict[socket.socket, asyncio.Task] = {}
        self.waiting_serve: dict[socket.socket, asyncio.Task] = {}
        self.refusing = 0
        self.pending: list[tuple[socket.socket, tuple, bytes]] = []
        self._flush_scheduled = False
        self._link_blocked = False
        self.stopped: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self.stopped = loop.create_future()
        for sock in self.listeners:
            with contextlib.suppress(AttributeError, OSError):  # Linux; else no deferral
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._accept, sock)
        self.link.setblocking(False)
        loop.add_reader(self.link.fileno(), self._link_readable)
        self.link.send(pack_handover([]))  # ready
        try:
            await self.stopped
        finally:
            for sock in self.listeners:
                loop.remove_reader(sock.fileno())
                sock.close()

    def stop(self) -> None:
        if self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(None)

    def _link_readable(self) -> None:
        try:
            data = self.link.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the main process closed the link or is gone
            self.stop()

    # -- accepting and routing --------------------------------------------------------
    def _accept(self, sock: socket.socket) -> None:
        assert self._loop is not None
        for _ in range(LISTEN_BATCH):
            try:
                conn, address = sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES:  # pause instead of spinning
                    self._loop.remove_reader(sock.fileno())
                    self._loop.call_later(ACCEPT_RETRY_SECONDS, self._resume, sock)
                    return
                continue  # ECONNABORTED...
            conn.setblocking(False)
            try:
                head = conn.recv(CHUNK, socket.MSG_DONTWAIT)
            except BlockingIOError:
                head = b""
            except OSError:
                conn.close()
                continue
            else:
                if not head:  # closed before sending anything
                    conn.close()
                    continue
            if b"\n" in head or len(head) >= self.max_header_size:
                if not is_health_request(head):
                    self._hand_over(conn, address, head)
                    continue
                asyncio.ensure_future(self._health(conn, address, head))
            else:
                if self.routing >= self.max_connections:
                    _evict_oldest(self.waiting_route)
                self.routing += 1
                task = asyncio.ensure_future(self._route(conn, address, head))
                self.waiting_route[conn] = task

    def _resume(self, sock: socket.socket) -> None:
        if self._loop is not None and not self.stopped.done():  # type: ignore[union-attr]
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    async def _route(self, conn: socket.socket, address: tuple, head: bytes) -> None:
        """Read the rest of the first request line, then serve or hand over (counted in
        ``routing`` by the caller)."""
        try:
            head = await self._read_line(conn, head, self._deadline())
        except (TimeoutError, EOFError, OSError, asyncio.CancelledError):  # or evicted
            conn.close()
            return
        finally:
            self.routing -= 1
            self.waiting_route.pop(conn, None)
        if not is_health_request(head):
            self._hand_over(conn, address, head)
            return
        await self._health(conn, address, head)

    def _deadline(self) -> float:
        assert self._loop is not None
        return self._loop.time() + self.timeout

    async def _recv(self, conn: socket.socket, deadline: float) -> bytes:
        assert self._loop is not None
        remaining = deadline - self._loop.time()
        if remaining <= 0:
            raise TimeoutError
        chunk = await asyncio.wait_for(self._loop.sock_recv(conn, CHUNK), remaining)
        if not chunk:
            raise EOFError
        return chunk

    async def _read_line(self, conn: socket.socket, data: bytes, deadline: float) -> bytes:
        while b"\n" not in data and len(data) < self.max_header_size:
            data += await self._recv(conn, deadline)
        return data

    # -- serving /healthz --------------------------------------------------------------
    async def _health(self, conn: socket.socket, address: tuple, head: bytes) -> None:
        if self.serving + self.board.main_connections() >= self.max_connections \
                and not _evict_oldest(self.waiting_serve):
            await self._refuse(conn)
            return
        self.serving += 1
        self._publish_busy()
        try:
            rest = await self._serve(conn, head)
        except (TimeoutError, EOFError, OSError, asyncio.CancelledError):  # or evicted
            rest = None
        finally:
            self.serving -= 1
            self.waiting_serve.pop(conn, None)
            self._publish_busy()
        if rest is None:
            conn.close()
        else:
            self._hand_over(conn, address, rest)

    async def _serve(self, conn: socket.socket, data: bytes) -> bytes | None:
        """Answer ``/healthz`` requests on ``conn``; the bytes read of the first request
        that is not a plain ``GET /healthz`` (to hand over), or None once closed."""
        assert self._loop is not None
        conn.setblocking(False)
        first = True
        task = asyncio.current_task()
        while True:
            deadline = self._deadline()
            if task is not None:  # waiting for the request: may be closed for room
                self.waiting_serve.pop(conn, None)
                self.waiting_serve[conn] = task
                self._publish_busy()
            if not first:
                data = await self._read_line(conn, data, deadline)
                if not is_health_request(data):
                    return data
            first = False
            match = _HEADERS_END.search(data)
            while match is None and len(data) < self.max_header_size:
                data += await self._recv(conn, deadline)
                match = _HEADERS_END.search(data)
            self.waiting_serve.pop(conn, None)  # a whole request: answering it
            self._publish_busy()
            if match is None:
                return data  # over the header limit: the main process answers it
            keep_alive = _plain_health_get(data[:match.start()])
            if keep_alive is None:
                return data  # not a plain GET /healthz: served as tornado serves it
            code, body = health_response(self.board.read())
            response = b"".join((
                b"HTTP/1.1 %d %s\r\n" % (code, _REASONS[code]),
                b"Server: %s\r\nContent-Type: application/json\r\nDate: %s\r\n"
                % (self.server_header, formatdate(usegmt=True).encode()),
                b"Content-Length: %d\r\n" % len(body),
                keep_alive[1], b"\r\n", body))
            remaining = deadline - self._loop.time()
            await asyncio.wait_for(self._loop.sock_sendall(conn, response), max(remaining, 1))
            if not keep_alive[0]:
                conn.close()
                return None
            data = data[match.end():]

    def _publish_busy(self) -> None:
        """The connections here that are not waiting for a request (the main process's
        cap counts them: one waiting here would be closed to make room)."""
        self.board.set_health_connections(self.serving - len(self.waiting_serve))

    async def _refuse(self, conn: socket.socket) -> None:
        if self.refusing >= MAX_REFUSING:
            conn.close()
            return
        assert self._loop is not None
        self.refusing += 1
        try:
            conn.setblocking(False)
            await asyncio.wait_for(self._loop.sock_sendall(conn, BUSY), 2.0)
            # read what the client sent, so that closing does not reset the answer
            await asyncio.wait_for(self._loop.sock_recv(conn, self.max_header_size), 1.0)
        except (TimeoutError, OSError):
            pass
        finally:
            self.refusing -= 1
            conn.close()

    # -- handing over ------------------------------------------------------------------
    def _hand_over(self, conn: socket.socket, address: tuple, head: bytes) -> None:
        if len(self.pending) >= self.max_connections:  # the main process reads nothing
            conn.close()
            return
        self.pending.append((conn, address, head))
        if not self._flush_scheduled and not self._link_blocked:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send what is pending over the link, in batches; wait while the link is full."""
        assert self._loop is not None
        self._flush_scheduled = False
        if self._link_blocked:
            self._loop.remove_writer(self.link.fileno())
            self._link_blocked = False
        while self.pending:
            batch, size = [], 0
            for entry in self.pending[:HANDOVER_BATCH]:
                if batch and size + len(entry[2]) > HANDOVER_BYTES:
                    break
                batch.append(entry)
                size += len(entry[2])
            try:
                socket.send_fds(
                    self.link,
                    [pack_handover([(c.family, a, h) for c, a, h in batch])],
                    [c.fileno() for c, _, _ in batch])
            except BlockingIOError:
                self._link_blocked = True
                self._loop.add_writer(self.link.fileno(), self._flush)
                return
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                    for conn, _, _ in self.pending:  # the main process is gone
                        conn.close()
                    self.pending.clear()
                    self.stop()
                    return
                # not expected (the message is bounded): drop this batch, go on
                log_error(f"handing over {len(batch)} connections failed: {exc!r}")
                for conn, _, _ in batch:
                    conn.close()
            del self.pending[:len(batch)]
            for conn, _, _ in batch:
                conn.close()  # the main process has its own descriptor now


def _evict_oldest(waiting: dict[socket.socket, asyncio.Task]) -> bool:
    """Close the connection that has waited longest for its request (its task is
    cancelled, which closes it and frees its slot); False when none waits."""
    for conn, task in waiting.items():
        del waiting[conn]
        task.cancel()
        return True
    return False


def log_error(message: str) -> None:
    """One line on stderr (the exporter's own output; this process has no logging set up)."""
    print(f"flower-practices /healthz process: {message}", file=sys.stderr, flush=True)


def _plain_health_get(head: bytes) -> tuple[bool, bytes] | None:
    """For a request head (line and headers, without the blank line): (keep alive?,
    ``Connection`` header to answer) if it is a ``GET /healthz`` without a body that
    tornado would serve as such; None for anything else."""
    lines = head.lstrip(b"\r\n").split(b"\n")
    parts = lines[0].rstrip(b"\r").split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    connection = b""
    host = False
    for line in lines[1:]:
        line = line.rstrip(b"\r")
        name, colon, value = line.partition(b":")
        if not colon or not name or name[:1] in b" \t" or name != name.strip():
            return None  # folded or malformed: let tornado decide
        name = name.lower()
        value = value.strip()
        if name in (b"content-length", b"transfer-encoding", b"expect"):
            if name != b"content-length" or value != b"0":
                return None
        elif name == b"connection":
            connection = value.lower()
        elif name == b"host":
            host = True
    if parts[2] == b"HTTP/1.1":
        if not host:
            return None  # tornado answers 400
        if connection == b"close":
            return False, b"Connection: close\r\n"
        return True, b""
    if connection == b"keep-alive":
        return True, b"Connection: Keep-Alive\r\n"
    return False, b""


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the parent dies (Linux), and exit now if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flower_practices.exporter.health_process")
    parser.add_argument("--listen-fds", required=True)
    parser.add_argument("--link-fd", type=int, required=True)
    parser.add_argument("--board-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--max-header-size", type=int, required=True)
    parser.add_argument("--max-connections", type=int, required=True)
    parser.add_argument("--server-header", default="TornadoServer")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    listeners = [socket.socket(fileno=int(fd)) for fd in args.listen_fds.split(",")]
    link = socket.socket(fileno=args.link_fd)
    server = HealthServer(listeners, link, StatusBoard(args.board_fd),
                          timeout=args.timeout, max_header_size=args.max_header_size,
                          max_connections=args.max_connections,
                          server_header=args.server_header)
    asyncio.run(server.run())


if __name__ == "__main__":
    main()
