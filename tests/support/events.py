"""Publish Celery events to Redis exactly as kombu's Redis transport does (for tests)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterable

import redis


def envelope(event: dict) -> bytes:
    """The bytes kombu PUBLISHes on ``/{db}.celeryev/<routing key>`` for one event."""
    return raw_envelope(json.dumps(event).encode(), event["type"].replace("-", "."),
                        {"hostname": event.get("hostname", "")})


def raw_envelope(body: bytes, routing_key: str, headers: dict | None = None,
                 content_type: str = "application/json",
                 content_encoding: str = "utf-8") -> bytes:
    """kombu's Redis envelope around any message ``body`` (bytes as sent: JSON text,
    compressed bytes...), with ``headers`` (e.g. ``{"compression": "zlib"}``)."""
    return json.dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": content_encoding, "content-type": content_type,
        "headers": headers or {},
        "properties": {"delivery_mode": 1, "priority": 0, "body_encoding": "base64",
                       "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
                       "delivery_tag": str(uuid.uuid4())},
    }).encode()


#: one raw message: (routing key, body bytes, headers), optionally followed by its
#: (content type, content encoding) -- JSON in UTF-8 when not given
RawMessage = tuple[str, bytes, dict] | tuple[str, bytes, dict, tuple[str, str]]


def publish_raw(url: str, messages: Iterable[RawMessage]) -> int:
    """Publish raw event messages to the broker at ``url`` as Celery's event dispatcher
    would (Redis: kombu's pub/sub envelope; AMQP: the ``celeryev`` topic exchange), but
    with any body and headers; returns the count."""
    if url.startswith("redis"):
        client = redis.Redis.from_url(url)
        db = client.connection_pool.connection_kwargs.get("db", 0)
        n = 0
        for routing_key, body, headers, *content in messages:
            client.publish(f"/{db}.celeryev/{routing_key}",
                           raw_envelope(body, routing_key, headers, *(content or [()])[0]))
            n += 1
        return n
    from celery.events.event import get_exchange
    from kombu import Connection

    with Connection(url) as conn:
        producer = conn.Producer(exchange=get_exchange(conn))
        n = 0
        for routing_key, body, headers, *content in messages:
            ctype, cenc = content[0] if content else ("application/json", "utf-8")
            producer.publish(body, routing_key=routing_key, content_type=ctype,
                             content_encoding=cenc, headers=dict(headers),
                             delivery_mode=1)
            n += 1
        return n


def publish_events(url: str, events: Iterable[dict]) -> int:
    """PUBLISH ``events`` (timestamp/clock filled in when missing); returns the count."""
    client = redis.Redis.from_url(url)
    db = client.connection_pool.connection_kwargs.get("db", 0)
    pipe = client.pipeline(transaction=False)
    n = 0
    for event in events:
        event.setdefault("timestamp", time.time())
        event.setdefault("clock", n + 1)
        event.setdefault("utcoffset", 0)
        pipe.publish(f"/{db}.celeryev/{event['type'].replace('-', '.')}", envelope(event))
        n += 1
        if n % 500 == 0:
            pipe.execute()
    pipe.execute()
    return n


def task_events(name: str, queue: str, hostname: str, *, runtime: float = 0.01) -> list[dict]:
    """sent, received, started and succeeded events of one task."""
    tid = str(uuid.uuid4())
    return [
        {"type": "task-sent", "uuid": tid, "name": name, "queue": queue,
         "hostname": "client@h"},
        {"type": "task-received", "uuid": tid, "name": name, "hostname": hostname},
        {"type": "task-started", "uuid": tid, "hostname": hostname},
        {"type": "task-succeeded", "uuid": tid, "hostname": hostname, "runtime": runtime},
    ]
