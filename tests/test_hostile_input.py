"""Hostile input is normal input: batches of hostile events published into a real Redis
and a real RabbitMQ (its own vhost), consumed by the real exporter process
(``python -m flower_practices exporter``) on each consumer path (direct Redis, direct
AMQP, kombu on both), and through a real Flower
with the plugin. After every batch: the process is alive, ``/metrics`` answers 200 and
parses (text and OpenMetrics), ``/api/practices`` is strict JSON, every label value is at
most 200 characters, the batch is counted under its own kind, and a normal event sent
afterwards is counted. Memory stays bounded under huge names plus concurrent scrapes.
"""

from __future__ import annotations

import bz2
import json
import lzma
import os
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.events.limits import MAX_EVENTS_PER_MESSAGE, MessageRefused, inflate
from flower_practices.events.sanitize import (
    MAX_LABEL_LENGTH,
    TRUNCATION_MARKER,
    clean_text,
    json_bytes,
)
from flower_practices.metrics import PracticesCollector, render_metrics
from tests.support.brokers import fresh_redis_url, release_redis_dbs
from tests.support.events import RawMessage, publish_raw
from tests.support.exporter import RunningExporter, free_port, wait_for
from tests.support.process import log_tail, stop_process

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


# -- the real exporter as a separate process -----------------------------------------------
class ExporterProcess(RunningExporter):
    """``python -m flower_practices exporter`` as a subprocess; reads as RunningExporter."""

    def __init__(self, broker: str, config: str,  # noqa: D107 - no super(): no app
                 log_level: str = "warning") -> None:
        self.port = free_port()
        self.log_level = log_level
        self.broker = broker
        fd, path = tempfile.mkstemp(prefix="fp-hostile-", suffix=".toml")
        os.write(fd, config.encode())
        os.close(fd)
        self.config = Path(path)
        self.log = Path(tempfile.mkstemp(prefix="fp-hostile-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def start(self) -> ExporterProcess:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flower_practices", "exporter", "--broker", self.broker,
                 "--config", str(self.config), "--host", "127.0.0.1", "--port",
                 str(self.port), "--log-level", self.log_level],
                stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_for(lambda: self.alive() and self.get("/healthz")[0] == 200, timeout=40,
                 message=f"exporter connected\n{self.output()}")
        return self

    def alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"exporter died ({self.proc.returncode}):\n{self.output()}")
        return True

    def get(self, path: str, accept: str = "") -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, headers={"Accept": accept})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, resp.read().decode()  # strict UTF-8
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except OSError:
            return 0, ""

    def rss_bytes(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def output(self) -> str:
        return log_tail(self.log)

    def stop(self) -> None:
        stop_process(self.proc)
        self.config.unlink(missing_ok=True)


# -- hostile batches -----------------------------------------------------------------------
def _json(event: dict) -> bytes:
    """JSON as Celery sends it: non-ASCII (and lone surrogates) as \\u escapes."""
    event.setdefault("timestamp", time.time())
    event.setdefault("utcoffset", 0)
    event.setdefault("clock", 1)
    return json.dumps(event).encode()


def _msg(event: dict, headers: dict | None = None) -> RawMessage:
    key = event["type"].replace("-", ".") if event["type"].isascii() else "task.x"
    return key, _json(event), headers or {}


def _uid() -> str:
    return str(uuid.uuid4())


def surrogates() -> list[RawMessage]:
    bad = "\ud800"
    out = []
    for i in range(5):
        tid = f"s{bad}{i}-{_uid()}"
        out.append(_msg({"type": "task-sent", "uuid": tid, "name": f"bad{bad}.{i}",
                         "queue": f"q{bad}", "routing_key": f"r{bad}",
                         "exchange": f"e{bad}", "hostname": f"client{bad}@h"}))
        out.append(_msg({"type": "task-started", "uuid": tid, "hostname": f"w{bad}@h"}))
        out.append(_msg({"type": "task-failed", "uuid": tid, "hostname": f"w{bad}@h",
                         "exception": f"Conn{bad}ectionError('{bad}')"}))
    out.append(_msg({"type": "worker-heartbeat", "hostname": "\udc00w@h", "freq": 2.0,
                     "sw_ident": f"py-celery{bad}", "active": 0, "processed": 0}))
    out.append(_msg({"type": f"task-{bad}", "uuid": _uid()}))
    return out


def control_characters() -> list[RawMessage]:
    out = []
    for i, ch in enumerate("\x00\x07\n\t\x1b\x7f\x85\u2028"):
        tid = _uid()
        out.append(_msg({"type": "task-sent", "uuid": tid, "name": f"ctl{ch}{i}",
                         "queue": f"q{ch}", "hostname": f"c{ch}@h"}))
        out.append(_msg({"type": "task-succeeded", "uuid": tid, "hostname": f"w{ch}@h",
                         "runtime": 0.1}))
    return out


def long_names(n: int = 20, size: int = 100_000) -> list[RawMessage]:
    out = []
    for i in range(n):
        tid = _uid()
        out.append(_msg({"type": "task-sent", "uuid": tid, "name": f"{i:04d}" + "n" * size,
                         "queue": f"{i:04d}" + "q" * size, "hostname": "client@h"}))
        out.append(_msg({"type": "task-started", "uuid": tid,
                         "hostname": f"{i:04d}" + "h" * size}))
    return out


def long_uuids(n: int = 200) -> list[RawMessage]:
    return [_msg({"type": "task-sent", "uuid": f"{i}-" + "u" * 10_000, "name": "long.uuid",
                  "queue": "celery"}) for i in range(n)]


def wrong_types() -> list[RawMessage]:
    return [_msg({"type": "task-sent", "uuid": _uid(), "name": 5, "queue": ["x"],
                  "hostname": {"a": 1}}),
            ("task.sent", b"\xff\xfe not json", {}),
            ("task.sent", b'"just a string"', {})]


def compressed() -> list[RawMessage]:
    zeros = b"\0" * (20 << 20)
    ok = _json({"type": "task-sent", "uuid": _uid(), "name": "compressed.ok",
                "queue": "celery"})
    return [
        ("task.sent", zlib.compress(zeros, 9), {"compression": "application/x-gzip"}),
        ("task.sent", bz2.compress(zeros, 9), {"compression": "application/x-bz2"}),
        ("task.sent", lzma.compress(zeros), {"compression": "application/x-lzma"}),
        ("task.sent", b"\x1b\x00\x00", {"compression": "application/x-brotli"}),
        ("task.sent", b"\x28\xb5\x2f\xfd", {"compression": "application/zstd"}),
        ("task.sent", b"x\x9c garbage", {"compression": "zlib"}),
        ("task.sent", zlib.compress(ok), {"compression": "application/x-gzip"}),
    ]


def oversized() -> list[RawMessage]:
    return [_msg({"type": "task-sent", "uuid": _uid(), "name": "big.args", "queue": "celery",
                  "args": "a" * size}) for size in (1536 << 10, 8 << 20)]


#: characters str.isprintable refuses that are neither C0/C1 controls nor surrogates: a
#: bidi override (text shown reversed), zero-width space and joiner, BOM, a tag
#: character, the line separator
INVISIBLE = "\u202e\u200b\u200d\ufeff\U000e0041\u2028"


def invisible() -> list[RawMessage]:
    out = []
    for i, ch in enumerate(INVISIBLE):
        tid = _uid()
        out.append(_msg({"type": "task-sent", "uuid": tid, "name": f"inv{ch}{i}.task",
                         "queue": f"q{ch}", "hostname": f"c{ch}@h"}))
        out.append(_msg({"type": "task-succeeded", "uuid": tid, "hostname": f"w{ch}@h",
                         "runtime": 0.1}))
    return out


def future_clock() -> list[RawMessage]:
    """A task's events stamped a year ahead (a sender's clock, or a forged event)."""
    ahead = time.time() + 365 * 86400
    tid = _uid()
    return [_msg({"type": etype, "uuid": tid, "name": "future.task", "queue": "celery",
                  "hostname": "w@h", "timestamp": ahead, **extra})
            for etype, extra in (("task-sent", {}), ("task-started", {}),
                                 ("task-failed", {"exception": "ConnectionError()"}))]


#: created if any consumer ever unpickles (or yaml-loads) what it is sent
PWNED = Path(tempfile.gettempdir()) / f"fp-hostile-unpickled-{os.getpid()}"


class _Unpickled:
    def __reduce__(self) -> tuple:
        return (Path.touch, (PWNED,))


def serializers() -> list[RawMessage]:
    """Event bodies in serializers other than JSON: never decoded, above all never
    unpickled (content types are the sender's to choose)."""
    import pickle

    event = _json({"type": "task-sent", "uuid": _uid(), "name": "other.serializer"})
    return [
        ("task.sent", pickle.dumps(_Unpickled()),
         {}, ("application/x-python-serialize", "binary")),
        ("task.sent", f"!!python/object/apply:os.system ['touch {PWNED}']".encode(),
         {}, ("application/x-yaml", "utf-8")),
        ("task.sent", b"\x81\xa4type\xa9task-sent", {}, ("application/x-msgpack", "binary")),
        ("task.sent", event, {}, ("application/json", "rot13")),
    ]


def grouped() -> list[RawMessage]:
    events = [{"type": "task-sent", "uuid": _uid(), "name": "grouped.task", "queue": "celery",
               "timestamp": time.time(), "utcoffset": 0, "clock": i}
              for i in range(MAX_EVENTS_PER_MESSAGE + 500)]
    return [("task.sent", json.dumps(events).encode(), {})]


#: batch -> (messages, {decode-error kind or "length": at least this many more})
BATCHES: dict[str, tuple[Callable[[], list[RawMessage]], dict[str, int]]] = {
    "surrogates": (surrogates, {"bad_text": 20, "unknown_type": 1}),
    "control_characters": (control_characters, {"bad_text": 16}),
    "long_names": (long_names, {"length": 60}),
    "long_uuids": (long_uuids, {"bad_uuid": 200}),
    "wrong_types": (wrong_types, {"bad_field": 3, "undecodable_body": 1, "not_a_mapping": 1}),
    "compressed": (compressed, {"oversized_message": 3, "unsupported_compression": 2,
                                "undecodable_body": 1}),
    "oversized": (oversized, {"oversized_message": 2}),
    "grouped": (grouped, {"too_many_events": 500}),
    "invisible": (invisible, {"bad_text": 24}),
    "future_clock": (future_clock, {"bad_field": 3}),
    "serializers": (serializers, {"undecodable_body": 3}),
}


# -- checks --------------------------------------------------------------------------------
def counters(exporter: RunningExporter) -> dict[str, float]:
    """Decode errors by kind, plus label_overflow{label="length"} as "length"."""
    out: dict[str, float] = {}
    families = exporter.families()
    for (name, labels), value in families["flower_practices_event_decode_errors"].items():
        if name.endswith("_total"):
            out[dict(labels)["kind"]] = value
    out["length"] = sum(v for (n, lbls), v in families["flower_practices_label_overflow"].items()
                        if n.endswith("_total") and dict(lbls).get("label") == "length")
    return out


def shown_as_is(value: str) -> bool:
    """Every character printable or a space: nothing hidden, reordered or line-breaking."""
    return all(c.isprintable() or unicodedata.category(c) == "Zs" for c in value)


def assert_serving(exporter: ExporterProcess, *, openmetrics: bool = True) -> dict:
    """Alive, /metrics 200 (in both formats) and parsed, /api/practices strict JSON, every
    label value at most MAX_LABEL_LENGTH characters. Returns the text families."""
    exporter.alive()
    status, text = exporter.get("/metrics")
    assert status == 200, text[:2000]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for family in families.values():
        for sample in family.samples:
            for value in sample.labels.values():
                assert len(value) <= MAX_LABEL_LENGTH, (sample.name, value[:80])
                assert shown_as_is(value), (sample.name, value[:80])
    if openmetrics:
        status, om = exporter.get("/metrics", OPENMETRICS)
        assert status == 200, om[:2000]
        assert om.endswith("# EOF\n")
        assert list(openmetrics_families(om))
    status, raw = exporter.get("/api/practices")
    assert status == 200, raw[:2000]
    payload = orjson.loads(raw.encode())  # strict: rejects lone surrogates
    assert {"findings", "practices", "coverage"} <= set(payload)
    return families


def send_normal(broker: str, name: str) -> None:
    publish_raw(broker, [_msg({"type": "task-sent", "uuid": _uid(), "name": name,
                               "queue": "celery", "hostname": "client@h"})])


def until_counted(exporter: RunningExporter, broker: str, name: str,
                  timeout: float = 60) -> None:
    """Send a normal task-sent of ``name`` until it is counted (the first few may be
    published before the consumer is subscribed: events are not queued for it)."""
    def counted() -> bool:
        if exporter.total("celery_task_events_total", task=name) >= 1:
            return True
        send_normal(broker, name)
        return False

    wait_for(counted, timeout=timeout, interval=0.5, message=f"{name} counted")


CONFIG = """
[exporter]
evaluation_interval = 0.5
probe_interval = 1.0
event_consumer = "{consumer}"
"""


@pytest.fixture(params=[
    pytest.param(("redis", "auto"), marks=pytest.mark.redis, id="redis-direct"),
    pytest.param(("redis", "kombu"), marks=pytest.mark.redis, id="redis-kombu"),
    pytest.param(("amqp", "auto"), marks=pytest.mark.rabbitmq, id="rabbitmq-direct"),
    pytest.param(("amqp", "kombu"), marks=pytest.mark.rabbitmq, id="rabbitmq-kombu"),
])
def hostile_exporter(request: pytest.FixtureRequest) -> Iterator[tuple[ExporterProcess, str]]:
    kind, consumer = request.param
    broker = fresh_redis_url() if kind == "redis" else request.getfixturevalue("amqp_url")
    exporter = ExporterProcess(broker, CONFIG.format(consumer=consumer), log_level="info")
    try:
        exporter.start()
        if consumer == "auto":  # the lean consumer of that broker, not the fallback
            path = "direct Redis pub/sub" if kind == "redis" else "direct AMQP consumer"
            wait_for(lambda: f"connected to the broker ({path})" in exporter.output(),
                     timeout=10, message=f"{path} in use\n{exporter.output()}")
        yield exporter, broker
    finally:
        exporter.stop()
        if kind == "redis":
            release_redis_dbs(broker)


@pytest.mark.slow
def test_hostile_batches_never_blind_the_exporter(
        hostile_exporter: tuple[ExporterProcess, str]) -> None:
    exporter, broker = hostile_exporter
    until_counted(exporter, broker, "normal.before")
    assert_serving(exporter)
    for batch, (make, expected) in BATCHES.items():
        before = counters(exporter)
        publish_raw(broker, make())
        # events are consumed in order: once the normal event after the batch is counted,
        # the whole batch has been processed
        until_counted(exporter, broker, f"normal.after.{batch}")
        families = assert_serving(exporter)
        after = counters(exporter)
        for kind, n in expected.items():
            assert after.get(kind, 0) - before.get(kind, 0) >= n, (batch, kind, before, after)
        if batch == "long_names":
            tasks = {s.labels["task"] for s in families["celery_task_events"].samples}
            cut = [t for t in tasks if t.endswith(TRUNCATION_MARKER)]
            assert len(cut) == 20 and all(len(t) == MAX_LABEL_LENGTH for t in cut)
        if batch == "compressed":  # a small compressed event is inflated and counted
            assert exporter.total("celery_task_events_total", task="compressed.ok") == 1
        if batch == "grouped":
            assert exporter.total("celery_task_events_total",
                                  task="grouped.task") == MAX_EVENTS_PER_MESSAGE
        if batch == "invisible":
            names = {s.labels["task"] for s in families["celery_task_events"].samples}
            assert "inv\ufffd0.task" in names and "inv\ufffd5.task" in names
        if batch == "serializers":
            assert not PWNED.exists(), "a consumer unpickled or yaml-loaded an event"
        if batch == "surrogates":
            names = {s.labels["task"] for s in families["celery_task_events"].samples}
            assert "bad\ufffd.0" in names
    assert exporter.total("flower_practices_render_errors_total") == 0
    # nothing above was worth dropping the broker connection for
    assert exporter.total("flower_practices_broker_reconnects_total") == 0


@pytest.mark.slow
@pytest.mark.redis
def test_memory_bounded_under_huge_names_and_concurrent_scrapes() -> None:
    """200 task names (and queues, hostnames) of 100k characters, then 100 concurrent
    scrapes: the exporter process's RSS grows by less than 50 MB."""
    broker = fresh_redis_url()
    exporter = ExporterProcess(broker, CONFIG.format(consumer="auto"))
    try:
        exporter.start()
        until_counted(exporter, broker, "normal.before")
        for _ in range(5):
            assert_serving(exporter)
        baseline = exporter.rss_bytes()
        for chunk in range(10):  # 10 x 20 names, each chunk consumed before the next
            publish_raw(broker, [_msg({"type": "task-sent", "uuid": _uid(),
                                       "name": f"{chunk:02d}{i:02d}" + "n" * 100_000,
                                       "queue": "celery", "hostname": "client@h"})
                                 for i in range(20)])
            until_counted(exporter, broker, f"normal.after.{chunk}")
        assert counters(exporter)["length"] >= 200
        results: list[int] = []

        def scrape() -> None:
            status, text = exporter.get("/metrics")
            results.append(status if "normal.after.9" in text else -status)

        threads = [threading.Thread(target=scrape) for _ in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results == [200] * 100
        grown = exporter.rss_bytes() - baseline
        page = len(exporter.get("/metrics")[1])
        print(f"RSS {baseline / 2**20:.1f} MiB -> +{grown / 2**20:.1f} MiB; "
              f"/metrics {page / 1024:.0f} KiB")
        assert grown < 50 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB"
        assert_serving(exporter)
    finally:
        exporter.stop()
        release_redis_dbs(broker)


@pytest.mark.slow
@pytest.mark.redis
def test_one_message_over_the_pubsub_limit_is_a_counted_gap(private_redis: dict) -> None:
    """A single PUBLISH bigger than Redis' ``client-output-buffer-limit pubsub`` hard limit
    (32 MB by default; 1 MB here) makes Redis drop every subscriber of the channel, however
    fast: no consumer can prevent it. The exporter must say so -- the gap counted, the
    cause logged as such (not only as falling behind) -- reconnect, and go on counting."""
    url = private_redis["url"]
    client = redis.Redis.from_url(url)
    client.config_set("client-output-buffer-limit", "pubsub 1048576 0 0")
    exporter = ExporterProcess(url, CONFIG.format(consumer="auto"), log_level="info").start()
    try:
        until_counted(exporter, url, "normal.before")
        client.publish("/0.celeryev/task.sent", b"x" * (2 << 20))
        wait_for(lambda: exporter.total("flower_practices_event_stream_gaps_total") >= 1,
                 timeout=30, message="the gap counted")
        until_counted(exporter, url, "normal.after")
        assert_serving(exporter)
        log = exporter.output()
        assert "client-output-buffer-limit pubsub (1048576 0 0)" in log, log
        assert "one message larger than the limit" in log, log
    finally:
        exporter.stop()


@pytest.mark.slow
@pytest.mark.redis
def test_flower_plugin_survives_a_surrogate_name(tmp_path: Path) -> None:
    """Flower labels its own metrics with the raw task name and hostname: the plugin
    sanitises the event before Flower's state sees it, so Flower's /metrics stays 200.
    Flower's own event consumer gets the same message caps (bombs, groups) as ours."""
    from tests.test_flower_plugin_integration import FlowerProcess

    broker = fresh_redis_url()
    config = tmp_path / "practices.toml"
    config.write_text("[exporter]\nevaluation_interval = 0.5\nprobe_interval = 1.0\n")
    flower = FlowerProcess(broker, ["flower-practices", f"--practices_config={config}"],
                           tmp_path)
    try:
        reader = _FlowerReader(flower)
        until_counted(reader, broker, "normal.before")
        publish_raw(broker, surrogates() + control_characters() + long_names(3, 100_000)
                    + compressed() + grouped())
        until_counted(reader, broker, "normal.after")
        # Flower serves text format only; its /api/practices is the plugin's
        families = assert_serving(reader, openmetrics=False)
        assert families["flower_events"].samples  # Flower's own family, labels sanitised
        assert reader.total("flower_practices_event_decode_errors_total", kind="bad_text") > 0
        assert reader.total("flower_practices_label_overflow_total", label="length") >= 9
        kinds = counters(reader)
        assert kinds["oversized_message"] >= 3 and kinds["unsupported_compression"] >= 2
        assert kinds["too_many_events"] == 500
        assert reader.total("celery_task_events_total", task="compressed.ok") == 1
        assert reader.total("flower_practices_broker_reconnects_total") == 0
    finally:
        flower.stop()
        release_redis_dbs(broker)


class _FlowerReader(ExporterProcess):
    """The readers and checks of ExporterProcess pointed at a Flower process."""

    def __init__(self, flower: object) -> None:  # noqa: D107 - no super(): no app
        self.flower = flower

    def alive(self) -> bool:
        proc = self.flower.proc  # type: ignore[attr-defined]
        assert proc.poll() is None, self.flower.output()  # type: ignore[attr-defined]
        return True

    def get(self, path: str, accept: str = "") -> tuple[int, str]:
        return self.flower.get(path)  # type: ignore[attr-defined]


# -- the pieces, without brokers -----------------------------------------------------------
def test_clean_text_caps_and_replaces() -> None:
    assert clean_text("ok.task") == ("ok.task", False, False)
    value, cut, bad = clean_text("a\ud800b\x00c\x9fd")
    assert (value, cut, bad) == ("a\ufffdb\ufffdc\ufffdd", False, True)
    value, cut, bad = clean_text("x" * 100_000 + "\ud800")
    assert cut and not bad and len(value) == MAX_LABEL_LENGTH
    assert value == "x" * (MAX_LABEL_LENGTH - 1) + TRUNCATION_MARKER
    assert clean_text("tâche ☃ \u00a0")[2] is False  # valid non-ASCII text is kept


def test_engine_counts_what_it_cleans_and_drops() -> None:
    engine = Engine(Settings())
    status = engine.stream_status
    engine.observe({"type": "task-sent", "uuid": "u" * 129, "name": "t"})
    assert status.decode_errors["bad_uuid"] == 1 and len(engine.state.tasks) == 0
    event = {"type": "task-sent", "uuid": "u\ud800", "name": "n" * 500, "queue": "q\n",
             "hostname": 7}
    engine.observe(event)
    assert event["uuid"] == "u\ufffd" and event["queue"] == "q\ufffd"
    assert len(event["name"]) == MAX_LABEL_LENGTH and event["hostname"] is None
    assert status.decode_errors["bad_text"] == 2 and status.decode_errors["bad_field"] == 1
    assert status.labels_truncated == 1


def test_invisible_characters_are_replaced_and_counted() -> None:
    """Bidi overrides, zero-width characters, the BOM, tag characters and the line
    separator pass ``str.isprintable``'s test no better than control characters: they
    would reverse or hide a name in Grafana or the page. They become U+FFFD, counted;
    spaces (no-break, ideographic) are text and stay."""
    engine = Engine(Settings())
    status = engine.stream_status
    for i, ch in enumerate(INVISIBLE):
        event = {"type": "task-sent", "uuid": f"inv{i}", "name": f"a{ch}b",
                 "queue": f"q{ch}", "hostname": "c@h"}
        engine.observe(event)
        assert (event["name"], event["queue"]) == ("a\ufffdb", "q\ufffd"), repr(ch)
    assert status.decode_errors["bad_text"] == 2 * len(INVISIBLE)
    from flower_practices.events.sanitize import _SPACES

    spaces = {c for c in map(chr, range(sys.maxunicode + 1))
              if unicodedata.category(c) == "Zs" and c != " "}
    assert spaces == _SPACES
    event = {"type": "task-sent", "uuid": "nbsp", "name": "a\u00a0b\u3000c", "queue": "q"}
    engine.observe(event)
    assert event["name"] == "a\u00a0b\u3000c"
    assert status.decode_errors["bad_text"] == 2 * len(INVISIBLE)


def test_a_timestamp_from_the_future_holds_no_finding_open() -> None:
    """An event stamped far ahead of its arrival (a sender's clock, or a forged event)
    would keep every window it enters open until that time: a finding that never clears.
    Past MAX_FUTURE_SECONDS (60) ahead it is stamped with its arrival, counted as
    bad_field; a small skew is kept as is."""
    engine = Engine(Settings())
    status = engine.stream_status
    now = time.time()
    kept = []
    for name, skew in (("year.ahead", 365 * 86400.0), ("int.ahead", 10**10),
                       ("slightly.ahead", 30.0)):
        ts = now + skew
        for etype, extra in (("task-sent", {"name": name, "queue": "celery"}),
                             ("task-started", {}),
                             ("task-failed", {"exception": "ConnectionError()"})):
            event = {"type": etype, "uuid": name, "hostname": "w@h", "timestamp": ts,
                     "local_received": now, **extra}
            engine.observe(event)
            kept.append(event["timestamp"])
    assert kept[:6] == [now] * 6 and kept[6:] == [now + 30.0] * 3
    assert status.decode_errors["bad_field"] == 6
    engine.evaluate(now + 1)
    active = {f.task for f in engine.findings.active() if f.practice == "retryless_failure"}
    assert active == {"year.ahead", "int.ahead", "slightly.ahead"}
    # the rule's window (600 s) and the clearing delay (120 s) after the failures
    for later in (now + 700, now + 900):
        engine.evaluate(later)
    assert [f.task for f in engine.findings.active() if f.practice == "retryless_failure"] \
        == []


def test_inflate_is_bounded() -> None:
    for compress, method in ((zlib.compress, "zlib"), (bz2.compress, "bzip2"),
                             (lzma.compress, "xz")):
        assert inflate(compress(b"{}"), method) == b"{}"
        with pytest.raises(MessageRefused) as info:
            inflate(compress(b"\0" * (8 << 20)), method)
        assert info.value.kind == "oversized_message"
    with pytest.raises(MessageRefused) as info:
        inflate(b"...", "application/x-brotli")
    assert info.value.kind == "unsupported_compression"


def test_a_family_that_cannot_render_is_skipped_and_counted() -> None:
    engine = Engine(Settings())
    registry = CollectorRegistry()
    registry.register(PracticesCollector(engine))

    class Broken:
        def collect(self) -> Iterator[GaugeMetricFamily]:
            family = GaugeMetricFamily("broken", "x", labels=["l"])
            family.add_metric(["\ud800"], 1.0)
            yield family

    registry.register(Broken())
    errors = engine.metrics.render_errors
    for accept in ("", OPENMETRICS):
        body, _ = render_metrics(registry, accept, errors)
        text = body.decode()
        assert "# HELP broken " not in text and "flower_practices_events_total" in text
    assert errors == {"broken": 2}
    body, _ = render_metrics(registry, "", errors)
    assert 'flower_practices_render_errors_total{family="broken"} 2.0' in body.decode()
    # under Flower (validate=True) our collector never yields a family that cannot render
    engine.stream_status.decode_errors["\ud800"] = 1
    names = {f.name for f in PracticesCollector(engine, validate=True).collect()}
    assert "flower_practices_event_decode_errors" not in names
    assert "flower_practices_events" in names and "celery_task_events" in names
    assert errors["flower_practices_event_decode_errors"] == 1
    engine.findings.active = lambda: [object()]  # type: ignore[method-assign]
    collector = PracticesCollector(engine, validate=True)
    assert list(collector.collect()) == []  # the collection itself fails: nothing, counted
    assert errors["flower_practices_collector"] == 1


def test_practices_json_is_strict() -> None:
    raw = json_bytes({"s": "a\ud800", "n": float("nan"), "l": [float("inf")]})
    assert orjson.loads(raw) == {"s": "a?", "n": None, "l": [None]}


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=400))
def test_clean_text_always_yields_a_valid_bounded_label(value: str) -> None:
    cleaned, cut, bad = clean_text(value)
    cleaned.encode("utf-8")  # never a lone surrogate
    assert len(cleaned) <= MAX_LABEL_LENGTH and cut == (len(value) > MAX_LABEL_LENGTH)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in cleaned)
    assert shown_as_is(cleaned)  # no bidi control, zero-width or line separator either
    if not cut and not bad:
        assert cleaned == value  # valid text is never changed
    if len(value) <= MAX_LABEL_LENGTH and value.isprintable():
        assert (cleaned, cut, bad) == (value, False, False)


