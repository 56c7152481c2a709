"""The main process's side of the exporter's ``/healthz`` process (:mod:`.health_process`).

:class:`HealthProcess` starts the helper with the listening sockets, publishes the event
stream's status to the shared :class:`~.health_board.StatusBoard` (at every change of the
connection state, from the thread that changed it, and every ``HEARTBEAT_SECONDS`` from the
event loop, which is the heartbeat), and serves on the main loop every connection the
helper hands over (:func:`.lanes.adopt`, with the bytes it read).

The helper dies with the main process (``PR_SET_PDEATHSIG``, and EOF on the link); on a
clean stop the main process closes the link and waits for it. If the helper dies while the
exporter runs, it is logged and a new one started (connections queue in the listen backlog
meanwhile). Not used with TLS: a TLS session cannot be handed to another process, so the
exporter keeps the in-process health lane (:class:`.lanes.HealthLane`) then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import tornado
from tornado.httpserver import HTTPServer

from .health_board import (
    HANDOVER_BATCH,
    HANDOVER_BYTES,
    HANDOVER_MESSAGE_MAX,
    HEARTBEAT_SECONDS,
    StatusBoard,
    pack_handover,
    unpack_handover,
)
from .lanes import adopt

log = logging.getLogger("flower_practices.exporter")

#: how long start-up waits for the helper to say it is ready
READY_SECONDS = 30.0
#: pause before starting a new helper after one died
RESPAWN_SECONDS = 1.0
#: handover messages read per wake-up of the main loop at most
RECEIVE_BATCH = 32
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def available() -> bool:
    """Whether this platform has what the helper needs (memfd, SCM_RIGHTS, SEQPACKET)."""
    return (sys.platform.startswith("linux") and bool(sys.executable)
            and hasattr(os, "memfd_create")
            and hasattr(socket, "send_fds") and hasattr(socket, "SOCK_SEQPACKET"))


class HealthProcess:
    """The ``/healthz`` helper process, seen from the main process."""

    def __init__(self, sockets: list[socket.socket], main_server: HTTPServer, status: object,
                 *, header_timeout: float, max_header_size: int,
                 max_connections: int) -> None:
        self.sockets = sockets
        self.main_server = main_server
        self.status = status
        self.header_timeout = header_timeout
        self.max_header_size = max_header_size
        self.max_connections = max_connections
        self.board = StatusBoard()
        self.proc: subprocess.Popen | None = None
        self.link: socket.socket | None = None
        #: helpers started after one died
        self.restarts = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._heartbeat_handle: asyncio.TimerHandle | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Publish the status, start the helper and wait until it accepts (on the loop
        thread; raises OSError if it could not start)."""
        self._loop = asyncio.get_running_loop()
        self.board.publish(self.status, heartbeat=True)
        self.status.on_change = self._publish  # type: ignore[attr-defined]
        self._spawn(wait=True)
        self._heartbeat_handle = self._loop.call_later(HEARTBEAT_SECONDS, self._heartbeat)

    def stop(self) -> None:
        """Close the link (the helper exits on its EOF) and reap the helper."""
        self._stopping = True
        self.status.on_change = None  # type: ignore[attr-defined]
        if self._heartbeat_handle is not None:
            self._heartbeat_handle.cancel()
        self._close_link()
        self._reap(5.0)
        self.board.close()

    def _publish(self) -> None:
        with contextlib.suppress(ValueError):  # the board was closed: stopping
            self.board.publish(self.status)

    def _heartbeat(self) -> None:
        self.board.publish(self.status, heartbeat=True)
        self.board.set_main_connections(self.main_server.busy_connections())
        assert self._loop is not None
        self._heartbeat_handle = self._loop.call_later(HEARTBEAT_SECONDS, self._heartbeat)

    def _spawn(self, *, wait: bool) -> None:
        assert self._loop is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with contextlib.suppress(OSError):
                theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * HANDOVER_BYTES)
            fds = [s.fileno() for s in self.sockets]
            cmd = [sys.executable, "-m", "flower_practices.exporter.health_process",
                   "--listen-fds", ",".join(map(str, fds)),
                   "--link-fd", str(theirs.fileno()), "--board-fd", str(self.board.fd),
                   "--parent", str(os.getpid()), "--timeout", str(self.header_timeout),
                   "--max-header-size", str(self.max_header_size),
                   "--max-connections", str(self.max_connections),
                   "--server-header", f"TornadoServer/{tornado.version}"]
            path = os.environ.get("PYTHONPATH")
            env = {**os.environ,
                   "PYTHONPATH": _PACKAGE_ROOT + (os.pathsep + path if path else "")}
            self.proc = subprocess.Popen(
                cmd, pass_fds=[*fds, theirs.fileno(), self.board.fd], env=env,
                stdin=subprocess.DEVNULL, cwd="/")
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.link = ours
        if wait:
            ours.settimeout(READY_SECONDS)
            try:
                ready = ours.recv(64)
            except OSError:
                ready = b""
            if ready != pack_handover([]):
                self._close_link()
                self._reap(1.0)
                raise OSError("the /healthz process did not start")
        ours.setblocking(False)
        self._loop.add_reader(ours.fileno(), self._receive)
        log.debug("/healthz process %d started", self.proc.pid)

    def _receive(self) -> None:
        """On the main loop: serve the connections the helper handed over."""
        link = self.link
        if link is None:
            return
        for _ in range(RECEIVE_BATCH):
            try:
                msg, fds, _, _ = socket.recv_fds(link, HANDOVER_MESSAGE_MAX, HANDOVER_BATCH)
            except BlockingIOError:
                return
            except OSError:
                msg, fds = b"", []
            if not msg and not fds:
                self._lost()
                return
            entries = unpack_handover(msg) if len(msg) >= 4 else []
            for fd in fds[len(entries):]:  # never: one entry per descriptor
                os.close(fd)
            for fd, (family, address, head) in zip(fds, entries, strict=False):
                sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, fd)
                adopt(self.main_server, sock, head, address)

    def _close_link(self) -> None:
        if self.link is not None:
            if self._loop is not None:
                with contextlib.suppress(ValueError, RuntimeError):
                    self._loop.remove_reader(self.link.fileno())
            self.link.close()
            self.link = None

    def _reap(self, timeout: float) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def _lost(self) -> None:
        """The link reached EOF: the helper is gone."""
        self._close_link()
        code = self._reap(2.0)
        if self._stopping:
            return
        log.error("the /healthz process exited (code %s): starting a new one in %.0fs",
                  code, RESPAWN_SECONDS)
        assert self._loop is not None
        self._loop.call_later(RESPAWN_SECONDS, self._respawn)

    def _respawn(self) -> None:
        if self._stopping:
            return
        self.restarts += 1
        try:
            self._spawn(wait=False)
        except OSError:
            log.exception("could not start the /healthz process; retrying")
            assert self._loop is not None
            self._loop.call_later(RESPAWN_SECONDS, self._respawn)
