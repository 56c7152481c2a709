"""Unit checks of the decisions behind retry_storm, queue_without_consumer and counts.

Events are fed to a real Engine (no broker): jittered back-off is not a storm, a
zero-delay storm is and counts its retries once; consumer knowledge is per worker, and an
unknown worker neither resets nor hides a queue's condition.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.rules.queue_view import queue_consumers
from flower_practices.rules.queue_without_consumer import QueueWithoutConsumer
from flower_practices.rules.retry_storm import RetryStorm, zero_delay_chance

T0 = 1_700_000_000.0


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def test_zero_delay_chance_follows_celery_full_jitter() -> None:
    assert zero_delay_chance(True, 600, True, 1) == 0.5      # randrange(2)
    assert zero_delay_chance(True, 600, True, 2) == 1 / 3    # randrange(3)
    assert zero_delay_chance(2, 300, True, 1) == 1 / 3       # factor 2: randrange(3)
    assert zero_delay_chance(2, 3, True, 5) == 1 / 4         # capped at retry_backoff_max
    assert zero_delay_chance(True, 600, False, 1) == 0.0     # no jitter: always 1 s
    assert zero_delay_chance(False, 600, True, 1) == 1.0
    # a fractional back-off is factor 1 in Celery (int(max(1.0, retry_backoff)))
    assert zero_delay_chance(0.5, 600, True, 1) == 0.5
    assert zero_delay_chance(0.5, 600, True, 2) == 1 / 3


def retry_engine(**options: object) -> Engine:
    return Engine(Settings(practices={"retry_storm": dict(options)}),
                  broker_url="redis://x/0", rule_classes=[RetryStorm])


def retries(engine: Engine, task_id: str, delays: list[float], t: float) -> float:
    """One task retried once per delay (0: scheduled with no eta); returns the time."""
    engine.observe({"type": "task-sent", "uuid": task_id, "name": "proj.call",
                    "queue": "q", "timestamp": t, "retries": 0})
    for n, delay in enumerate(delays, start=1):
        engine.observe({"type": "task-received", "uuid": task_id, "name": "proj.call",
                        "hostname": "w@h", "timestamp": t, "retries": n - 1})
        engine.observe({"type": "task-started", "uuid": task_id, "hostname": "w@h",
                        "timestamp": t + 0.01})
        engine.observe({"type": "task-retried", "uuid": task_id, "hostname": "w@h",
                        "timestamp": t + 0.2})
        sent = t + 0.1  # the retry message is published before task-retried
        event = {"type": "task-sent", "uuid": task_id, "name": "proj.call", "queue": "q",
                 "timestamp": sent, "retries": n}
        if delay:
            event["eta"] = iso(sent + delay)
        engine.observe(event)
        t = sent + delay + 0.05
    return t


def test_jittered_delays_are_not_a_storm_but_immediate_retries_are() -> None:
    engine = retry_engine()
    t = T0
    # 6 tasks, 2 retries each, 5 of the 12 drawn at 0 s by jitter: share 0.42 < 0.8
    for i, delays in enumerate([[0, 1], [1, 0], [0, 2], [1, 1], [0, 0], [1, 2]]):
        t = retries(engine, f"j{i}", [float(d) for d in delays], t)
    engine.evaluate(t + 1)
    assert engine.findings.active() == []
    assert engine.metrics.violations_total == {}

    storm = retry_engine()
    t = T0
    for i in range(3):
        t = retries(storm, f"s{i}", [0.0] * 4, t)
    storm.evaluate(t + 1)
    (f,) = storm.findings.active()
    assert f.evidence["zero_delay_retries"] == 12 and f.evidence["zero_delay_share"] == 1.0
    assert f.evidence["delay_measured_from"] == "the retry's task-sent event"
    assert f.count == 12 == storm.metrics.violations_total[("retry_storm", "q", "proj.call")]
    t = retries(storm, "s9", [0.0, 0.0], t)
    storm.evaluate(t + 1)
    storm.evaluate(t + 2)  # no new retry: nothing more counted
    (f,) = storm.findings.active()
    assert f.count == 14 == storm.metrics.violations_total[("retry_storm", "q", "proj.call")]


def test_delay_is_measured_from_the_retry_publish_not_task_retried() -> None:
    engine = retry_engine(zero_delay_seconds=0.5)
    t = T0
    for i in range(3):
        t = retries(engine, f"d{i}", [0.2, 0.2], t)
    engine.evaluate(t + 1)
    (f,) = engine.findings.active()
    # eta - task-sent = 0.2 exactly; eta - task-retried would read 0.1
    assert f.evidence["min_delay_seconds"] == 0.2 == f.evidence["max_delay_seconds"]


def consumer_engine(**options: object) -> Engine:
    opts = {"grace_seconds": 10.0, "unanswered_worker_grace_seconds": 30.0, **options}
    return Engine(Settings(practices={"queue_without_consumer": opts}),
                  broker_url="redis://x/0", rule_classes=[QueueWithoutConsumer])


def worker_up(engine: Engine, host: str, t: float) -> None:
    engine.observe({"type": "worker-online", "hostname": host, "timestamp": t,
                    "local_received": t, "freq": 2.0})


def heartbeat(engine: Engine, host: str, t: float) -> None:
    engine.observe({"type": "worker-heartbeat", "hostname": host, "timestamp": t,
                    "local_received": t, "freq": 2.0})


def test_an_unknown_worker_neither_resets_nor_hides_the_condition() -> None:
    engine = consumer_engine()
    state = engine.state
    worker_up(engine, "a@h", T0)
    state.workers["a@h"].active_queues = ("celery",)
    orphan = state.queue("orphan")
    orphan.length = 4
    for dt in range(0, 13, 2):
        heartbeat(engine, "a@h", T0 + dt)
        engine.evaluate(T0 + dt)
    (f,) = engine.findings.active()
    unconsumed_since = engine.ctx.queue_facts.unconsumed_since
    first_seen, since = f.first_seen, unconsumed_since["orphan"]
    assert since == T0 and f.count == 4
    # a worker starts elsewhere and does not answer remote control yet
    worker_up(engine, "b@h", T0 + 13)
    for dt in range(14, 30, 2):
        heartbeat(engine, "a@h", T0 + dt)
        heartbeat(engine, "b@h", T0 + dt)
        engine.evaluate(T0 + dt)
        (f,) = engine.findings.active()
        assert f.last_seen == T0 + dt and f.first_seen == first_seen
        assert f.evidence["workers_not_answering"] == ["b@h"]
        assert f.evidence["consumers"] == "unknown"
    assert unconsumed_since["orphan"] == since
    # it answers: other queues only
    state.workers["b@h"].active_queues = ("other",)
    heartbeat(engine, "a@h", T0 + 30)
    heartbeat(engine, "b@h", T0 + 30)
    engine.evaluate(T0 + 30)
    (f,) = engine.findings.active()
    assert f.evidence["consumers"] == 0 and f.evidence["workers_not_answering"] == []
    assert f.first_seen == first_seen and f.count == 4  # no new message arrived
    orphan.length = 7
    engine.evaluate(T0 + 31)
    (f,) = engine.findings.active()
    assert f.count == 7 == engine.metrics.violations_total[
        ("queue_without_consumer", "orphan", "")]


def test_consumer_knowledge_per_worker() -> None:
    engine = consumer_engine()
    state = engine.state
    q = state.queue("jobs")
    worker_up(engine, "new@h", T0)
    c = queue_consumers(state, q, T0 + 1, False, 30.0, 300.0)
    assert (c.count, c.undecided, c.unanswered) == (0, True, ["new@h"])
    heartbeat(engine, "new@h", T0 + 40)
    c = queue_consumers(state, q, T0 + 40, False, 30.0, 300.0)
    assert (c.count, c.undecided) == (0, False)  # unknown for 40 s and took no task
    # it takes a task from the queue: a consumer, without remote control
    engine.observe({"type": "task-sent", "uuid": "t1", "name": "n", "queue": "jobs",
                    "timestamp": T0 + 41})
    engine.observe({"type": "task-received", "uuid": "t1", "name": "n",
                    "hostname": "new@h", "timestamp": T0 + 41, "local_received": T0 + 41})
    c = queue_consumers(state, q, T0 + 42, False, 30.0, 300.0)
    assert (c.count, c.workers) == (1, ["new@h"])
    # silent (a busy solo pool): still its consumer within silent_grace, not after
    assert queue_consumers(state, q, T0 + 200, False, 30.0, 300.0).count == 1
    assert queue_consumers(state, q, T0 + 400, False, 30.0, 300.0).count == 0
    # a clean shutdown: gone at once
    engine.observe({"type": "worker-offline", "hostname": "new@h", "timestamp": T0 + 43,
                    "local_received": T0 + 43})
    assert queue_consumers(state, q, T0 + 44, False, 30.0, 300.0).count == 0


def busy_task_stream(engine: Engine, *, runs: int, retry_every: int, seconds: float,
                     t: float, delay: float, retries_each: int = 1,
                     task: str = "proj.busy", received_first: bool = False) -> float:
    """``runs`` first attempts spread over ``seconds``; every ``retry_every``-th retries
    ``retries_each`` times, each retry published with ``delay`` s countdown (the
    exporter's view of a real worker: sent, received, started, retried, the retry's
    task-sent with its eta, its received/started, succeeded). ``received_first``: each
    first attempt's task-received arrives before its task-sent (the worker's event
    overtook the client's), so its queue is not known yet when it is received."""
    step = seconds / runs
    for i in range(runs):
        ts = t + i * step
        uuid = f"{task}-{i}"
        sent = {"type": "task-sent", "uuid": uuid, "name": task, "queue": "q",
                "timestamp": ts, "retries": 0}
        if not received_first:
            engine.observe(sent)
        engine.observe({"type": "task-received", "uuid": uuid, "name": task,
                        "hostname": "w@h", "timestamp": ts + 0.001, "retries": 0})
        if received_first:
            engine.observe(sent)
        engine.observe({"type": "task-started", "uuid": uuid, "hostname": "w@h",
                        "timestamp": ts + 0.002})
        if i % retry_every == 0:
            at = ts + 0.01
            for n in range(1, retries_each + 1):
                engine.observe({"type": "task-sent", "uuid": uuid, "name": task,
                                "queue": "q", "timestamp": at, "retries": n,
                                "eta": iso(at + delay)})
                engine.observe({"type": "task-retried", "uuid": uuid, "hostname": "w@h",
                                "timestamp": at + 0.005})
                at += delay
                engine.observe({"type": "task-received", "uuid": uuid, "name": task,
                                "hostname": "w@h", "timestamp": at, "retries": n})
                engine.observe({"type": "task-started", "uuid": uuid, "hostname": "w@h",
                                "timestamp": at + 0.001})
                at += 0.01
        engine.observe({"type": "task-succeeded", "uuid": uuid, "hostname": "w@h",
                        "timestamp": ts + 0.02, "runtime": 0.01})
    return t + seconds


