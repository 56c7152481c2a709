"""Periodic-task practices against real ``celery beat`` processes, real workers and the
real exporter, on a fresh Redis database, with the app loaded (``-A``: periods from
``beat_schedule``) and without it (periods learned from the task-sent cadence), and on
RabbitMQ (a vhost of the test's own; beat publishes there, the workers consume there)
with the app loaded.

Must fire: beat terminated -> ``missed_periodic_task``; two beats at once ->
``duplicate_beat`` naming both; a task sleeping longer than its period ->
``periodic_overlap``. Must not fire: one beat running normally, a periodic task that
retries with back-off, a task sent alongside with a countdown every period, a warm
shutdown and restart of the worker, and an application (a producer seen sending a
countdown) sending a task on a steady rhythm and then stopping. The cadence learner's
rule is unit-tested with synthetic timestamps in tests/test_periodic_units.py.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from celery import Celery

from flower_practices.config import Settings
from tests.apps import periodic
from tests.support.beat import BeatProcess
from tests.support.brokers import (
    delete_vhost,
    fresh_redis_url,
    rabbitmq_vhost_url,
    release_redis_dbs,
)
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

APP = "tests.apps.periodic"
PRACTICES = ("missed_periodic_task", "duplicate_beat", "periodic_overlap")
#: periods are 2-3 s here, so a busy box's scheduling jitter is a larger share of them
#: than in production: a looser tolerance, a short grace, and three regular runs to learn
LEARN = {"tolerance": 0.25, "min_regular_runs": 3}
OPTIONS = {
    "missed_periodic_task": {"grace_seconds": 1.5, **LEARN},
    "duplicate_beat": {"grace_seconds": 2.0, **LEARN},
    "periodic_overlap": {**LEARN},
}
LOADED = pytest.mark.parametrize(("loaded", "broker_kind"), [
    (True, "redis"), (False, "redis"),
    pytest.param(True, "rabbitmq", marks=pytest.mark.rabbitmq),
], ids=["with-A", "without-A", "rabbitmq-with-A"])


def settings() -> Settings:
    return Settings(evaluation_interval=0.5, probe_interval=1.0, clear_after_seconds=600.0,
                    practices={k: dict(v) for k, v in OPTIONS.items()})


@dataclass
class Env:
    broker: str
    app: Celery
    exporter: RunningExporter
    entries: str
    workers: list[WorkerProcess]
    loaded: bool

    def watch(self) -> RunningExporter:
        """Start the real exporter (``-A`` when ``loaded``)."""
        exporter = RunningExporter(self.app, settings(), app_loaded=self.loaded).start()
        self.exporter = exporter
        wait_for(lambda: exporter.get("/healthz")[0] == 200, message="healthz 200")
        assert exporter.practices()["coverage"]["missed_periodic_task"] == "active"
        return exporter

    def beat(self, **env: str) -> BeatProcess:
        return BeatProcess(APP, self.broker, env={"FP_TEST_BEAT_ENTRIES": self.entries,
                                                   **env})

    @staticmethod
    def wait_beat_sending(beat: BeatProcess) -> None:
        wait_for(lambda: "Sending due task" in beat.log(), timeout=60,
                 message="celery beat's first send")

    def worker(self, name: str, concurrency: int = 2) -> WorkerProcess:
        w = WorkerProcess(APP, self.broker, name=name, concurrency=concurrency,
                          env={"FP_TEST_BEAT_ENTRIES": self.entries})
        self.workers.append(w)
        return w.start(self.app, timeout=60)

    def events(self, etype: str, task: str) -> float:
        return self.exporter.total("celery_task_events_total", type=etype, task=task)

    def wait_sends(self, task: str, n: int, timeout: float = 60) -> None:
        wait_for(lambda: self.events("sent", task) >= n, timeout=timeout,
                 message=f"{n} task-sent events for {task}")

    def finding(self, practice: str, task: str, timeout: float = 45) -> dict:
        def find() -> dict | None:
            return next((f for f in self.exporter.findings(practice) if f["task"] == task),
                        None)

        return wait_for(find, timeout=timeout, message=f"{practice} finding for {task}")

    def assert_none(self, practice: str, task: str | None = None) -> None:
        """No finding, no gauge and no count: the families must be exposed at all."""
        labels = {"task": task} if task else {}
        assert self.exporter.total("celery_practice_violation", practice=practice,
                                   **labels) == 0.0
        assert self.exporter.total("celery_practice_violations_total", practice=practice,
                                   **labels) == 0.0
        found = [f for f in self.exporter.findings(practice)
                 if task is None or f["task"] == task]
        assert found == [], found


@contextmanager
def environment(entries: str, loaded: bool, broker_kind: str = "redis") -> Iterator[Env]:
    """Workers and beats start before :meth:`Env.watch` starts the exporter (as in a
    deployment the exporter joins): a beat that is still starting up is not sending."""
    broker = fresh_redis_url() if broker_kind == "redis" else rabbitmq_vhost_url()
    app = periodic.make_app(broker, entries)
    env = Env(broker, app, None, entries, [], loaded)  # type: ignore[arg-type]
    try:
        yield env
        for w in env.workers:
            w.stop()
    finally:
        if env.exporter is not None:
            env.exporter.stop()
        for w in env.workers:
            w.kill()
        if broker_kind == "redis":
            release_redis_dbs(broker)
        else:
            delete_vhost(broker)


class Sender:
    """A producer thread of the test process: ``first()`` at once (if given), then
    ``send()`` every ``period`` seconds, from :meth:`start` until :meth:`stop` (or the end
    of the ``with`` block)."""

    def __init__(self, send: Callable[[], object], first: Callable[[], object] | None = None,
                 period: float = 2.0) -> None:
        self._stop = threading.Event()

        def run() -> None:
            if first is not None:
                first()
            while not self._stop.wait(period):
                send()

        self._thread = threading.Thread(target=run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def producer(beat: BeatProcess) -> re.Pattern:
    """The producer node name of a beat process's task-sent events (``gen<pid>@host``)."""
    return re.compile(rf"^gen{beat.pid}@")


