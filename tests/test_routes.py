"""Tasks sent by exchange and routing key alone are filed under the queue the broker puts
them in (flower_practices/routes.py): AMQP topic patterns, the bindings of the app's
queues and of workers' ``active_queues`` replies (built with kombu's own
``Queue.as_dict``, as Celery's workers answer), ambiguity and hostile replies. The
real-worker check is in tests/test_throttled_workload.py."""

from __future__ import annotations

import time

import pytest
from celery import Celery
from kombu import Exchange, Queue, binding

from flower_practices.appinfo import snapshot_app
from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.probes.workers import WorkerSample
from flower_practices.routes import (
    MAX_BINDINGS,
    MAX_PATTERNS,
    RouteTable,
    queue_bindings,
    topic_matches,
)

JOBS = Exchange("jobs", type="direct")
TELEMETRY = Exchange("telemetry", type="topic")


@pytest.mark.parametrize(("pattern", "key", "matches"), [
    ("metrics.#", "metrics.disk", True), ("metrics.#", "metrics", True),
    ("metrics.#", "metrics.a.b", True), ("metrics.*", "metrics", False),
    ("metrics.*", "metrics.cpu", True), ("metrics.*", "metrics.cpu.1", False),
    ("*.cpu", "metrics.cpu", True), ("a.#.z", "a.z", True), ("a.#.z", "a.b.c.z", True),
    ("a.#.z", "a.b.c", False), ("#", "anything.at.all", True), ("#", "", True),
    ("a.b", "a.b", True), ("a.b", "a.bc", False),
    ("#." * 60 + "z", "a." * 60 + "y", False),  # hostile: no backtracking blow-up
])
def test_topic_patterns_match_as_amqp_defines_them(pattern: str, key: str,
                                                   matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


def test_route_table_resolves_one_queue_and_leaves_ambiguity_alone() -> None:
    table = RouteTable()
    assert not table
    table.bind("jobs", "direct", "jobs.high", "high")
    table.bind("telemetry", "topic", "metrics.#", "metrics")
    table.bind("audit", "fanout", "", "audit-log")
    table.bind("both", "direct", "k", "q1")
    table.bind("both", "direct", "k", "q2")
    assert table.queue_for("jobs", "jobs.high") == "high"
    assert table.queue_for("jobs", "jobs.low") is None        # no binding routes it
    assert table.queue_for("other", "jobs.high") is None      # another exchange
    assert table.queue_for("telemetry", "metrics.disk") == "metrics"
    assert table.queue_for("audit", "whatever") == "audit-log"
    assert table.queue_for("both", "k") is None               # two queues get it
    table.bind("jobs", "direct", "jobs.low", "low")           # a later binding counts
    assert table.queue_for("jobs", "jobs.low") == "low"


def test_route_table_is_bounded() -> None:
    """Bindings, topic patterns per exchange and their length are capped, so a lookup of
    a hostile routing key (here 100 words) matches a few short patterns at most."""
    table = RouteTable()
    for i in range(MAX_BINDINGS + 50):
        table.bind("x", "direct", f"k{i}", f"q{i}")
    assert table.queue_for("x", f"k{MAX_BINDINGS - 1}") == f"q{MAX_BINDINGS - 1}"
    assert table.queue_for("x", f"k{MAX_BINDINGS + 10}") is None
    topic = RouteTable()
    topic.bind("t", "topic", "#." * 20 + "z", "long")  # over MAX_PATTERN_WORDS: ignored
    for i in range(MAX_PATTERNS + 5):
        topic.bind("t", "topic", f"p{i}.#", f"q{i}")
    assert topic.queue_for("t", "p0." + "w." * 99 + "z") == "q0"
    assert topic.queue_for("t", f"p{MAX_PATTERNS}.a") is None  # past the cap
    assert topic.queue_for("t", "a.z") is None
    assert topic.queue_for("unknown", "p0.a") is None


def sent(eng: Engine, uuid: str, **fields: object) -> None:
    t = time.time()
    eng.observe({"type": "task-sent", "uuid": uuid, "name": "proj.job",
                 "hostname": "web@h", "timestamp": t, "local_received": t, **fields})


def test_app_bindings_file_exchange_routed_tasks_under_their_queue() -> None:
    app = Celery(broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.task_queues = [Queue("high", JOBS, routing_key="jobs.high"),
                            Queue("metrics", TELEMETRY, routing_key="metrics.#"),
                            Queue("celery")]
    eng = Engine(Settings(), app=snapshot_app(app))
    sent(eng, "a", queue=None, exchange="jobs", routing_key="jobs.high")
    sent(eng, "b", queue=None, exchange="telemetry", routing_key="metrics.disk")
    sent(eng, "c", queue=None, exchange="jobs", routing_key="unbound.key")
    sent(eng, "d", queue="celery", exchange="", routing_key="celery")
    # apply_async(exchange=, routing_key=) of a task without a route: Celery's task-sent
    # names the default queue, but the message goes where the exchange routes it
    sent(eng, "e", queue="celery", exchange="telemetry", routing_key="metrics.disk")
    sent(eng, "f", queue="celery", exchange="jobs", routing_key="unbound.key")
    sent(eng, "g", queue="high", exchange="jobs", routing_key="jobs.high")
    assert {u: eng.state.tasks[u].queue for u in "abcdefg"} == {
        "a": "high", "b": "metrics", "c": "unbound.key", "d": "celery", "e": "metrics",
        "f": "celery", "g": "high"}
    assert "jobs.high" not in eng.state.queues and "metrics.disk" not in eng.state.queues


def test_worker_replies_bind_their_queues() -> None:
    """Without the app: a worker's ``active_queues`` reply (kombu's ``as_dict``, the
    queue's own binding and its extra ``bindings``) teaches the routes."""
    reply = [Queue("high", JOBS, routing_key="jobs.high").as_dict(recurse=True),
             Queue("multi", bindings=[binding(Exchange("a", type="direct"), "k1"),
                                      binding(TELEMETRY, "x.*")]).as_dict(recurse=True),
             "not a queue", {"name": 5}, {"name": "odd", "exchange": 7, "routing_key": []},
             {"name": "evil\x00q", "exchange": {"name": "e\ud800"}, "routing_key": "r"}]
    bindings = queue_bindings(reply)
    assert ("jobs", "direct", "jobs.high", "high") in bindings
    assert {("a", "direct", "k1", "multi"), ("telemetry", "topic", "x.*", "multi")} \
        <= set(bindings)
    assert all("\x00" not in b[3] and "\ud800" not in b[0] for b in bindings)
    eng = Engine(Settings())
    eng.apply_worker_probes({"w@h": WorkerSample(queues=("high", "multi"),
                                                  bindings=bindings)})
    sent(eng, "a", queue=None, exchange="jobs", routing_key="jobs.high")
    sent(eng, "b", queue=None, exchange="telemetry", routing_key="x.y")
    sent(eng, "c", queue=None, exchange="a", routing_key="k1")
    assert [eng.state.tasks[u].queue for u in "abc"] == ["high", "multi", "multi"]