def test_a_busy_task_retrying_a_few_per_cent_with_backoff_is_no_storm() -> None:
    """5,000 runs in 5 min, 3 % of them retried once with a 2-4 s back-off: 167 retries,
    far over the absolute floor of 100, but 3 % of the task's runs (engine-level: the
    volume is too high for real workers on a 2-core box; the real-worker counterpart is
    tests/test_retry_storm_volume.py)."""
    engine = retry_engine()
    t = busy_task_stream(engine, runs=5000, retry_every=30, seconds=290.0, t=T0,
                         delay=3.0)
    engine.evaluate(t + 1)
    assert engine.findings.active() == []
    assert engine.metrics.violations_total == {}


def test_first_attempts_received_before_their_task_sent_still_count() -> None:
    """A task-received that overtakes its task-sent (seen on a loaded box: the worker's
    event reached the broker before the client's) does not know the task's queue yet:
    such first attempts still count for the task's share, so a busy task retrying a few
    runs is no storm; a task whose runs are mostly retries still is."""
    engine = retry_engine(max_retries_per_window=10)
    t = busy_task_stream(engine, runs=200, retry_every=10, seconds=100.0, t=T0,
                         delay=3.0, received_first=True)
    engine.evaluate(t + 1)
    assert engine.findings.active() == []
    storm = retry_engine(max_retries_per_window=10)
    t = busy_task_stream(storm, runs=4, retry_every=1, seconds=10.0, t=T0, delay=1.0,
                         retries_each=5, received_first=True)
    storm.evaluate(t + 1)
    (f,) = storm.findings.active()
    assert f.evidence["first_attempts_in_window"] == 4
    assert f.evidence["retries_in_window"] == 20


