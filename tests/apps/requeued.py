"""A task that puts its message back once with ``Reject(requeue=True)`` (acks_late, as
Celery requires for Reject), then runs it: Celery sends task-rejected ``requeue=True``
and the broker delivers the same message again, on purpose. The deliveries are counted
in the Redis key ``FP_TEST_COUNTER_REDIS`` (or the broker's Redis) names, per task id.
``make_app(broker, counter)`` builds a fresh copy for tests.
"""

import os

import redis
from celery import Celery
from celery.exceptions import Reject


def make_app(broker: str, counter: str | None = None) -> Celery:
    app = Celery("requeued", broker=broker, set_as_current=False)
    app.conf.update(
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_time_limit=30,
    )

    @app.task(name="requeued.once", bind=True, acks_late=True, shared=False)
    def once(self, n):
        client = redis.Redis.from_url(counter or broker)
        if client.incr(f"fp-requeued:{self.request.id}") == 1:
            raise Reject("not yet", requeue=True)
        return n

    return app


app = make_app(os.environ.get("FP_TEST_BROKER", "memory://"),
               os.environ.get("FP_TEST_COUNTER_REDIS") or None)
