"""Property-based fuzzing: malformed events never raise, and every drop is counted.

Targets: ``Engine.observe`` (the validation in front of state and rules), the direct Redis
decoder (:class:`EventDecoder`, raw pub/sub payload bytes), and every rule registered in
``flower_practices.rules.ALL_RULES`` — iterated, so rules added later are fuzzed too. A
rule hook or evaluation that raises on a malformed event is a failure here even though
the engine would contain it (it would silently stop that rule from seeing events).
"""

from __future__ import annotations

import base64
import json

import orjson
import pytest
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.events.fast_redis import EventDecoder
from flower_practices.events.sanitize import json_bytes
from flower_practices.events.types import KNOWN_EVENTS
from flower_practices.metrics import PracticesCollector, render_metrics
from flower_practices.rules import ALL_RULES

FIELDS = ["type", "uuid", "name", "hostname", "timestamp", "queue", "routing_key", "retries",
          "runtime", "exception", "traceback", "args", "kwargs", "freq", "active",
          "processed", "local_received", "clock", "utcoffset", "eta", "expires", "result",
          "exchange", "sw_ident", "loadavg", "root_id", "parent_id", "pid"]

# hostile text: lone surrogates, control characters, over the 200-character label cap
hostile = st.one_of(
    st.text(alphabet=st.sampled_from(["a", "\ud800", "\udfff", "\x00", "\n", "\x85", "é"]),
            max_size=30),
    st.text(alphabet="ab\ud800", min_size=190, max_size=260))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    hostile,
    st.binary(max_size=10),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8)
# plausible values per field, mixed with anything at all
types = st.one_of(st.sampled_from(sorted(KNOWN_EVENTS)), st.text(max_size=20), values)
plausible = {
    "type": types,
    "uuid": st.one_of(st.sampled_from(["u1", "u2", "u3", ""]), values),
    "name": st.one_of(st.sampled_from(["t.a", "t.b", ""]), hostile, values),
    "hostname": st.one_of(st.sampled_from(["w1@h", "w2@h", ""]), hostile, values),
    "timestamp": st.one_of(st.floats(1.6e9, 1.8e9), values),
    "queue": st.one_of(st.sampled_from(["q1", "q2", ""]), hostile, values),
    "retries": st.one_of(st.integers(-3, 5), values),
    "runtime": st.one_of(st.floats(-1, 1e4), values),
    "exception": st.one_of(st.sampled_from(["ConnectionError('x')", "ValueError()", ""]),
                           values),
    "args": st.one_of(st.sampled_from(["(<User: bob>,)", "()", "<object at 0x1>"]), values),
    "kwargs": st.one_of(st.sampled_from(["{'u': <Order: 1>}", "{}"]), values),
    "processed": st.one_of(st.integers(0, 100), values),
    "active": st.one_of(st.integers(0, 10), values),
    "freq": st.one_of(st.floats(0, 10), values),
}
events = st.fixed_dictionaries(
    {}, optional={k: plausible.get(k, values) for k in FIELDS}
).flatmap(lambda d: st.dictionaries(st.text(max_size=10), values, max_size=3).map(
    lambda extra: {**extra, **d}))
anything = st.one_of(events, values)

FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: per rule (13 and counting): fewer examples each, the all-rules test runs the full count
FUZZ_RULE = settings(FUZZ, max_examples=50)


def _engine(rule_classes=None) -> Engine:
    return Engine(Settings(evaluation_interval=1.0), rule_classes=rule_classes)


def _check(engine: Engine, batch: list) -> None:
    status = engine.stream_status
    before = status.events
    for event in batch:
        engine.observe(event)
    assert status.events == before + len(batch)
    for now in (1.7e9, 1.8e9):
        engine.evaluate(now)
    assert not engine.rule_errors, f"rules raised on malformed events: {engine.rule_errors}"
    orjson.loads(json_bytes(engine.practices_payload()))  # strict JSON still
    registry = CollectorRegistry()
    registry.register(PracticesCollector(engine))
    text = render_metrics(registry, "", engine.metrics.render_errors)[0].decode()
    assert list(text_string_to_metric_families(text))
    assert not engine.metrics.render_errors, engine.metrics.render_errors  # all rendered


@pytest.mark.slow
@FUZZ
@given(st.lists(anything, max_size=25))
def test_observe_never_raises_and_counts_drops(batch: list) -> None:
    engine = _engine()
    _check(engine, batch)
    errors = engine.stream_status.decode_errors
    non_mappings = sum(1 for e in batch if not isinstance(e, dict))
    assert errors["not_a_mapping"] == non_mappings
    valid_type = sum(1 for e in batch if isinstance(e, dict)
                     and isinstance(e.get("type"), str) and e["type"] in KNOWN_EVENTS)
    assert errors["missing_type"] + errors["unknown_type"] == \
        sum(1 for e in batch if isinstance(e, dict)) - valid_type