def test_a_task_whose_runs_are_mostly_retries_is_a_storm() -> None:
    """Every message retries 9 times with a fixed 1 s countdown (no back-off, not zero
    delay): 90 % of the attempts are retries: a storm, over the absolute floor."""
    engine = retry_engine()
    t = busy_task_stream(engine, runs=20, retry_every=1, seconds=200.0, t=T0, delay=1.0,
                         retries_each=9, task="proj.storm")
    engine.evaluate(t + 1)
    (f,) = engine.findings.active()
    ev = f.evidence
    assert ev["retries_in_window"] == 180 and ev["first_attempts_in_window"] == 20
    assert ev["retry_share"] == 0.9 and ev["max_retry_share"] == 0.75
    assert ev["zero_delay_retries"] == 0
    assert "for 20 first attempts: 90% of the attempts are retries" in f.summary
    assert f.count == 180 == engine.metrics.violations_total[("retry_storm", "q",
                                                              "proj.storm")]


def test_a_burst_of_tasks_each_retrying_twice_with_backoff_is_no_storm() -> None:
    """150 messages in a minute, each retried twice with back-off (a dependency blip):
    300 retries over the floor, 2 per first attempt (67 % of the attempts): no storm,
    also at the moment the retries are scheduled and their runs not started yet."""
    engine = retry_engine()
    t = busy_task_stream(engine, runs=150, retry_every=1, seconds=60.0, t=T0,
                         delay=2.0, retries_each=2)
    engine.evaluate(t)
    engine.evaluate(t + 1)
    assert engine.findings.active() == []
    assert engine.metrics.violations_total == {}


