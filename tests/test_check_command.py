"""``flower-practices check -A proj``: the static audit as a CI gate, run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_check(app: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flower_practices", "check", "-A", app, *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def findings(proc: subprocess.CompletedProcess) -> set[tuple[str, str | None]]:
    return {(f["practice"], f["task"]) for f in json.loads(proc.stdout)["findings"]}


BAD_TASKS = ("bad.compute", "bad.fetch", "bad.hammer", "bad.parse", "bad.process", "bad.slow")


def test_bad_app_fails_the_check() -> None:
    proc = run_check("tests.apps.bad_tasks", "--format", "json",
                     FP_TEST_BROKER="redis://127.0.0.1:6379/0")
    assert proc.returncode == 1, proc.stderr
    found = findings(proc)
    expected = {
        ("single_default_queue", None), ("unread_results", None),
        ("orm_object_argument", None), ("events_disabled", None),
        *{("missing_time_limit", t) for t in BAD_TASKS},
        # bad.hammer calls self.retry(): it has a retry policy, but with countdown=0
        *{("retryless_failure", t) for t in BAD_TASKS if t != "bad.hammer"},
        ("retry_storm", "bad.hammer"),
    }
    assert found == expected
    doc = json.loads(proc.stdout)
    assert doc["app"] == "bad_tasks" and doc["tasks"] == 6 and doc["count"] == len(expected)


def test_database_broker_and_backend_are_flagged() -> None:
    proc = run_check("tests.apps.bad_tasks", "--format", "json",
                     FP_TEST_BROKER="sqla+postgresql://127.0.0.1/test",
                     FP_TEST_BACKEND="db+postgresql://127.0.0.1/test")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    severities = {f["practice"]: f["severity"] for f in doc["findings"]}
    assert severities["database_broker"] == "critical"
    assert severities["result_backend_database"] == "info"
    assert doc["findings"][0]["practice"] == "database_broker"  # critical first


def test_text_output_names_practices_and_tasks() -> None:
    proc = run_check("tests.apps.bad_tasks", FP_TEST_BROKER="redis://127.0.0.1:6379/0")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("flower-practices check: app 'bad_tasks', 6 task(s): 16 ")
    assert any(line.split()[:3] == ["warning", "missing_time_limit", "bad.slow:"]
               for line in lines)


def test_good_app_passes_the_check() -> None:
    proc = run_check("tests.apps.good_tasks", FP_TEST_BROKER="redis://127.0.0.1:6379/0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 finding(s)" in proc.stdout
    assert json.loads(run_check("tests.apps.good_tasks", "--format", "json",
                                FP_TEST_BROKER="redis://127.0.0.1:6379/0").stdout)["count"] == 0


def test_config_disables_and_reclassifies(tmp_path: Path) -> None:
    config = tmp_path / "fp.toml"
    config.write_text('[practices.missing_time_limit]\nenabled = false\n'
                      '[practices.retryless_failure]\nseverity = "info"\n')
    proc = run_check("tests.apps.bad_tasks", "--format", "json", "--config", str(config),
                     FP_TEST_BROKER="redis://127.0.0.1:6379/0")
    doc = json.loads(proc.stdout)
    assert not [f for f in doc["findings"] if f["practice"] == "missing_time_limit"]
    assert {f["severity"] for f in doc["findings"]
            if f["practice"] == "retryless_failure"} == {"info"}
    assert proc.returncode == 1


def test_unloadable_app_exits_2() -> None:
    proc = run_check("tests.apps.does_not_exist")
    assert proc.returncode == 2
    assert "cannot load Celery app" in proc.stderr
