"""Retry policies for the retry_storm tests; ``make_app(broker)`` builds a fresh copy.

- ``retries.jittery``: ``autoretry_for=(ConnectionError,)``, ``retry_backoff=True``,
  ``max_retries=3`` and Celery's default ``retry_jitter=True`` (draws 0 s delays often);
- ``retries.runbook``: the configuration the retry_storm runbook recommends;
- ``retries.tight``: ``self.retry(countdown=0.2)`` every time: a storm with no back-off;
- ``retries.busy``: a busy task of which one run in 20 hits a transient error and retries
  once with jittered back-off (``autoretry_for``, ``retry_backoff=True``): no storm;
- ``retries.pounding``: ``self.retry(countdown=1)`` on every run, 5 times: most of its
  runs are retries, a storm although no retry is zero-delay;
- ``retries.looping``: ``n=0`` is a poison message retried every second without limit
  (a retry loop), ``n=1`` a poller retrying every 5 s without limit (its retry number
  published at ``retries:poller`` on the broker's Redis), any other ``n`` succeeds.

The first two fail on their first two attempts, then succeed.
"""

import os

from celery import Celery


def make_app(broker: str) -> Celery:
    app = Celery("retries", broker=broker, set_as_current=False)
    app.conf.update(
        task_send_sent_event=True,
        worker_send_task_events=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
    )

    @app.task(name="retries.jittery", shared=False, bind=True,
              autoretry_for=(ConnectionError,), retry_backoff=True, max_retries=3)
    def jittery(self, n):
        if self.request.retries < 2:
            raise ConnectionError("transient")
        return None

    @app.task(name="retries.runbook", shared=False, bind=True,
              autoretry_for=(ConnectionError,), retry_backoff=2, retry_backoff_max=300,
              retry_jitter=True, max_retries=6)
    def runbook(self, n):
        if self.request.retries < 2:
            raise ConnectionError("transient")
        return None

    @app.task(name="retries.tight", shared=False, bind=True, max_retries=8)
    def tight(self):
        raise self.retry(exc=ConnectionError("down"), countdown=0.2)

    @app.task(name="retries.busy", shared=False, bind=True,
              autoretry_for=(ConnectionError,), retry_backoff=True, max_retries=3)
    def busy(self, n):
        if n % 20 == 0 and self.request.retries == 0:
            raise ConnectionError("transient")
        return None

    @app.task(name="retries.pounding", shared=False, bind=True, max_retries=5)
    def pounding(self):
        raise self.retry(exc=ConnectionError("down"), countdown=1)

    @app.task(name="retries.looping", shared=False, bind=True, max_retries=None)
    def looping(self, n):
        if n == 0:
            raise self.retry(exc=ConnectionError("down"), countdown=1)
        if n == 1:
            import redis

            redis.Redis.from_url(broker).set("retries:poller", self.request.retries, ex=600)
            raise self.retry(exc=TimeoutError("not ready"), countdown=5)
        return None

    return app


app = make_app(os.environ.get("FP_TEST_BROKER", "memory://"))
