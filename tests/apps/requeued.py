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

from tests.apps import one_at_a_time_app


def make_app(broker: str, counter: str | None = None) -> Celery:
    app = one_at_a_time_app("requeued", broker, task_time_limit=30)

    @app.task(name="requeued.once", bind=True, acks_late=True, shared=False)
    def once(self, n):
        client = redis.Redis.from_url(counter or broker)
        if client.incr(f"fp-requeued:{self.request.id}") == 1:
            raise Reject("not yet", requeue=True)
        return n

    return app


app = make_app(os.environ.get("FP_TEST_BROKER", "memory://"),
               os.environ.get("FP_TEST_COUNTER_REDIS") or None)
