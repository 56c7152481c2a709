"""The lean AMQP event consumer: Celery events straight off RabbitMQ with py-amqp.

Celery's :class:`~celery.events.receiver.EventReceiver` consumes through kombu's generic
machinery (Consumer, Message, serializer registry, accept checks, ConsumerMixin loop).
This module speaks to the broker with ``amqp`` (py-amqp, kombu's own AMQP client) alone,
declaring exactly what the receiver declares:

- exchange ``event_exchange`` (``celeryev``), type ``topic``, durable;
- queue ``<event_queue_prefix>.<uuid>`` (``celeryev.<uuid>``), exclusive and auto-delete
  (or durable, per ``event_queue_exclusive``/``event_queue_durable``), with
  ``x-message-ttl`` from ``event_queue_ttl`` and ``x-expires`` from ``event_queue_expires``
  (milliseconds, as kombu converts them), bound with routing key ``#``;
- ``basic.consume`` with ``no_ack``.

py-amqp does the handshake and the declarations; deliveries are then read off the socket
by :class:`~.amqp_frames.DeliveryReader` (large reads, frames cut in place), skipping
py-amqp's per-frame objects and dispatch.

Each message body is decoded directly: the ``compression`` header is honoured within the
caps of :mod:`.limits`, a JSON body (``application/json``, any other content type is
refused as ``undecodable_body``, as kombu's accept list would) is parsed with stdlib
:mod:`json`, grouped bodies (lists) are cut to ``MAX_EVENTS_PER_MESSAGE``, and each
event goes through :class:`~.fast_redis.EventDecoder.one` (the same per-event steps as
Celery's ``event_from_message``), so the engine receives what the kombu path gives it.

Liveness: AMQP heartbeats every :data:`~.stream.AMQP_HEARTBEAT_SECONDS` (10 s), checked
about once a second whether events flow or not; a broker silent for two intervals is
declared lost (``status`` marked at once), the socket is dropped without waiting for the
dead broker's Close-Ok, and :class:`~.reconnect.ReconnectingStream` retries with its capped
jittered back-off. On connect, workers are asked for a heartbeat (``app.control.
broadcast("heartbeat")``), as the other consumers do.

:func:`fast_amqp_unsupported` says when this path cannot be used (other transports,
failover URLs, TLS, a non-JSON ``event_serializer``); the caller then falls back to
:class:`~flower_practices.events.stream.EventStream`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

import amqp
from celery import Celery

from .amqp_frames import RECV_BYTES, DeliveryReader
from .fast_redis import EventDecoder, _loads_body
from .limits import MAX_EVENTS_PER_MESSAGE, MAX_MESSAGE_BYTES, MessageRefused, inflate
from .reconnect import ReconnectingStream
from .sockopts import ReadPacer, bound_waits
from .status import StreamStatus
from .stream import AMQP_HEARTBEAT_SECONDS, CONNECT_TIMEOUT_SECONDS

log = logging.getLogger("flower_practices.events")

#: socket read timeout while consuming: how often heartbeats and stop are checked
TICK_SECONDS = 1.0
#: longest a write (a heartbeat) may block while consuming
SEND_TIMEOUT = 5.0
#: transports this consumer speaks for
AMQP_TRANSPORTS = ("amqp", "pyamqp")


def fast_amqp_unsupported(app: Celery) -> str | None:
    """None when the lean AMQP consumer can consume ``app``'s events, else why not."""
    try:
        conn = app.connection_for_read()
    except Exception as exc:  # pragma: no cover - bad URL: the kombu path reports it
        return f"cannot parse broker URL ({type(exc).__name__})"
    try:
        transport = conn.transport_cls
        if transport not in AMQP_TRANSPORTS:
            return f"transport {transport!r} is not amqp"
        if conn.alt and len(conn.alt) > 1:
            return "several broker URLs (failover)"
        if conn.ssl or app.conf.broker_use_ssl:
            return "TLS connection options"
        if str(app.conf.event_serializer or "json") != "json":
            return f"event_serializer {app.conf.event_serializer!r}"
        if not conn.hostname:
            return "no host in the broker URL"
    finally:
        conn.release()
    return None


def queue_arguments(app: Celery) -> dict[str, int]:
    """The arguments Celery's receiver declares its event queue with (kombu converts
    ``message_ttl``/``expires`` seconds to integer milliseconds)."""
    args: dict[str, int] = {}
    ttl = app.conf.event_queue_ttl
    if ttl is not None:
        args["x-message-ttl"] = int(float(ttl) * 1000)
    expires = app.conf.event_queue_expires
    if expires is not None:
        args["x-expires"] = int(float(expires) * 1000)
    return args


