"""Tasks that carry a secret in their arguments, results, exceptions and retries.

The secret comes from FP_TEST_SECRET; the hardening tests assert it never reaches
/metrics, /api/practices or the exporter's logs.
"""

import os

from celery import Celery

app = Celery("leaky", broker=os.environ.get("FP_TEST_BROKER", "memory://"))
app.conf.update(
    task_send_sent_event=True,
    task_default_queue="celery",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
SECRET = os.environ.get("FP_TEST_SECRET", "no-secret-given")


@app.task(name="leaky.echo")
def echo(*args, **kwargs):
    return {"echo": SECRET, "args": args, "kwargs": kwargs}


@app.task(name="leaky.unreachable")
def unreachable(target):
    raise ConnectionError(f"cannot reach {target} with token {SECRET}")


@app.task(name="leaky.retrying", bind=True, max_retries=1)
def retrying(self, target):
    if self.request.retries < 1:
        raise self.retry(exc=TimeoutError(f"timed out on {target} {SECRET}"), countdown=0.1)
    raise ValueError(f"gave up on {target} {SECRET}")