def test_render_metrics_matches_prometheus_client_when_nothing_fails() -> None:
    from prometheus_client.exposition import generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

    engine = Engine(Settings())
    for i, name in enumerate(("a", "tâche ☃", 'q"\\')):
        engine.observe({"type": "task-sent", "uuid": f"u{i}", "name": name, "queue": name,
                        "timestamp": 1.7e9})
        engine.observe({"type": "task-succeeded", "uuid": f"u{i}", "runtime": 0.5,
                        "hostname": "w@h", "timestamp": 1.7e9 + 1})
    registry = CollectorRegistry()
    registry.register(PracticesCollector(engine))
    assert render_metrics(registry, "")[0] == generate_latest(registry)
    assert render_metrics(registry, OPENMETRICS)[0] == openmetrics(registry)
    assert engine.metrics.render_errors == {}


@pytest.mark.slow
@pytest.mark.redis
def test_worker_replies_are_cleaned_like_events(redis_url: str) -> None:
    """Queue names from a real worker's remote-control reply become labels too: cleaned
    exactly as the same names in events are, so both sides still match."""
    from flower_practices.probes.workers import probe_workers
    from tests.conftest import make_producer
    from tests.support.worker import WorkerProcess

    long_queue, bell_queue = "L" * 300, "bell\x07queue"
    producer = make_producer(redis_url)
    worker = WorkerProcess("tests.apps.basic", redis_url,
                           queues=f"celery,{long_queue},{bell_queue}").start(producer)
    try:
        samples = wait_for(lambda: probe_workers(producer), timeout=30,
                           message="an active_queues reply")
        sample = samples[worker.name]
        expected = {clean_text(long_queue)[0], clean_text(bell_queue)[0], "celery"}
        assert set(sample.queues) == expected
        assert "L" * (MAX_LABEL_LENGTH - 1) + TRUNCATION_MARKER in sample.queues
        assert "bell\ufffdqueue" in sample.queues
    finally:
        worker.stop()


@pytest.mark.parametrize("etype", ["task-sent", "task-received", "worker-heartbeat"])
def test_every_label_field_of_an_event_is_sanitised_by_the_engine(etype: str) -> None:
    """Each field validation names (TASK_FIELDS / WORKER_FIELDS of events.sanitize; the
    engine's check is unrolled for speed) is bounded and made printable, whichever it is."""
    from flower_practices.events.sanitize import MAX_LABEL_LENGTH, TASK_FIELDS, WORKER_FIELDS

    fields = WORKER_FIELDS if etype.startswith("worker") else TASK_FIELDS
    for field in fields:
        eng = Engine(Settings())
        event = {"type": etype, "uuid": "u-1", "timestamp": time.time(),
                 "hostname": "w@h", field: "x\ud800\n" + "y" * (3 * MAX_LABEL_LENGTH)}
        eng.observe(event)
        value = event[field]
        assert len(value) <= MAX_LABEL_LENGTH + 16 and value.isprintable(), field
        assert "\ud800" not in value and "\n" not in value, field
        assert eng.stream_status.events == 1