@LOADED
def test_beat_stopped_is_a_missed_periodic_task(loaded: bool, broker_kind: str) -> None:
    with environment("tick", loaded, broker_kind) as env:
        env.worker(f"missed-{int(loaded)}-{broker_kind}@fp-test")
        with env.beat() as beat:
            env.wait_beat_sending(beat)
            env.watch()
            env.wait_sends("periodic.tick", 6)  # learned without -A: first + 3 regular
            env.exporter.wait_evaluated()
            env.assert_none("missed_periodic_task")
            beat.stop()  # SIGTERM: beat is down for real
            assert not beat.running()
            stopped = time.time()
            f = env.finding("missed_periodic_task", "periodic.tick", timeout=30)
        ev = f["evidence"]
        assert f["severity"] == "critical"
        assert ev["period_source"] == ("beat_schedule" if loaded else "learned from sends")
        assert 1.5 <= ev["period_seconds"] <= 2.6
        assert any(producer(beat).match(h) for h in ev["last_producers"]), ev
        # not before the run after the last send was due, plus the grace
        assert f["first_seen"] >= ev["last_sent_at"] + 2.0 * 0.75 + 1.5
        assert f["first_seen"] >= stopped - 2.0
        assert env.exporter.total("celery_practice_violation", practice="missed_periodic_task",
                                  task="periodic.tick") == 1.0
        assert env.exporter.total("celery_practice_violations_total",
                                  practice="missed_periodic_task", task="periodic.tick") >= 1
        env.assert_none("duplicate_beat")
        env.assert_none("periodic_overlap")


def test_a_learned_schedule_pausing_while_beat_runs_is_not_missed(tmp_path) -> None:
    """Without ``-A`` periods are learned: a schedule that pauses while its beat keeps
    sending the other tasks (a crontab's hours ending) raises nothing; once beat is
    down, both tasks are missed."""
    pause = tmp_path / "pause"
    with environment("tick,pausing", False) as env:
        env.worker("pausing@fp-test")
        with env.beat(FP_TEST_PAUSE_FILE=str(pause)) as beat:
            env.wait_beat_sending(beat)
            env.watch()
            env.wait_sends("periodic.pausing", 6)
            env.wait_sends("periodic.tick", 6)
            pause.touch()  # beat stops sending periodic.pausing, and runs on
            paused_at = env.events("sent", "periodic.pausing")
            # periodic.pausing's run is due about 2 s after its last send, then the
            # 1.5 s grace: six more ticks (12 s) is well past it
            env.wait_sends("periodic.tick", env.events("sent", "periodic.tick") + 6)
            env.exporter.wait_evaluated()
            assert env.events("sent", "periodic.pausing") <= paused_at + 1
            env.assert_none("missed_periodic_task")
            beat.stop()
            env.finding("missed_periodic_task", "periodic.tick", timeout=30)
            f = env.finding("missed_periodic_task", "periodic.pausing", timeout=30)
        assert f["evidence"]["period_source"] == "learned from sends"
        assert f["severity"] == "critical"


@LOADED
def test_two_beats_are_a_duplicate_beat_naming_both(loaded: bool, broker_kind: str) -> None:
    with environment("tick", loaded, broker_kind) as env:
        env.worker(f"dup-{int(loaded)}-{broker_kind}@fp-test")
        with env.beat() as first, env.beat() as second:
            env.wait_beat_sending(first)
            env.wait_beat_sending(second)
            env.watch()
            f = env.finding("duplicate_beat", "periodic.tick", timeout=60)
            hosts = f["evidence"]["hosts"]
            assert len(hosts) == 2, f
            assert any(producer(first).match(h) for h in hosts), (hosts, first.pid)
            assert any(producer(second).match(h) for h in hosts), (hosts, second.pid)
            assert f["severity"] == "warning"
            assert env.exporter.total("celery_practice_violations_total",
                                      practice="duplicate_beat", task="periodic.tick") >= 1
        env.assert_none("missed_periodic_task")


