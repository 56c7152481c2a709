"""The Celery app every RabbitMQ benchmark subject loads (``-A bench.amqp_bench_app``).

Only ``event_queue_ttl`` differs from Celery's defaults: each subject's ``celeryev.<uuid>``
queue keeps a message 10 minutes instead of 5 s (``x-message-ttl``), so a subject that
falls behind on a busy machine catches up instead of losing events to the TTL (which
would make its CPU per event look smaller than it is). It costs nothing per event.
"""

from celery import Celery

app = Celery("bench", set_as_current=False)
app.conf.event_queue_ttl = 600.0
app.conf.event_queue_expires = 600.0
