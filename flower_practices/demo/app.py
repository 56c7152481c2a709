"""The demo Celery app: a few well-behaved tasks and one task per anti-pattern.

Usable with a real broker too (``$CELERY_BROKER_URL``, optional ``$CELERY_RESULT_BACKEND``)::

    CELERY_BROKER_URL=redis://localhost:6379/0 \\
        celery -A flower_practices.demo.app worker -E -Q celery -c 2 -P threads

Queues: ``celery`` (the default), ``reports`` (long tasks), ``images`` (nobody consumes it:
that is one of the anti-patterns). Nothing here logs argument values.
"""

from __future__ import annotations

import itertools
import os
import threading
import time

from celery import Celery
from kombu.utils.json import register_type

#: broker used when CELERY_BROKER_URL is not set (the embedded demo passes memory://)
DEFAULT_BROKER = "redis://localhost:6379/0"
#: queues the demo uses
DEFAULT_QUEUE = "celery"
REPORTS_QUEUE = "reports"
IMAGES_QUEUE = "images"
#: set by the embedded demo on shutdown so long tasks end at once
STOPPING = threading.Event()


class User:
    """Stands in for an ORM model instance: Django-like repr, JSON-serialisable by kombu."""

    def __init__(self, pk: int, username: str) -> None:
        self.pk = pk
        self.username = username

    def __repr__(self) -> str:
        return f"<User: {self.username}>"


register_type(User, "demo_user", lambda u: [u.pk, u.username], lambda v: User(v[0], v[1]))


#: the period of the demo's periodic task (``beat_schedule``)
DIGEST_PERIOD_SECONDS = 10.0


def make_app(broker: str | None = None) -> Celery:
    """The demo app on ``broker``; without it, $CELERY_BROKER_URL (else local Redis) and
    $CELERY_RESULT_BACKEND (results are stored, and never read, only when it is set)."""
    app = Celery("flower_practices.demo", set_as_current=False)
    backend = None if broker else os.environ.get("CELERY_RESULT_BACKEND") or None
    app.conf.update(
        broker_url=broker or os.environ.get("CELERY_BROKER_URL") or DEFAULT_BROKER,
        result_backend=backend,
        task_default_queue=DEFAULT_QUEUE,
        task_send_sent_event=True,
        worker_send_task_events=True,
        task_ignore_result=backend is None,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # a periodic task; the demo's own "beat" sends it three times, then dies
        # (``missed_periodic_task``)
        beat_schedule={"digest-every-10s": {"task": "demo.send_digest",
                                            "schedule": DIGEST_PERIOD_SECONDS}},
    )
    _register_tasks(app)
    return app


def _sleep(seconds: float) -> None:
    """Sleep, but return early when the embedded demo is stopping."""
    STOPPING.wait(seconds)


def _register_tasks(app: Celery) -> None:
    flaky = itertools.count()

    @app.task(shared=False, name="demo.add", time_limit=30, soft_time_limit=20)
    def add(x: int, y: int) -> int:
        """Good: short, bounded, idempotent."""
        return x + y

    @app.task(shared=False, name="demo.send_welcome_email", time_limit=30)
    def send_welcome_email(user: User) -> str:
        """Bad: receives a model object instead of its primary key."""
        return f"sent:{user.pk}"

    @app.task(shared=False, name="demo.fetch_exchange_rate", time_limit=30)
    def fetch_exchange_rate(currency: str) -> float:
        """Bad: a transient failure (ConnectionError) with no retry."""
        if next(flaky) % 3 == 0:
            raise ConnectionError("exchange-rate service unreachable")
        return 1.0

    @app.task(shared=False, name="demo.sync_inventory", bind=True, max_retries=6, time_limit=30)
    def sync_inventory(self, sku: str) -> None:
        """Bad: retries immediately (countdown=0), a retry storm against a sick service."""
        raise self.retry(exc=ConnectionError("inventory service down"), countdown=0)

    @app.task(shared=False, name="demo.build_report")
    def build_report(report_id: int) -> int:
        """Bad: long-running and no time limit; it also starves the default queue."""
        _sleep(float(os.environ.get("DEMO_REPORT_SECONDS", "7")))
        return report_id

    @app.task(shared=False, name="demo.resize_image", time_limit=60)
    def resize_image(image_id: int) -> int:
        """Routed to the 'images' queue, which no worker consumes."""
        return image_id

    @app.task(shared=False, name="demo.send_digest", time_limit=30, ignore_result=True)
    def send_digest() -> None:
        """Periodic (``beat_schedule``): good on its own; the demo's beat stops sending it."""
        return None

    @app.task(shared=False, name="demo.legacy_cleanup", time_limit=30)
    def legacy_cleanup() -> None:
        """Sent by a producer with task_send_sent_event off (no task-sent events)."""
        time.sleep(0.01)


#: the app ``celery -A flower_practices.demo.app`` finds
app = make_app()