def test_the_retry_share_and_floor_are_both_configurable() -> None:
    # the same busy task is a storm under a share limit of 2 %
    engine = retry_engine(max_retry_share=0.02)
    t = busy_task_stream(engine, runs=5000, retry_every=30, seconds=290.0, t=T0,
                         delay=3.0)
    engine.evaluate(t + 1)
    (f,) = engine.findings.active()
    assert f.evidence["retry_share"] == round(167 / 5167, 3)
    assert f.evidence["first_attempts_in_window"] == 5000
    # and the storm is none under a floor above its retries
    engine = retry_engine(max_retries_per_window=200)
    busy_task_stream(engine, runs=20, retry_every=1, seconds=200.0, t=T0, delay=1.0,
                     retries_each=9, task="proj.storm")
    engine.evaluate(t + 1)
    assert engine.findings.active() == []


def test_first_attempts_count_when_their_task_started_comes_after_the_retry() -> None:
    """A threads worker may send a run's task-started after the retry it published was
    received (seen on real workers: tests/test_retry_delivery_workload.py): the first
    attempt is still counted, from its task-received. 20 messages retried twice with
    back-off: 40 retries over a floor of 10, 67 % of the attempts: no storm."""
    engine = retry_engine(max_retries_per_window=10)
    t = T0
    for i in range(20):
        uuid = f"late-{i}"
        engine.observe({"type": "task-sent", "uuid": uuid, "name": "proj.call",
                        "queue": "q", "timestamp": t, "retries": 0})
        engine.observe({"type": "task-received", "uuid": uuid, "name": "proj.call",
                        "hostname": "w@h", "timestamp": t + 0.005, "retries": 0})
        if i % 2:  # half of the first runs' task-started come on time
            engine.observe({"type": "task-started", "uuid": uuid, "hostname": "w@h",
                            "timestamp": t + 0.006})
        for n in (1, 2):
            at = t + 0.01
            engine.observe({"type": "task-sent", "uuid": uuid, "name": "proj.call",
                            "queue": "q", "timestamp": at, "retries": n,
                            "eta": iso(at + 2.0 * n)})
            engine.observe({"type": "task-received", "uuid": uuid, "name": "proj.call",
                            "hostname": "w@h", "timestamp": at + 0.01, "retries": n,
                            "eta": iso(at + 2.0 * n)})
            if n == 2 or not i % 2:  # the run that retried: its task-started only now
                engine.observe({"type": "task-started", "uuid": uuid, "hostname": "w@h",
                                "timestamp": at + 0.02})
            engine.observe({"type": "task-retried", "uuid": uuid, "hostname": "w@h",
                            "timestamp": at + 0.03})
            t = at + 2.0 * n
        engine.observe({"type": "task-started", "uuid": uuid, "hostname": "w@h",
                        "timestamp": t + 0.01})
        engine.observe({"type": "task-succeeded", "uuid": uuid, "hostname": "w@h",
                        "timestamp": t + 0.02, "runtime": 0.01})
    engine.evaluate(T0 + 200)
    assert engine.findings.active() == []


