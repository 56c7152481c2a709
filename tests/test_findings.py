"""Findings activate while their condition holds and clear after clear_after_seconds."""

from __future__ import annotations

from collections.abc import Iterable

from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.findings import Condition
from flower_practices.rules.base import Rule


class Switchable(Rule):
    """A test rule whose condition the test turns on and off."""

    id = "lost_task"
    defaults = {}
    holds = False

    def evaluate(self, now: float) -> Iterable[Condition]:
        if self.holds:
            self.count(None, "t", worker="w@h")  # one occurrence per evaluation
            yield Condition(summary="lost", task="t", worker="w@h", evidence={"lost": 1})


def test_finding_lifecycle_and_metrics() -> None:
    engine = Engine(Settings(clear_after_seconds=30), rule_classes=[Switchable])
    rule = engine.rules[0]
    engine.evaluate(now=100)
    assert engine.findings.active() == []

    rule.holds = True
    engine.evaluate(now=110)
    engine.evaluate(now=115)
    (finding,) = engine.findings.active()
    assert (finding.first_seen, finding.last_seen, finding.count) == (110, 115, 2)
    assert finding.severity == "critical"
    payload = engine.practices_payload()
    assert payload["findings"][0]["practice"] == "lost_task"
    assert payload["findings"][0]["worker"] == "w@h"
    assert set(payload["findings"][0]) == {
        "practice", "severity", "queue", "task", "worker", "summary", "evidence",
        "first_seen", "last_seen", "count", "active_seconds"}
    assert payload["findings"][0]["active_seconds"] == 5.0
    # count is what the rule counted, the same figure as the violations counter
    assert engine.metrics.violations_total == {("lost_task", "", "t"): 2}

    rule.holds = False
    engine.evaluate(now=140)  # false for 25 s < 30 s: still active
    assert len(engine.findings.active()) == 1
    engine.evaluate(now=146)  # false for 31 s: cleared
    assert engine.findings.active() == []


def test_severity_override_and_disabled_rules() -> None:
    settings = Settings(practices={"lost_task": {"severity": "info"}})
    engine = Engine(settings, rule_classes=[Switchable])
    engine.rules[0].holds = True
    engine.evaluate(now=1)
    assert engine.findings.active()[0].severity == "info"
    ids = {p["id"]: p["severity"] for p in engine.practices_payload()["practices"]}
    assert ids["lost_task"] == "info"

    disabled = Engine(Settings(practices={"lost_task": {"enabled": False}}),
                      rule_classes=[Switchable])
    assert disabled.rules == []
    assert disabled.coverage()["lost_task"] == "unsupported: disabled in configuration"


def test_coverage_lists_every_practice() -> None:
    from flower_practices.catalogue import PRACTICES

    coverage = Engine(Settings(), rule_classes=[]).coverage()
    assert list(coverage) == [p.id for p in PRACTICES]


def test_rule_errors_are_counted_not_raised() -> None:
    class Broken(Rule):
        id = "retry_storm"

        def hooks(self):
            return {"task-failed": self.boom}

        def boom(self, event, rec):
            raise RuntimeError("bug")

        def evaluate(self, now):
            raise RuntimeError("bug")

    engine = Engine(Settings(), rule_classes=[Broken])
    engine.observe({"type": "task-failed", "uuid": "u1", "hostname": "w", "timestamp": 1.0})
    engine.evaluate(now=2)
    assert engine.rule_errors["retry_storm"] == 2