@LOADED
def test_runs_longer_than_the_period_are_a_periodic_overlap(loaded: bool,
                                                           broker_kind: str) -> None:
    with environment("slow", loaded, broker_kind) as env:
        env.worker(f"overlap-{int(loaded)}-{broker_kind}@fp-test", concurrency=4)
        with env.beat() as beat:
            env.wait_beat_sending(beat)
            env.watch()
            env.finding("periodic_overlap", "periodic.slow", timeout=60)

            def longer() -> dict | None:  # once a 3.5 s run has ended
                f = env.finding("periodic_overlap", "periodic.slow")
                ev = f["evidence"]
                return f if ev["longest_runtime_seconds"] > ev["period_seconds"] + 1 else None

            f = wait_for(longer, timeout=30, message="a run longer than the period")
        ev = f["evidence"]
        assert 1.5 <= ev["period_seconds"] <= 2.6
        assert ev["overlapping_runs"] >= 1
        assert env.exporter.total("celery_practice_violations_total",
                                  practice="periodic_overlap", task="periodic.slow") >= 1
        env.assert_none("duplicate_beat")


@LOADED
def test_normal_beat_retries_countdowns_and_a_worker_restart_raise_nothing(
        loaded: bool, broker_kind: str) -> None:
    with environment("tick,flaky", loaded, broker_kind) as env:
        name = f"calm-{int(loaded)}-{broker_kind}@fp-test"
        worker = env.worker(name)
        # a regular cadence, but each with a countdown
        with Sender(lambda: env.app.send_task("periodic.later", countdown=1.0)) as sender:
            with env.beat() as beat:
                env.wait_beat_sending(beat)
                env.watch()
                sender.start()
                env.wait_sends("periodic.tick", 7)
                wait_for(lambda: env.events("retried", "periodic.flaky") >= 2,
                         timeout=60, message="periodic.flaky retried twice")
                assert env.events("sent", "periodic.later") >= 3
                worker.stop()  # SIGTERM: warm shutdown
                assert worker.proc is not None and worker.proc.returncode is not None
                # a backlog builds up while it is down; the restarted worker's two threads
                # start its runs together (not runs lasting a period)
                env.wait_sends("periodic.tick", env.events("sent", "periodic.tick") + 3)
                restarted = env.worker(name)
                done = env.events("succeeded", "periodic.tick")
                wait_for(lambda: env.events("succeeded", "periodic.tick") >= done + 3,
                         timeout=60, message="the restarted worker ran periodic.tick")
                sent = env.events("sent", "periodic.tick")
                env.wait_sends("periodic.tick", sent + 2)
                env.exporter.wait_evaluated()
                for practice in PRACTICES:
                    env.assert_none(practice)
                assert restarted.proc is not None and restarted.proc.poll() is None
                # the rules did watch these tasks: with beat gone, the periodic ones are
                # missed, and the task sent with a countdown was never taken as periodic
                sender.stop()
                beat.stop()
                env.finding("missed_periodic_task", "periodic.tick", timeout=30)
                env.finding("missed_periodic_task", "periodic.flaky", timeout=30)
            env.exporter.wait_evaluated(since=time.time() + 3.0)
            env.assert_none("missed_periodic_task", "periodic.later")
            env.assert_none("duplicate_beat")
            env.assert_none("periodic_overlap")


@pytest.mark.parametrize("loaded", [True, False], ids=["with-A", "without-A"])
def test_an_application_sending_on_a_rhythm_is_not_a_scheduler(loaded: bool) -> None:
    """A producer that sends a task with a countdown is an application, not a beat: the
    same producer then sending a task every 2 s and stopping raises nothing, while the
    real beat beside it, stopped, is missed."""
    with environment("tick", loaded) as env:
        env.worker(f"app-rhythm-{int(loaded)}@fp-test")
        # a web process: one countdown, then a rhythm
        with Sender(lambda: env.app.send_task("periodic.later"),
                    first=lambda: env.app.send_task("periodic.later", countdown=1.0)) \
                as sender:
            with env.beat() as beat:
                env.wait_beat_sending(beat)
                env.watch()
                sender.start()
                # eight regular sends: far more than the three that teach a period
                env.wait_sends("periodic.later", 8)
                sender.stop()
                sent = env.events("sent", "periodic.later")
                # its next send was due 2 s after the last, then the 1.5 s grace: six
                # ticks (12 s) is well past it
                env.wait_sends("periodic.tick", env.events("sent", "periodic.tick") + 6)
                env.exporter.wait_evaluated()
                assert env.events("sent", "periodic.later") == sent
                for practice in PRACTICES:
                    env.assert_none(practice)
                # the rule was watching: beat stopped, its task is missed
                beat.stop()
                env.finding("missed_periodic_task", "periodic.tick", timeout=30)
            env.exporter.wait_evaluated(since=time.time() + 3.0)
            env.assert_none("missed_periodic_task", "periodic.later")
