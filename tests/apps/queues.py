"""A Celery app for the queue and worker rules; behaviour set by environment variables.

``FP_TEST_BROKER`` broker URL; ``FP_SENT_EVENTS`` (1/0) task_send_sent_event;
``FP_PREFETCH`` worker_prefetch_multiplier (default 4); ``FP_ACKS_LATE`` (1/0);
``FP_ROUTES`` (1/0) routes ``queues.slow`` to the ``bulk`` queue; ``FP_REMOTE_CONTROL``
(1/0) worker_enable_remote_control. ``make_app`` builds the
same app for the test process (the producer side) with explicit values.
"""

import os
import time

from celery import Celery


def make_app(broker: str, *, sent_events: bool = True, prefetch: int = 4,
             acks_late: bool = False, routes: bool = False,
             backend: str | None = None, remote_control: bool = True) -> Celery:
    app = Celery("queues", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        task_send_sent_event=sent_events,
        task_default_queue="celery",
        worker_prefetch_multiplier=prefetch,
        task_acks_late=acks_late,
        task_routes={"queues.slow": {"queue": "bulk"}} if routes else None,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        worker_enable_remote_control=remote_control,
    )

    @app.task(name="queues.quick", shared=False, ignore_result=True, time_limit=30)
    def quick(n):
        return None

    @app.task(name="queues.report", shared=False, ignore_result=True, time_limit=30)
    def report(n):
        return None

    @app.task(name="queues.slow", shared=False, ignore_result=True, time_limit=60)
    def slow(seconds):
        time.sleep(seconds)
        return None

    return app


def _flag(name: str, default: str) -> bool:
    return os.environ.get(name, default) == "1"


app = make_app(os.environ.get("FP_TEST_BROKER", "memory://"),
               sent_events=_flag("FP_SENT_EVENTS", "1"),
               prefetch=int(os.environ.get("FP_PREFETCH", "4")),
               acks_late=_flag("FP_ACKS_LATE", "0"), routes=_flag("FP_ROUTES", "0"),
               remote_control=_flag("FP_REMOTE_CONTROL", "1"))
