"""A Celery app whose traffic breaks practices on purpose, for the Prometheus end-to-end test.

``alerting.fetch`` fails with a transient-looking ``ConnectionError`` and never retries
(retryless_failure); ``alerting.ok`` succeeds. Both go to the one default queue.
"""

import os

from celery import Celery

app = Celery("alerting", broker=os.environ.get("FP_TEST_BROKER", "memory://"))
app.conf.update(
    task_send_sent_event=True,
    task_default_queue="celery",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="alerting.fetch", ignore_result=True)
def fetch():
    raise ConnectionError("upstream unreachable")


@app.task(name="alerting.ok", ignore_result=True)
def ok():
    return None
