"""``render_text`` (what ``/metrics`` serves) is byte-identical to prometheus_client's
``generate_latest``, and ``render_metrics``' OpenMetrics to prometheus_client's OpenMetrics
``generate_latest``, for our collector fed hostile label values and for every metric type."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info, Summary
from prometheus_client.core import GaugeHistogramMetricFamily
from prometheus_client.exposition import choose_encoder, generate_latest

from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.metrics import PracticesCollector, render_metrics, render_text

#: Accept headers choosing OpenMetrics: Prometheus' default, and the other escapings
OPENMETRICS_ACCEPTS = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "application/openmetrics-text",
    "application/openmetrics-text;version=1.0.0;escaping=dots",
    "application/openmetrics-text;version=1.0.0;escaping=values",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text;version=2.0.0",
)


def assert_same_exposition(registry: CollectorRegistry) -> None:
    assert render_text(registry) == generate_latest(registry)
    for accept in OPENMETRICS_ACCEPTS:
        encoder, content_type = choose_encoder(accept)
        assert render_metrics(registry, accept) == (encoder(registry), content_type), accept

names = st.text(min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(names, names, names), min_size=1, max_size=8))
def test_render_text_matches_generate_latest(triples: list[tuple[str, str, str]]) -> None:
    engine = Engine(Settings(max_task_names=5, max_queues=3, max_workers=4))
    for i, (task, queue, host) in enumerate(triples):
        uuid = f"u{i}"
        engine.observe({"type": "task-sent", "uuid": uuid, "name": task, "queue": queue,
                        "timestamp": 1.7e9})
        engine.observe({"type": "task-started", "uuid": uuid, "hostname": host,
                        "timestamp": 1.7e9 + 1})
        engine.observe({"type": "task-succeeded", "uuid": uuid, "hostname": host,
                        "runtime": 0.5, "timestamp": 1.7e9 + 2})
        engine.observe({"type": "worker-heartbeat", "hostname": host, "timestamp": 1.7e9})
    engine.evaluate(1.7e9 + 3)
    registry = CollectorRegistry()
    registry.register(PracticesCollector(engine))
    assert_same_exposition(registry)


def test_render_text_matches_for_every_metric_type() -> None:
    registry = CollectorRegistry()
    Counter("c_total", 'a "counter"\nwith\\help', ["l"], registry=registry).labels('x"\\\n').inc()
    Gauge("g", "gauge", registry=registry).set(float("nan"))
    Histogram("h", "hist", ["le2"], registry=registry).labels("a").observe(0.3)
    Summary("s", "summary", registry=registry).observe(2)
    Info("i", "info", registry=registry).info({"version": "1", "ünï": "☃"})
    Enum("e", "enum", states=["a", "b"], registry=registry).state("b")

    class GH:
        def collect(self):
            fam = GaugeHistogramMetricFamily("gh", "gauge histogram", labels=["x"])
            fam.add_metric(["y"], [("1.0", 3), ("+Inf", 5)], gsum_value=7)
            yield fam

    registry.register(GH())
    assert_same_exposition(registry)
