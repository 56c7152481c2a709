"""A well-behaved Celery app: routed queues, retries with back-off, time limits,
``ignore_result`` where results are not read, primary keys as arguments, json only.
``make_app(broker, backend)`` builds a fresh copy for tests."""

import os
import time

from celery import Celery
from kombu import Queue

QUEUES = ("default", "io", "reports")


def make_app(broker: str, backend: str | None) -> Celery:
    app = Celery("good_tasks", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        task_send_sent_event=True,
        worker_send_task_events=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue="default",
        task_queues=[Queue(q) for q in QUEUES],
        task_routes={"good.fetch": {"queue": "io"}, "good.report": {"queue": "reports"}},
        task_time_limit=60,
        task_soft_time_limit=50,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
    )

    @app.task(name="good.fetch", shared=False, bind=True,
              autoretry_for=(ConnectionError,), retry_backoff=1, retry_jitter=False,
              max_retries=2, ignore_result=True)
    def fetch(self, url_id):
        """Fails twice with a transient error, then succeeds (1s then 2s back-off)."""
        if self.request.retries < 2:
            raise ConnectionError("transient")
        return None

    @app.task(name="good.touch", shared=False, ignore_result=True,
              autoretry_for=(ConnectionError,), retry_backoff=True, max_retries=3)
    def touch(user_id):
        """Takes a primary key, not a model instance."""
        return None

    @app.task(name="good.report", shared=False, autoretry_for=(ConnectionError,),
              retry_backoff=True, max_retries=3)
    def report(n):
        """Its result is read by the caller (AsyncResult.get)."""
        return n + 1

    @app.task(name="good.crunch", shared=False, time_limit=30, soft_time_limit=20,
              ignore_result=True, autoretry_for=(ConnectionError,), retry_backoff=True,
              max_retries=3)
    def crunch(seconds):
        """Runs a while, under a time limit."""
        time.sleep(seconds)
        return None

    return app


_broker = os.environ.get("FP_TEST_BROKER", "memory://")
#: the result backend: FP_TEST_BACKEND, else the broker when it is Redis
_backend = os.environ.get("FP_TEST_BACKEND") or (_broker if _broker.startswith("redis") else None)
app = make_app(_broker, _backend)