def test_retries_whose_first_attempts_left_the_window_are_still_judged() -> None:
    """A message retrying for ever (``max_retries=None``, fixed 5 s countdown): a window
    later only its retries are in the window, no first attempt: a storm (share 1.0)."""
    engine = retry_engine(window_seconds=60.0, max_retries_per_window=5)
    busy_task_stream(engine, runs=1, retry_every=1, seconds=1.0, t=T0, delay=5.0,
                     retries_each=40, task="proj.forever")
    engine.evaluate(T0 + 205.0)  # the first attempt is 205 s old, its retries went on
    (f,) = engine.findings.active()
    assert f.evidence["first_attempts_in_window"] == 0
    assert f.evidence["retry_share"] == 1.0


def test_one_message_retrying_in_a_loop_is_a_storm_amid_a_busy_task() -> None:
    """A poison message retried every second (no limit) among 2,000 healthy runs of the
    same task: 6 % of the attempts are retries and none has zero delay, but one message
    retried 60 times in the window is a retry loop. Pollers (countdown=60), a jittered
    exponential back-off and a message retried exactly the limit are not."""
    engine = retry_engine()
    t = busy_task_stream(engine, runs=2000, retry_every=30, seconds=100.0, t=T0,
                         delay=3.0, task="proj.call")
    t = retries(engine, "loop-1", [1.0] * 60, t)
    engine.evaluate(t)
    (f,) = engine.findings.active()
    ev = f.evidence
    assert ev["looping_messages"] == 1 and ev["looping_task_ids"] == ["loop-1"]
    assert ev["retry_share"] < 0.1 and ev["zero_delay_retries"] == 0
    assert "1 message(s) retried more than 50 times each within 300s" in f.summary
    assert f.count == ev["retries_in_window"] == engine.metrics.violations_total[
        ("retry_storm", "q", "proj.call")]

    quiet = retry_engine()
    t = busy_task_stream(quiet, runs=2000, retry_every=30, seconds=100.0, t=T0,
                         delay=3.0, task="proj.call")
    start = t
    t = retries(quiet, "poll-1", [60.0] * 5, start)                  # 5 in the window
    retries(quiet, "backoff-1", [float(2 ** n) for n in range(8)], start)  # 8 in 255 s
    retries(quiet, "at-limit", [4.0] * 50, start)                    # exactly 50
    # 80 retries 7 s apart: never more than 43 in one window
    end = retries(quiet, "slow-loop", [7.0] * 80, start)
    for at in (t, start + 300.0, end):
        quiet.evaluate(at)
        assert quiet.findings.active() == [], at
    assert quiet.metrics.violations_total == {}