def test_observe_counts_each_kind() -> None:
    engine = _engine()
    for event in (5, {"uuid": "x"}, {"type": "task-nope", "uuid": "x"},
                  {"type": "task-sent"}, {"type": "task-sent", "uuid": "a",
                                          "timestamp": "noon"}):
        engine.observe(event)
    errors = engine.stream_status.decode_errors
    assert (errors["not_a_mapping"], errors["missing_type"], errors["unknown_type"],
            errors["missing_uuid"], errors["bad_field"]) == (1, 1, 1, 1, 1)


@pytest.mark.slow
@pytest.mark.skipif(not ALL_RULES, reason="no rules registered in ALL_RULES yet")
@pytest.mark.parametrize("rule_class", ALL_RULES, ids=lambda c: c.id)
@FUZZ_RULE
@given(batch=st.lists(events, max_size=30))
def test_each_rule_survives_malformed_events(rule_class, batch: list) -> None:
    _check(_engine([rule_class]), batch)


@FUZZ
@given(batch=st.lists(events, max_size=30))
def test_all_rules_together_survive_malformed_events(batch: list) -> None:
    _check(_engine(), batch)


def _envelope(body: bytes, *, b64: bool = True, ctype: object = "application/json") -> bytes:
    return json.dumps({
        "body": base64.b64encode(body).decode() if b64 else body.decode("latin-1"),
        "content-encoding": "utf-8", "content-type": ctype,
        "properties": {"body_encoding": "base64" if b64 else None},
    }).encode()


def _decoder() -> tuple[EventDecoder, Engine]:
    engine = _engine()
    app = Celery("fuzz", broker="redis://127.0.0.1:6379/0", set_as_current=False)
    return EventDecoder(app, engine.observe, engine.stream_status), engine


@FUZZ
@given(st.lists(st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=200).map(_envelope),
    st.binary(max_size=200).map(lambda b: _envelope(b, b64=False)),
    anything.map(lambda v: _envelope(json.dumps(v, default=repr).encode())),
    anything.map(lambda v: _envelope(json.dumps(v, default=repr).encode(),
                                     ctype="application/x-python-serialize")),
    values.map(lambda v: json.dumps(v, default=repr).encode()),
), max_size=20))
def test_fast_decoder_never_raises(payloads: list[bytes]) -> None:
    engine = _engine()
    delivered = []

    def handler(event: dict) -> None:
        delivered.append(event)
        engine.observe(event)

    app = Celery("fuzz", broker="redis://127.0.0.1:6379/0", set_as_current=False)
    decoder = EventDecoder(app, handler, engine.stream_status)
    undecodable = 0
    for data in payloads:
        try:
            envelope = json.loads(data)
            ok = isinstance(envelope, dict) and "body" in envelope
        except ValueError:
            ok = False
        undecodable += not ok
        decoder.feed(data)
    status = engine.stream_status
    # every payload is accounted for: delivered events, or counted drops
    assert status.events == (len(delivered) + status.decode_errors["undecodable_body"]
                             + status.decode_errors["not_a_mapping"])
    assert status.decode_errors["undecodable_body"] >= undecodable
    assert all(isinstance(e, dict) and "local_received" in e for e in delivered)
    engine.evaluate(1.8e9)
    assert not engine.rule_errors


def test_fast_decoder_refuses_pickle_and_counts_it() -> None:
    import pickle

    decoder, engine = _decoder()
    decoder.feed(_envelope(pickle.dumps({"type": "task-sent", "uuid": "x"}),
                           ctype="application/x-python-serialize"))
    decoder.feed(b"\x00garbage")
    decoder.feed(_envelope(b"{not json"))
    assert engine.stream_status.decode_errors["undecodable_body"] == 3
    assert len(engine.state.tasks) == 0
    decoder.feed(_envelope(json.dumps({"type": "task-sent", "uuid": "ok", "name": "t.a",
                                       "timestamp": 1.7e9, "clock": 1}).encode()))
    assert "ok" in engine.state.tasks


def test_the_rule_check_catches_a_raising_rule() -> None:
    """Control: a rule that raises on a malformed event is contained, counted and reported."""
    from flower_practices.rules.base import Rule

    class Fragile(Rule):
        id = "lost_task"  # any catalogue id

        def hooks(self):
            return {"task-sent": lambda event, rec: event["name"].lower()}

    engine = _engine([Fragile])
    with pytest.raises(AssertionError, match="rules raised"):
        _check(engine, [{"type": "task-sent", "uuid": "u1", "name": 5}])
    assert engine.rule_errors == {"lost_task": 1}
    assert engine.stream_status.events == 1
