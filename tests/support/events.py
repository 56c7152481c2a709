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
    return json.dumps({
        "body": base64.b64encode(json.dumps(event).encode()).decode(),
        "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"hostname": event.get("hostname", "")},
        "properties": {"delivery_mode": 1, "priority": 0, "body_encoding": "base64",
                       "delivery_info": {"exchange": "celeryev",
                                         "routing_key": event["type"].replace("-", ".")},
                       "delivery_tag": str(uuid.uuid4())},
    }).encode()


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
