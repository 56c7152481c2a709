"""Celery apps the real-worker tests run (``-A tests.apps.<name>``)."""

from __future__ import annotations

from typing import Any

from celery import Celery


def one_at_a_time_app(name: str, broker: str, backend: str | None = None,
                      **conf: Any) -> Celery:
    """A fresh app for lifecycle workloads: task-sent events on, one task prefetched per
    process, no results stored; ``conf`` adds or overrides settings."""
    app = Celery(name, broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        **conf,
    )
    return app
