"""The Prometheus alert rules: generated files are current, ``promtool check rules`` and
``promtool test rules`` pass (a firing and a non-firing case per alert), and the tests bite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.prometheus import generate
from deploy.prometheus.rules import CONFIG, FOR_BY_SEVERITY, Options, alert_name
from flower_practices.catalogue import DEFAULT_RUNBOOK_BASE_URL, PRACTICES
from tests.support.binaries import require_binary

ROOT = Path(__file__).resolve().parents[1]
RULES = generate.HERE / generate.RULES_FILE
MANIFEST = generate.HERE / generate.MANIFEST_FILE
UNIT_TESTS = generate.HERE / generate.TESTS_FILE
EXPORTER_ALERTS = {"FlowerPracticesExporterDown": "exporter_down",
                   "FlowerPracticesExporterReplicaDown": "exporter_down",
                   "FlowerPracticesEventStreamStalled": "event_stream_stalled",
                   "FlowerPracticesEventStreamGaps": "event_stream_gaps",
                   "FlowerPracticesEventsRefused": "events_refused"}
OPERATIONS_ALERTS = {"CeleryTaskFailureRatioHigh": "task_failure_ratio",
                     "CeleryQueueBacklog": "queue_backlog",
                     "CeleryQueueWaitHigh": "queue_wait_high",
                     "CeleryWorkerDown": "worker_down"}




def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([require_binary("promtool", "prometheus"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_committed_files_match_the_generator() -> None:
    assert generate.stale() == []
    out = subprocess.run([sys.executable, "-m", "deploy.prometheus.generate", "--check"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_check_detects_a_hand_edit(tmp_path: Path) -> None:
    for name in generate.render():
        shutil.copy(generate.HERE / name, tmp_path / name)
    assert generate.stale(tmp_path) == []
    text = (tmp_path / generate.RULES_FILE).read_text()
    (tmp_path / generate.RULES_FILE).write_text(text.replace("for: 5m", "for: 1h", 1))
    assert generate.stale(tmp_path) == [generate.RULES_FILE]


def test_manifest_carries_the_same_groups_as_the_rules_file() -> None:
    manifest = yaml.safe_load(MANIFEST.read_text())
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["name"] == "flower-practices"
    assert manifest["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_one_alert_per_practice_with_labels_annotations_and_runbook() -> None:
    by_name: dict[str, list[dict]] = {}
    for rule in rules():
        by_name.setdefault(rule["alert"], []).append(rule)
    for p in PRACTICES:
        (rule,) = by_name.pop(alert_name(p.id))
        # replicas of the exporter aggregated away: two replicas, one alert
        assert rule["expr"] == ("max without (instance, pod) "
                                f'(celery_practice_violation{{practice="{p.id}"}}) > 0')
        assert rule["for"] == FOR_BY_SEVERITY[p.severity]
        assert rule["keep_firing_for"] == "15m"
        assert "{{ $labels.job }}" in rule["annotations"]["description"]
        assert rule["annotations"]["dashboard_url"].startswith(
            "http://localhost:3000/d/celery-practices/")
        assert rule["labels"]["severity"] == "{{ $labels.severity }}"
        assert p.title in rule["annotations"]["summary"]
        assert p.description in rule["annotations"]["description"]
        assert rule["annotations"]["runbook_url"] == DEFAULT_RUNBOOK_BASE_URL + f"{p.id}.md"
    assert set(by_name) == set(EXPORTER_ALERTS) | set(OPERATIONS_ALERTS)
    runbooks = {**EXPORTER_ALERTS, **OPERATIONS_ALERTS}
    for name, group in by_name.items():
        for rule in group:
            expected = "critical" if name == "FlowerPracticesExporterDown" else "warning"
            assert rule["labels"]["severity"] == expected
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            assert rule["annotations"]["dashboard_url"].startswith("http://localhost:3000/d/")
            assert rule["annotations"]["runbook_url"] == (
                DEFAULT_RUNBOOK_BASE_URL + runbooks[name] + ".md")
    (down,) = by_name["FlowerPracticesExporterDown"]
    assert down["for"] == "2m"
    for name in OPERATIONS_ALERTS:
        assert "$value" in by_name[name][0]["annotations"]["description"] \
            or name == "CeleryWorkerDown"
    stalled = {r["labels"]["reason"]: r["expr"]
               for r in by_name["FlowerPracticesEventStreamStalled"]}
    assert set(stalled) == {"disconnected", "no_events"}
    assert "absent(up{" in by_name["FlowerPracticesExporterDown"][0]["expr"]


def test_thresholds_live_in_one_place() -> None:
    """Options defaults are CONFIG; a changed threshold reaches the rules."""
    from deploy.prometheus.rules import groups

    assert {k: getattr(Options(), k) for k in CONFIG} == CONFIG
    doc = groups(Options(queue_length=5, keep_firing_for="20m", for_warning="7m"))
    flat = {r["alert"]: r for g in doc for r in g["rules"]}
    assert flat["CeleryQueueBacklog"]["expr"].endswith("> 5")
    assert flat[alert_name("lost_task")]["keep_firing_for"] == "20m"
    assert flat[alert_name("retry_storm")]["for"] == "7m"


def _seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(duration[:-1]) * units[duration[-1]]


def test_every_compose_demo_alert_can_fire() -> None:
    """In the compose demo each finding, once raised, stays active (clear_after) longer
    than its alert's ``for`` plus two scrapes and an evaluation: an alert whose finding
    clears before ``for`` elapses never fires."""
    from flower_practices.config import load_settings

    settings = load_settings(ROOT / "deploy" / "compose" / "flower-practices.toml")
    prometheus = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yml").read_text())
    scrape = _seconds(prometheus["global"]["scrape_interval"])
    evaluation = _seconds(prometheus["global"]["evaluation_interval"])
    for p in PRACTICES:
        options = settings.practice_options(p.id)
        severity = options.get("severity", p.severity)
        clear = options.get("clear_after_seconds", settings.clear_after_seconds)
        needed = _seconds(FOR_BY_SEVERITY[severity]) + 2 * scrape + evaluation \
            + settings.evaluation_interval
        assert clear > needed, (p.id, clear, needed)


def test_the_exporter_runbooks_exist() -> None:
    runbooks = ROOT / "flower_practices" / "runbooks"
    for name in [*EXPORTER_ALERTS.values(), *OPERATIONS_ALERTS.values()]:
        text = (runbooks / f"{name}.md").read_text()
        assert text.startswith("# ") and "## " in text


def test_every_runbook_url_is_a_runbook_in_the_repo() -> None:
    runbooks = ROOT / "flower_practices" / "runbooks"
    urls = {r["annotations"]["runbook_url"] for r in rules()}
    assert all(u.startswith(DEFAULT_RUNBOOK_BASE_URL) for u in urls)
    missing = sorted(u[len(DEFAULT_RUNBOOK_BASE_URL):] for u in urls
                     if not (runbooks / u[len(DEFAULT_RUNBOOK_BASE_URL):]).is_file())
    assert missing == [], f"runbooks linked from the alerts are missing: {missing}"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    doc = yaml.safe_load(UNIT_TESTS.read_text())
    assert doc["rule_files"] == [generate.RULES_FILE]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {r["alert"] for r in rules()}
    assert fires == names
    assert quiet == names
    reasons = {a["exp_labels"].get("reason") for case in doc["tests"]
               for check in case["alert_rule_test"] for a in check["exp_alerts"]}
    assert {"disconnected", "no_events"} <= reasons


def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", generate.RULES_FILE, cwd=generate.HERE)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


def test_promtool_check_rules_on_the_manifest_spec(tmp_path: Path) -> None:
    spec = yaml.safe_load(MANIFEST.read_text())["spec"]
    (tmp_path / "spec.yml").write_text(yaml.safe_dump(spec))
    out = promtool("check", "rules", "spec.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_pass() -> None:
    out = promtool("test", "rules", generate.TESTS_FILE, cwd=generate.HERE)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@pytest.mark.parametrize("mutation", [
    # an alert that never fires
    ('celery_practice_violation{practice="lost_task"}) > 0',
     'celery_practice_violation{practice="lost_task"}) > 1'),
    # two replicas giving two alerts (or one replica's death resolving it)
    ('max without (instance, pod) (celery_practice_violation{practice="lost_task"})',
     'celery_practice_violation{practice="lost_task"}'),
    # a wrong hold time
    ("for: 15m", "for: 30m"),
    # a runbook pointing elsewhere
    ("runbooks/exporter_down.md", "runbooks/exporter.md"),
    # the stall alert firing while disconnected too
    ("and flower_practices_event_stream_connected == 1",
     "and flower_practices_event_stream_connected >= 0"),
    # practice alerts resolving as soon as the exporter restarts
    ("keep_firing_for: 15m", "keep_firing_for: 1m"),
    # the no-events alert counting from 1970 before the first event
    ("flower_practices_last_event_timestamp_seconds > 0 or",
     "flower_practices_last_event_timestamp_seconds >= 0 or"),
    # operational thresholds
    ("> 0.1 and", "> 0.5 and"),
    ("celery_worker_up{job=\"flower-practices\"}) == 0",
     "celery_worker_up{job=\"flower-practices\"}) < 0"),
])
def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path,
                                                 mutation: tuple[str, str]) -> None:
    old, new = mutation
    text = RULES.read_text()
    assert old in text
    (tmp_path / generate.RULES_FILE).write_text(text.replace(old, new))
    shutil.copy(UNIT_TESTS, tmp_path / generate.TESTS_FILE)
    out = promtool("test", "rules", generate.TESTS_FILE, cwd=tmp_path)
    assert out.returncode != 0, out.stdout
    assert "FAILED" in out.stdout + out.stderr


def test_regenerating_for_another_job_and_runbook_site(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "deploy.prometheus.generate", "--job", "celery-exporter",
         "--runbook-base-url", "https://runbooks.example.com/celery", "--output-dir",
         str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / generate.RULES_FILE).read_text()
    assert 'absent(up{job="celery-exporter"})' in text
    assert "https://runbooks.example.com/celery/lost_task.md" in text
    assert not (tmp_path / generate.TESTS_FILE).exists()
    check = promtool("check", "rules", generate.RULES_FILE, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
