"""A small TCP proxy between a real worker and Redis that can half-open one connection.

``BlackholeProxy`` forwards every connection both ways. Once :meth:`BlackholeProxy.arm`
is called, the first client connection on which it sees a ``BRPOP`` command (the one a
Celery worker consumes its queues on; events, acks and remote control use other
connections) is *blackholed*: both sockets stay open, whatever either side sends is read
and dropped, nothing is forwarded any more. That is the half-open TCP connection a
broker failover or a NAT/firewall timeout leaves behind: the client sees no error and
waits for a reply that never comes -- the zombie consumer.

On AMQP the consuming connection says so once, when it subscribes: with
``trigger=AMQP_CONSUME_CELERY`` (a ``basic.consume`` on the queue ``celery``) the proxy
*marks* that connection, and later :meth:`BlackholeProxy.blackhole_marked` blackholes it
or :meth:`BlackholeProxy.cut` closes both its sockets (a connection dropped by the
network: the broker requeues the messages it had delivered unacknowledged on it).

:meth:`BlackholeProxy.outage` / :meth:`BlackholeProxy.restore` make the broker
unreachable through the proxy for a while (every connection closed, new ones refused):
the exporter goes blind while workers connected directly carry on.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

_CHUNK = 65536

#: the start of an AMQP 0-9-1 ``basic.consume`` (class 60, method 20, reserved short 0)
#: on the queue ``celery``, as a client sends it in a method frame
AMQP_CONSUME_CELERY = b"\x00\x3c\x00\x14\x00\x00\x06celery"


class BlackholeProxy:
    """Listen on 127.0.0.1:<port>; forward to ``(host, port)`` upstream."""

    def __init__(self, upstream_host: str, upstream_port: int,
                 trigger: bytes = b"BRPOP") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.trigger = trigger
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._armed = False
        self._refusing = False
        self._lock = threading.Lock()
        self._closed = threading.Event()
        #: connections seen, and those blackholed (each a client socket's peer address)
        self.connections = 0
        self.blackholed: list[tuple[str, int]] = []
        self._sockets: list[socket.socket] = []
        #: connections that carried the trigger (client socket -> upstream socket), and
        #: those of them to blackhole from now on
        self.marked: dict[socket.socket, socket.socket] = {}
        self._drop: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def amqp_url(self, broker_url: str) -> str:
        """``broker_url`` (amqp://user:pass@host:port/vhost) through this proxy."""
        creds, rest = broker_url.split("://", 1)[1].split("@", 1)
        return f"amqp://{creds}@127.0.0.1:{self.port}/{rest.split('/', 1)[1]}"

    def blackhole_marked(self) -> int:
        """Blackhole every open connection that carried the trigger; returns how many."""
        with self._lock:
            self._drop.update(self.marked)
            return len(self.marked)

    def cut(self) -> int:
        """Close both sockets of every open connection that carried the trigger (the
        network dropped it); returns how many."""
        with self._lock:
            pairs = list(self.marked.items())
            self.marked.clear()
        for client, upstream in pairs:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._close(client, upstream)
        return len(pairs)

    def outage(self) -> int:
        """The broker becomes unreachable through this proxy: every open connection is
        closed (both sockets) and new ones are closed as soon as they are accepted, until
        :meth:`restore`. Returns how many connections were cut."""
        with self._lock:
            self._refusing = True
            socks, self._sockets = self._sockets, []
            self.marked.clear()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            self._close(sock)
        return len(socks) // 2

    def restore(self) -> None:
        """End an :meth:`outage`: connections are forwarded again."""
        with self._lock:
            self._refusing = False

    def start(self) -> BlackholeProxy:
        self._thread.start()
        return self

    def arm(self) -> None:
        """Blackhole the next connection that carries the trigger (a BRPOP)."""
        with self._lock:
            self._armed = True

    def _take_trigger(self, data: bytes) -> bool:
        if self.trigger not in data:
            return False
        with self._lock:
            if not self._armed:
                return False
            self._armed = False
            return True

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refusing = self._refusing
            if refusing:
                self._close(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self.connections += 1
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        """Forward both ways until either side closes; after the trigger, read and drop."""
        peer = client.getpeername()
        dead = False
        other = {client: upstream, upstream: client}
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([client, upstream], [], [], 0.5)
            except (OSError, ValueError):
                break
            for sock in ready:
                try:
                    data = sock.recv(_CHUNK)
                except OSError:
                    data = b""
                if not data:
                    self._forget(client)
                    self._close(client, upstream)
                    return
                if sock is client and self.trigger in data:
                    with self._lock:
                        self.marked.setdefault(client, upstream)
                if not dead and sock is client and self._take_trigger(data):
                    dead = True
                    self.blackholed.append(peer)
                if not dead and client in self._drop:
                    dead = True
                    self.blackholed.append(peer)
                if dead:
                    continue  # keep the sockets open, forward nothing
                try:
                    other[sock].sendall(data)
                except OSError:
                    self._forget(client)
                    self._close(client, upstream)
                    return
        self._forget(client)
        self._close(client, upstream)

    def _forget(self, client: socket.socket) -> None:
        with self._lock:
            self.marked.pop(client, None)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self._closed.set()
        self._close(self._listener, *self._sockets)
        self._thread.join(5)

    def __enter__(self) -> BlackholeProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
