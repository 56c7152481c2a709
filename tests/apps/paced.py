"""A Celery app for paced (rate-limited), routed and unusually configured workers.

``throttled.paced`` has ``rate_limit='10/s'``, ``throttled.slowpaced`` ``'30/m'`` (both on
the ``paced`` queue); ``throttled.routed`` is routed by ``task_routes`` to the ``metrics``
queue, declared in ``task_queues`` on a topic exchange ``telemetry`` with the routing key
``metrics.#`` (a routing key that is not the queue's name). ``FP_TEST_BROKER`` broker URL;
``FP_ACKS_LATE`` (1/0) task_acks_late with prefetch multiplier 1.
"""

import os

from celery import Celery
from kombu import Exchange, Queue

TELEMETRY = Exchange("telemetry", type="topic")


def make_app(broker: str, *, acks_late: bool = False) -> Celery:
    app = Celery("throttled", broker=broker, set_as_current=False)
    app.conf.update(
        task_send_sent_event=True,
        task_default_queue="celery",
        worker_prefetch_multiplier=1 if acks_late else 4,
        task_acks_late=acks_late,
        task_queues=(Queue("celery"), Queue("paced"),
                     Queue("metrics", TELEMETRY, routing_key="metrics.#")),
        task_routes={"throttled.paced": {"queue": "paced"},
                     "throttled.slowpaced": {"queue": "paced"},
                     "throttled.routed": {"queue": "metrics",
                                          "routing_key": "metrics.cpu"}},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
    )

    @app.task(name="throttled.paced", shared=False, rate_limit="10/s", time_limit=30)
    def paced(n):
        return None

    @app.task(name="throttled.slowpaced", shared=False, rate_limit="30/m", time_limit=30)
    def slowpaced(n):
        return None

    @app.task(name="throttled.routed", shared=False, time_limit=30)
    def routed(n):
        return None

    @app.task(name="throttled.plain", shared=False, time_limit=30)
    def plain(n):
        return None

    return app


app = make_app(os.environ.get("FP_TEST_BROKER", "memory://"),
               acks_late=os.environ.get("FP_ACKS_LATE", "0") == "1")
