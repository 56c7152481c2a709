"""A Celery app that breaks the task-level practices (broker/backend from FP_TEST_BROKER).

No routes (all in the default queue), no retry policies, no time limits, results kept and
never read, pickle accepted. ``make_app(broker, backend)`` builds a fresh copy for tests.
"""

import os
import time

from celery import Celery


def make_app(broker: str, backend: str | None) -> Celery:
    app = Celery("bad_tasks", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        accept_content=["json", "pickle"],
        worker_prefetch_multiplier=1,
    )

    @app.task(name="bad.fetch", shared=False)
    def fetch(url_id):
        raise ConnectionError("upstream refused the connection")

    @app.task(name="bad.parse", shared=False)
    def parse(n):
        raise ValueError("not transient")

    @app.task(name="bad.hammer", shared=False, bind=True, max_retries=8)
    def hammer(self):
        try:
            raise TimeoutError("still down")
        except TimeoutError as exc:
            raise self.retry(exc=exc, countdown=0) from None

    @app.task(name="bad.compute", shared=False)
    def compute(x):
        return x * 2

    @app.task(name="bad.process", shared=False)
    def process(*args, **kwargs):
        return None

    @app.task(name="bad.slow", shared=False)
    def slow(seconds):
        time.sleep(seconds)
        return None

    return app


_broker = os.environ.get("FP_TEST_BROKER", "memory://")
app = make_app(_broker, os.environ.get("FP_TEST_BACKEND")
               or (_broker if _broker.startswith("redis") else None))
