"""The demo's traffic generator: good traffic plus each anti-pattern on a schedule.

Runs in a thread of the embedded demo, or on its own against a real broker::

    python -m flower_practices.demo.traffic --broker redis://localhost:6379/0

The schedule repeats every ``monolith_seconds + routed_seconds``:

- *monolith* phase: every task goes to the default queue and the workers consume only it
  (``single_default_queue``);
- *routed* phase: workers also consume ``reports``; long reports without a time limit
  (``missing_time_limit``) occupy them and starve the default queue (``queue_starvation``);
  images go to a queue nobody consumes (``queue_without_consumer``).

At start a stand-in for ``celery beat`` sends the periodic ``demo.send_digest`` on time
three times and then dies, so the task is missed from then on (``missed_periodic_task``).

Throughout: transient failures with no retry (``retryless_failure``), zero-delay retries
(``retry_storm``), a model object as an argument (``orm_object_argument``) and a producer
with task-sent events off (``events_disabled``), next to a steady flow of good tasks.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import signal
import threading
import time

import click
from celery import Celery

from .app import (
    DEFAULT_QUEUE,
    DIGEST_PERIOD_SECONDS,
    IMAGES_QUEUE,
    REPORTS_QUEUE,
    User,
    make_app,
)

log = logging.getLogger("flower_practices.demo.traffic")

#: images sent before the unconsumed queue is purged (keeps memory bounded)
IMAGES_PURGE_EVERY = 200
#: runs of the periodic task the demo's stand-in beat sends before it "dies"
BEAT_RUNS = 3


def legacy_producer(app: Celery) -> Celery:
    """A second producer on the same broker with task-sent events off."""
    legacy = Celery("flower_practices.demo.legacy", set_as_current=False)
    legacy.conf.update(broker_url=app.conf.broker_url,
                       broker_transport_options=app.conf.broker_transport_options,
                       task_send_sent_event=False, task_default_queue=DEFAULT_QUEUE)
    return legacy


class TrafficGenerator(threading.Thread):
    """Sends the demo's tasks on a fixed schedule until :meth:`stop`."""

    def __init__(self, app: Celery, *, tick: float = 0.5, monolith_seconds: float = 20.0,
                 routed_seconds: float = 85.0, manage_consumers: bool = True) -> None:
        super().__init__(name="flower-practices-demo-traffic", daemon=True)
        self.app = app
        self.legacy = legacy_producer(app)
        self.tick = tick
        self.monolith_seconds = monolith_seconds
        self.routed_seconds = routed_seconds
        self.manage_consumers = manage_consumers
        self.sent = 0
        self.phase = ""
        self._stop_event = threading.Event()
        self._images = 0

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)

    def _send(self, name: str, args: tuple = (), queue: str = DEFAULT_QUEUE,
              app: Celery | None = None) -> None:
        (app or self.app).send_task(name, args=args, queue=queue)
        self.sent += 1

    def _set_phase(self, phase: str) -> None:
        if phase == self.phase:
            return
        self.phase = phase
        log.info("demo traffic: %s phase", phase)
        if not self.manage_consumers:
            return
        control = self.app.control
        try:
            if phase == "monolith":
                control.cancel_consumer(REPORTS_QUEUE)
            else:
                control.add_consumer(REPORTS_QUEUE)
        except Exception as exc:  # a broker hiccup: the next cycle tries again
            log.warning("could not switch worker queues: %s", type(exc).__name__)

    def step(self, n: int) -> None:
        """Send what is due at tick ``n`` (``tick`` seconds apart)."""
        every = round(1 / self.tick)  # ticks per second
        cycle = round((self.monolith_seconds + self.routed_seconds) / self.tick)
        at = n % cycle
        routed = at >= round(self.monolith_seconds / self.tick)
        self._set_phase("routed" if routed else "monolith")
        self._send("demo.add", (n, n))                                   # good traffic
        period = round(DIGEST_PERIOD_SECONDS / self.tick)
        if n % period == 0 and n < BEAT_RUNS * period:
            self._send("demo.send_digest")                               # beat, then none
        if n % (2 * every) == 0:
            self._send("demo.fetch_exchange_rate", ("EUR",))             # retryless failures
        if n % (4 * every) == 1:
            self._send("demo.send_welcome_email", (User(n, "alice"),))   # model object arg
        if n % (3 * every) == 2:
            self._send("demo.legacy_cleanup", app=self.legacy)           # no task-sent events
        if n % (10 * every) == 3:
            self._send("demo.sync_inventory", ("SKU-1",))                # zero-delay retries
        if not routed:
            return
        # reports stop 12s before the phase ends so none is left queued for the monolith phase
        if n % (10 * every) == 4 and cycle - at > 12 * every:
            for i in range(2):
                self._send("demo.build_report", (n + i,), queue=REPORTS_QUEUE)
        if n % (5 * every) == 5:
            self._send("demo.resize_image", (n,), queue=IMAGES_QUEUE)   # nobody consumes it
            self._images += 1
            if self._images % IMAGES_PURGE_EVERY == 0:
                self._purge(IMAGES_QUEUE)

    def _purge(self, queue: str) -> None:
        try:
            with self.app.connection_for_write() as conn:
                conn.default_channel.queue_purge(queue)
        except Exception as exc:
            log.warning("could not purge %s: %s", queue, type(exc).__name__)

    def run(self) -> None:
        start = time.monotonic()
        for n in itertools.count():
            if self._stop_event.is_set():
                return
            try:
                self.step(n)
            except Exception as exc:  # broker gone for a moment: keep the schedule
                log.warning("demo traffic: send failed (%s); continuing", type(exc).__name__)
            delay = start + (n + 1) * self.tick - time.monotonic()
            if self._stop_event.wait(max(delay, 0.0)):
                return


@click.command()
@click.option("--broker", "-b", envvar="CELERY_BROKER_URL", required=True,
              help="Broker URL (the workers' broker); default $CELERY_BROKER_URL.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--no-manage-consumers", is_flag=True, default=False,
              help="Do not switch the workers' queues between phases.")
def main(broker: str, duration: float | None, no_manage_consumers: bool) -> None:
    """Send the demo's traffic (good tasks and every anti-pattern) to BROKER."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    gen = TrafficGenerator(make_app(broker), manage_consumers=not no_manage_consumers)
    signal.signal(signal.SIGTERM, lambda *_: gen._stop_event.set())
    gen.start()
    log.info("demo traffic generator sending to the broker; Ctrl-C to stop")
    with contextlib.suppress(KeyboardInterrupt):
        gen.join(duration)
    gen.stop()
    log.info("demo traffic generator stopped after %d messages", gen.sent)


if __name__ == "__main__":  # pragma: no cover
    main()
