"""Correct-but-unusual workloads for the false-positive hunt: ETA/countdown tasks held by
workers, jittered manual retries, a soft time limit caught by the task, results read or
ignored, tasks routed to two queues. ``make_app(broker, backend)`` builds a fresh copy.
"""

import os
import random
import time

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from kombu import Queue

from tests.apps import one_at_a_time_app

QUEUES = ("default", "io")


def make_app(broker: str, backend: str | None = None, **conf) -> Celery:
    app = one_at_a_time_app(
        "holdouts", broker, backend,
        worker_send_task_events=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue="default",
        task_queues=[Queue(q) for q in QUEUES],
        task_routes={"holdouts.fetch": {"queue": "io"}},
        task_time_limit=60,
        task_soft_time_limit=50,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
    )
    app.conf.update(conf)

    @app.task(name="holdouts.quick", shared=False)
    def quick(n):
        return None

    @app.task(name="holdouts.later", shared=False)
    def later(n):
        """Sent with a countdown / eta: held reserved by a worker until then."""
        return None

    @app.task(name="holdouts.fetch", shared=False, bind=True, max_retries=4)
    def fetch(self, n):
        """Fails twice, retried by hand with exponential back-off and full jitter."""
        if self.request.retries < 2:
            raise self.retry(exc=ConnectionError("transient"),
                             countdown=random.uniform(0.5, 2 ** (self.request.retries + 1)))
        return None

    @app.task(name="holdouts.careful", shared=False, soft_time_limit=1, time_limit=10)
    def careful(seconds):
        """Catches its soft time limit, cleans up and returns."""
        try:
            time.sleep(seconds)
        except SoftTimeLimitExceeded:
            return None
        return None

    @app.task(name="holdouts.report", shared=False, ignore_result=False)
    def report(n):
        """Its result is read by the caller."""
        return n + 1

    return app


_broker = os.environ.get("FP_TEST_BROKER", "memory://")
_backend = os.environ.get("FP_TEST_BACKEND") or (_broker if _broker.startswith("redis") else None)
app = make_app(_broker, _backend)
