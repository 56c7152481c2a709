"""The JSON documents both front ends serve, built once in flower_practices.api."""

from __future__ import annotations

from flower_practices.api import health_document, practices_document
from flower_practices.catalogue import PRACTICES
from flower_practices.config import Settings
from flower_practices.engine import Engine


def test_health_follows_the_event_stream() -> None:
    engine = Engine(Settings(), broker_url="redis://localhost:6379/0")
    code, doc = health_document(engine)
    assert code == 503 and doc["status"] == "unavailable" and doc["since"] > 0
    engine.stream_status.mark_connected()
    code, doc = health_document(engine)
    assert code == 200
    assert doc == {"status": "ok", "reason": "event stream connected",
                   "since": engine.stream_status.connected_since}


def test_practices_document_has_the_contract_keys_and_the_stream() -> None:
    engine = Engine(Settings(), broker_url="redis://localhost:6379/0")
    doc = practices_document(engine)
    assert set(doc) == {"findings", "practices", "coverage", "stream"}
    assert [p["id"] for p in doc["practices"]] == [p.id for p in PRACTICES]
    assert doc["stream"]["connected"] is False and doc["stream"]["events"] == 0
    assert set(practices_document(engine, stream=False)) == {"findings", "practices",
                                                             "coverage"}
    assert engine.practices_payload() == practices_document(engine, stream=False)


def test_configured_severity_is_the_documented_one() -> None:
    engine = Engine(Settings(practices={"lost_task": {"severity": "info"}}),
                    broker_url="redis://localhost:6379/0")
    by_id = {p["id"]: p["severity"] for p in practices_document(engine)["practices"]}
    assert by_id["lost_task"] == "info" == engine.severity("lost_task")