class AmqpBodyDecoder:
    """One AMQP message (body bytes and properties) -> events -> ``decoder.many``."""

    def __init__(self, decoder: EventDecoder) -> None:
        self.decoder = decoder
        self.status = decoder.status

    def refuse(self) -> None:
        """Count a message whose body was announced over the cap (skipped unread)."""
        self.status.events += 1
        self.status.decode_error("oversized_message")

    def feed(self, body: bytes, props: dict) -> None:
        """Decode one message (body bytes and its basic properties) within the caps of
        :mod:`.limits`; never raises."""
        status = self.status
        try:
            headers = props.get("application_headers")
            compression = headers.get("compression") if type(headers) is dict else None
            if type(body) is str:
                body = body.encode()
            if compression:
                body = inflate(body, compression)
            elif len(body) > MAX_MESSAGE_BYTES:
                raise MessageRefused("oversized_message", "body over the cap")
            ctype = props.get("content_type")
            if ctype != "application/json" and ctype != "json":
                # kombu's accept list for events is {event_serializer, 'json'}: refuse
                # pickle, yaml, msgpack... exactly as the generic receiver would
                raise MessageRefused("undecodable_body", "content type not accepted")
            encoding = props.get("content_encoding")
            if encoding and encoding not in ("utf-8", "utf8", "binary"):
                body = body.decode(str(encoding)[:40]).encode()
            payload = _loads_body(body)
        except MessageRefused as exc:
            status.events += 1
            status.decode_error(exc.kind)
            return
        except Exception:
            status.events += 1
            status.decode_error("undecodable_body")
            return
        if type(payload) is list:
            if len(payload) > MAX_EVENTS_PER_MESSAGE:
                extra = len(payload) - MAX_EVENTS_PER_MESSAGE
                status.events += extra
                status.decode_error("too_many_events", n=extra)
                payload = payload[:MAX_EVENTS_PER_MESSAGE]
            self.decoder.many(payload)
        else:
            self.decoder.many((payload,))


class AmqpEventStream(ReconnectingStream):
    """Consume ``app``'s events from RabbitMQ (AMQP 0-9-1) until :meth:`stop`; reconnect
    on failure."""

    path = " (direct AMQP consumer)"

    def __init__(self, app: Celery, handler: Callable[[dict], None], status: StreamStatus,
                 batch_handler: Callable[[list | tuple], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(app, handler, status, name="flower-practices-events-amqp", **kwargs)
        self.body_decoder = AmqpBodyDecoder(EventDecoder(app, handler, status,
                                                         batch_handler, hold=True))
        with app.connection_for_read() as conn:
            port = int(conn.port or 5672)
            self._params = {
                "host": f"{conn.hostname}:{port}",
                "userid": conn.userid or "guest",
                "password": conn.password or "guest",
                "virtual_host": conn.virtual_host or "/",
            }
        conf = app.conf
        self.exchange = conf.event_exchange or "celeryev"
        self.queue_prefix = conf.event_queue_prefix or "celeryev"
        self.durable = bool(conf.event_queue_durable)
        self.exclusive = bool(conf.event_queue_exclusive) and not self.durable
        self.arguments = queue_arguments(app)

    def _ready(self) -> None:
        super()._ready()
        self._wake_workers_async()

    def _declare(self, channel: Any) -> str:
        queue = f"{self.queue_prefix}.{uuidlib.uuid4()}"
        channel.exchange_declare(self.exchange, "topic", durable=True, auto_delete=False)
        channel.queue_declare(queue, durable=self.durable, exclusive=self.exclusive,
                              auto_delete=not self.durable, arguments=self.arguments)
        channel.queue_bind(queue, self.exchange, routing_key="#")
        # deliveries are read by DeliveryReader, never by py-amqp's own callback path
        channel.basic_consume(queue, callback=_unused, no_ack=True)
        return queue

    def _session(self) -> None:
        conn = amqp.Connection(
            **self._params, heartbeat=AMQP_HEARTBEAT_SECONDS,
            connect_timeout=CONNECT_TIMEOUT_SECONDS, read_timeout=CONNECT_TIMEOUT_SECONDS,
            write_timeout=CONNECT_TIMEOUT_SECONDS,
            client_properties={"product": "flower-practices"})
        clean = False
        try:
            conn.connect()
            self._connected()
            channel = conn.channel()
            self._declare(channel)
            if self._stop_event.is_set():
                clean = True
                return
            self._ready()
            self._consume(conn)
            clean = True
        except Exception as exc:
            # report the loss now: closing below must not delay it
            self.status.mark_disconnected(f"{type(exc).__name__}: {exc}"[:300])
            raise
        finally:
            if clean:
                try:
                    conn.close()
                except Exception:
                    conn.collect()
            else:
                # a dead or frozen broker would never answer Close: just drop the socket
                with contextlib.suppress(Exception):
                    conn.collect()

    def _consume(self, conn: amqp.Connection) -> None:
        transport = conn.transport
        sock = transport.sock
        # blocking reads bounded by the kernel (one system call per wake-up, no poll
        # before it); writes (heartbeats) bounded too, so a frozen broker cannot hang us
        bound_waits(sock, TICK_SECONDS, SEND_TIMEOUT)
        feed = self.body_decoder.feed
        reader = DeliveryReader(sock, feed, self.body_decoder.refuse,
                                max_body=MAX_MESSAGE_BYTES,
                                initial=bytes(transport._read_buffer or b""))
        transport._read_buffer = b""
        read = reader.read
        stopped = self._stop_event.is_set
        monotonic = time.monotonic
        base = conn.bytes_recv
        next_tick = 0.0
        sleep = time.sleep
        pause = ReadPacer(sock, RECV_BYTES).pause
        flush = self.body_decoder.decoder.flush
        while not stopped():
            try:
                got = read()
            finally:
                flush()  # every event this read brought, in one engine call
            now = monotonic()
            if got:
                wait = pause(got, reader.woke, now)  # coalesce reads: see events.sockopts
                if wait:
                    sleep(wait)
                if now < next_tick:
                    continue
            # at most once a second, busy or idle: send ours, check the broker's
            next_tick = monotonic() + TICK_SECONDS
            conn.bytes_recv = base + reader.received
            conn.heartbeat_tick()


def _unused(message: Any) -> None:  # pragma: no cover - DeliveryReader reads deliveries
    raise AssertionError("py-amqp delivered a message the frame reader should have read")
