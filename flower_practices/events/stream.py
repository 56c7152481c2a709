"""The broker consumer thread: Celery events in, ``Engine.observe`` out.

Uses Celery's :class:`~celery.events.receiver.EventReceiver` with a guarded message
callback (a malformed message is counted, never fatal) and the caps of :mod:`.limits`
(message size, bounded inflating of compressed messages, events per message), and
reconnects with exponential back-off (capped) whenever the broker goes away, counting
each reconnect.

On AMQP the connection asks for heartbeats every :data:`AMQP_HEARTBEAT_SECONDS`: a broker
that stops answering without closing the socket (frozen, network partition) is declared
lost after two missed heartbeats instead of never.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.events.receiver import EventReceiver
from kombu.message import Message as KombuMessage
from kombu.transport.virtual import Channel as VirtualChannel

from .limits import (
    MAX_ENVELOPE_BYTES,
    MAX_EVENTS_PER_MESSAGE,
    MAX_MESSAGE_BYTES,
    MessageRefused,
    inflate,
)
from .reconnect import ReconnectingStream
from .status import StreamStatus

log = logging.getLogger("flower_practices.events")

#: AMQP heartbeat we ask for; the link counts as dead after two intervals of silence
AMQP_HEARTBEAT_SECONDS = 10.0
#: seconds to connect (TCP and the AMQP handshake) before the attempt fails
CONNECT_TIMEOUT_SECONDS = 5.0


def with_liveness(conn: Any) -> Any:
    """``conn`` set to ask for AMQP heartbeats, with bounded socket reads and writes (so
    closing a link to a frozen broker gives up instead of waiting for its Close-Ok
    forever). Other transports are left as they are. Set before connecting."""
    if conn.transport.driver_type == "amqp":
        conn.heartbeat = AMQP_HEARTBEAT_SECONDS
        conn.transport_options = {"read_timeout": CONNECT_TIMEOUT_SECONDS,
                                  "write_timeout": CONNECT_TIMEOUT_SECONDS,
                                  **(conn.transport_options or {})}
    return conn


def report_missed_heartbeat(connection: Any, status: StreamStatus) -> None:
    """Make ``connection.heartbeat_check`` mark ``status`` disconnected when it fails.

    A missed heartbeat raises out of ``consume()``, and leaving the consumer then closes
    channel and connection politely, which waits on the dead broker for a while: the loss
    is reported now, not after that.
    """
    check = connection.heartbeat_check

    def heartbeat_check(rate: int = 2) -> Any:
        try:
            return check(rate)
        except Exception as exc:
            status.mark_disconnected(f"{type(exc).__name__}: {exc}"[:300])
            raise

    connection.heartbeat_check = heartbeat_check


def _pop_compression(payload: Any) -> Any:
    """Remove and return the ``compression`` header of a raw message (a virtual
    transport's envelope dict, or a py-amqp message), so that kombu does not inflate it
    without limit; None when there is none."""
    if isinstance(payload, dict):
        headers = payload.get("headers")
    else:
        properties = getattr(payload, "properties", None)
        headers = properties.get("application_headers") if isinstance(properties, dict) \
            else None
    if isinstance(headers, dict):
        return headers.pop("compression", None)
    return None


def _guarded_message_class(base: type) -> type:
    """``base`` (a transport's Message) made to record, not raise, a bad envelope, and to
    enforce :mod:`.limits` on the body (recorded as :class:`MessageRefused`)."""
    if getattr(base, "_fp_guarded", False):
        return base

    class GuardedMessage(base):  # type: ignore[misc, valid-type]
        _fp_guarded = True

        def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
            # Consumer hands recorded errors to on_decode_error (counted there)
            try:
                compression = _pop_compression(payload)
                super().__init__(payload, channel=channel, **kwargs)
            except Exception:
                KombuMessage.__init__(self, body=b"", channel=channel)
                self.errors.append(sys.exc_info())
                return
            if self.errors:
                return
            body = self.body
            try:
                if compression:
                    self.body = inflate(body, compression)
                elif body is not None and len(body) > MAX_MESSAGE_BYTES:
                    raise MessageRefused("oversized_message",
                                         f"message body over {MAX_MESSAGE_BYTES} bytes")
            except MessageRefused as exc:
                self.body = b""
                self.errors.append((type(exc), exc, None))
            except Exception:  # pragma: no cover - a body without len()
                self.body = b""
                self.errors.append(sys.exc_info())

    return GuardedMessage


def _guard_redis_envelopes(channel: Any,
                           on_decode_error: Callable[[Any, Exception], None]) -> None:
    """Replace kombu's Redis ``Channel._receive_one`` (one pub/sub push: the JSON envelope
    parsed, then delivered) on ``channel`` by the same steps, except that an envelope
    that cannot be parsed is counted (``on_decode_error``) and dropped, whatever the
    error. kombu catches only TypeError and ValueError there, and logs each with up to
    4 KiB of the raw payload and a traceback: a deeply nested envelope (RecursionError)
    tore the connection down (a blind reconnect per message), and a flood of non-JSON
    ones flooded the log with payloads. The envelope is capped as on the direct path
    (:data:`~.limits.MAX_ENVELOPE_BYTES`). Left alone if kombu's channel lacks the
    methods this relies on."""
    try:
        from queue import Empty

        from kombu.transport.redis import Channel as RedisChannel
        from kombu.utils.encoding import bytes_to_str
        from kombu.utils.json import loads
    except ImportError:  # pragma: no cover - redis is a dependency
        return
    if not isinstance(channel, RedisChannel) or not all(
            hasattr(channel, name) for name in
            ("_receive_one", "_handle_message", "_deliver_fanout_message")):
        return
    connection_errors = channel.connection_errors

    def receive_one(c: Any) -> Any:
        try:
            response = c.parse_response()
        except connection_errors:
            channel._in_listen = None
            raise
        if isinstance(response, (list, tuple)):
            payload = channel._handle_message(c, response)
            if bytes_to_str(payload["type"]).endswith("message"):
                name = bytes_to_str(payload["channel"])
                data = payload["data"]
                if data:
                    if name[0] == "/":
                        _, _, name = name.partition(".")
                    try:
                        if len(data) > MAX_ENVELOPE_BYTES:
                            raise MessageRefused("oversized_message", "envelope over the cap")
                        message = loads(bytes_to_str(data))
                        if not isinstance(message, dict):
                            raise ValueError("the envelope is not a JSON object")
                    except Exception as exc:
                        on_decode_error(None, exc)
                        raise Empty() from None
                    return channel._deliver_fanout_message(message, name.split("/", 1)[0])
        return None

    channel._receive_one = receive_one


def guard_consumers(channel: Any, consumers: list,
                    on_decode_error: Callable[[Any, Exception], None]) -> None:
    """Make an event receiver's ``consumers`` on ``channel`` count, not raise, what they
    cannot decode, and enforce :mod:`.limits` on each message's body (and on Redis, on
    the pub/sub envelope around it)."""
    if isinstance(channel, VirtualChannel) or hasattr(channel, "message_to_python"):
        # Redis & co. build the Message (base64 body, properties) before any consumer
        # callback; a malformed envelope would raise out of drain_events there too.
        # Both virtual and AMQP messages inflate a compressed body there, unbounded.
        channel.Message = _guarded_message_class(channel.Message)
    _guard_redis_envelopes(channel, on_decode_error)
    for consumer in consumers:
        # Without this a body that fails to decode (bad JSON/base64, a content type
        # not accepted) raises out of drain_events and tears the connection down.
        consumer.on_decode_error = on_decode_error


def count_decode_error(status: StreamStatus, exc: Exception) -> None:
    """Count a message the consumer could not decode, under its :mod:`.limits` kind."""
    status.events += 1
    status.decode_error(exc.kind if isinstance(exc, MessageRefused) else "undecodable_body")


def cap_events(status: StreamStatus, body: list) -> list:
    """``body`` (a grouped message) cut to MAX_EVENTS_PER_MESSAGE events, the rest
    counted as ``too_many_events``."""
    if len(body) <= MAX_EVENTS_PER_MESSAGE:
        return body
    extra = len(body) - MAX_EVENTS_PER_MESSAGE
    status.events += extra
    status.decode_error("too_many_events", n=extra)
    return body[:MAX_EVENTS_PER_MESSAGE]


class GuardedReceiver(EventReceiver):
    """An EventReceiver whose per-message path cannot raise into the consumer loop."""

    #: the consuming connection gets one retry; the stream's loop does the back-off
    connect_max_retries = 1

    def __init__(self, *args: Any, status: StreamStatus, on_ready: Callable[[], None],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._status = status
        self._on_ready = on_ready
        self._consuming: Any = None
        self._next_heartbeat_check = 0.0

    def create_connection(self) -> Any:
        # the connection consumed from (a clone of the one given): with heartbeats
        return with_liveness(super().create_connection())

    def on_iteration(self) -> None:
        # ConsumerMixin checks heartbeats only when a drain times out; on a busy stream
        # (an event every < 1 s) that is never, and the broker would drop us for
        # silence. Check at most once a second while events flow.
        now = time.monotonic()
        if now >= self._next_heartbeat_check and self._consuming is not None:
            self._next_heartbeat_check = now + 1.0
            self._consuming.heartbeat_check()

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any,
                         wakeup: bool = True, **kwargs: Any) -> None:
        self._consuming = connection
        report_missed_heartbeat(connection, self._status)
        if wakeup:
            try:
                self.wakeup_workers(channel=channel)
            except Exception as exc:  # waking workers is a nicety, not a requirement
                log.info("could not ask workers for a heartbeat: %s", exc)
        # connected once the broker has answered all of it (a broker freezing meanwhile
        # is then caught by the heartbeats, which report at once)
        self._on_ready()

    def get_consumers(self, Consumer: Any, channel: Any) -> list:  # noqa: N803 - Celery's
        consumers = super().get_consumers(Consumer, channel)
        guard_consumers(channel, consumers, self._decode_error)
        return consumers

    def _decode_error(self, message: Any, exc: Exception) -> None:
        count_decode_error(self._status, exc)

    def _receive(self, body: Any, message: Any, list: Any = list,
                 isinstance: Any = isinstance) -> None:
        if isinstance(body, list):
            for event in cap_events(self._status, body):
                self._one(event)
        else:
            self._one(body)

    def _one(self, body: Any) -> None:
        if not isinstance(body, dict):
            self._status.events += 1
            self._status.decode_error("not_a_mapping")
            return
        try:
            etype, event = self.event_from_message(body)
        except Exception:
            # missing 'type', non-numeric clock/timestamp/utcoffset...: let the engine
            # validate and count it, with the fields Celery would have added.
            event = body
            etype = body.get("type")
            body["local_received"] = time.time()  # never the sender's value
        try:
            self.process(etype, event)
        except Exception:
            self._status.decode_error("handler_error")
            log.debug("event handler raised", exc_info=True)

    def process(self, type: Any, event: Any) -> None:  # noqa: A002 - Celery's signature
        self.handlers["*"](event)


class EventStream(ReconnectingStream):
    """Consume events from ``app``'s broker with Celery's receiver until :meth:`stop`;
    reconnect on failure."""

    def __init__(self, app: Celery, handler: Callable[[dict], None], status: StreamStatus,
                 **kwargs: Any) -> None:
        super().__init__(app, handler, status, name="flower-practices-events", **kwargs)
        self._receiver: GuardedReceiver | None = None

    def stop(self, timeout: float = 5.0) -> None:
        receiver = self._receiver
        if receiver is not None:
            receiver.should_stop = True
        super().stop(timeout)

    def _session(self) -> None:
        try:
            with self.app.connection_for_read(connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
                # one try per URL (failover) with no sleep: our loop does the back-off
                conn.ensure_connection(max_retries=max(1, len(conn.alt or ())),
                                       interval_start=0, interval_step=0, interval_max=0)
                receiver = GuardedReceiver(
                    conn, handlers={"*": self.handler}, app=self.app,
                    status=self.status, on_ready=self._ready,
                )
                self._receiver = receiver
                if self._stop_event.is_set():
                    return
                self._connected()
                receiver.capture(limit=None, timeout=None, wakeup=self.wakeup)
        finally:
            self._receiver = None


#: accepted values of the ``event_consumer`` setting
EVENT_CONSUMERS = ("auto", "kombu")


def make_event_stream(app: Celery, handler: Callable[[dict], None], status: StreamStatus,
                      *, consumer: str = "auto",
                      batch_handler: Callable[[list | tuple], None] | None = None,
                      **kwargs: Any) -> threading.Thread:
    """The event consumer thread for ``app``: the direct Redis path or the direct AMQP
    consumer when one can be used (``consumer="auto"``), else (or with
    ``consumer="kombu"``) Celery's generic receiver. ``batch_handler``: takes the
    events of one message at once, on the direct paths (``Engine.observe_many``)."""
    if consumer == "auto":
        stream, why = direct_event_stream(app, handler, status, batch_handler, **kwargs)
        if stream is not None:
            return stream
        log.info("using Celery's generic event receiver (%s)", why)
    return EventStream(app, handler, status, **kwargs)


def direct_event_stream(app: Celery, handler: Callable[[dict], None], status: StreamStatus,
                        batch_handler: Callable[[list | tuple], None] | None = None,
                        **kwargs: Any) -> tuple[threading.Thread | None, str]:
    """The direct consumer for ``app``'s broker (Redis pub/sub or AMQP), not started, and
    its description; or None and why neither can be used (other transports, TLS...)."""
    from .fast_amqp import AMQP_TRANSPORTS, AmqpEventStream, fast_amqp_unsupported
    from .fast_redis import RedisEventStream, fast_path_unsupported

    amqp_broker = _transport(app) in AMQP_TRANSPORTS
    path = "direct AMQP consumer" if amqp_broker else "direct Redis path"
    why = fast_amqp_unsupported(app) if amqp_broker else fast_path_unsupported(app)
    if why is None:
        try:
            if amqp_broker:
                return AmqpEventStream(app, handler, status, batch_handler, **kwargs), path
            return RedisEventStream(app, handler, status, batch_handler, **kwargs), path
        except Exception as exc:  # pragma: no cover - defensive: use the generic path
            why = f"{type(exc).__name__}: {exc}"
    return None, f"{path}: {why}"


def _transport(app: Celery) -> str:
    """The transport name of ``app``'s broker URL ("" when it cannot be parsed)."""
    try:
        conn = app.connection_for_read()
    except Exception:
        return ""
    try:
        return str(conn.transport_cls)
    finally:
        conn.release()
