"""A small Celery app for core tests: broker from FP_TEST_BROKER, a few plain tasks."""

import os

from celery import Celery

app = Celery("basic", broker=os.environ.get("FP_TEST_BROKER", "memory://"))
app.conf.update(
    task_send_sent_event=True,
    task_default_queue="celery",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="basic.add", ignore_result=True)
def add(x, y):
    return x + y


@app.task(name="basic.boom", ignore_result=True)
def boom():
    raise ValueError("deliberate failure")


@app.task(name="basic.flaky", bind=True, ignore_result=True, max_retries=2,
          default_retry_delay=0.1)
def flaky(self):
    if self.request.retries < 2:
        raise self.retry(countdown=0.1)
    return "ok"
