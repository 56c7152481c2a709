"""A Celery app with a rate-limited task beside an ordinary one (rate-limit workloads).

``throttled.limited`` (``rate_limit='2/s'``) is routed to the ``limited`` queue,
``throttled.quick`` to ``celery``. ``FP_TEST_BROKER`` broker URL; the worker's prefetch
is ``worker_prefetch_multiplier=2`` times its concurrency.
"""

import os

from celery import Celery

QUEUES = ("celery", "limited")


def make_app(broker: str) -> Celery:
    app = Celery("throttled", broker=broker, set_as_current=False)
    app.conf.update(
        task_send_sent_event=True,
        task_default_queue="celery",
        task_routes={"throttled.limited": {"queue": "limited"}},
        worker_prefetch_multiplier=2,
        task_ignore_result=True,
        task_time_limit=60,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name="throttled.limited", shared=False, rate_limit="2/s")
    def limited(n):
        return None

    @app.task(name="throttled.quick", shared=False)
    def quick(n):
        return None

    return app


app = make_app(os.environ.get("FP_TEST_BROKER", "memory://"))
