"""``flower-practices check -A proj``: the static audit as a CI gate, run as a real process."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery

from flower_practices.check import task_location
from tests.apps import bad_tasks, check_gate

ROOT = Path(__file__).resolve().parents[1]
REDIS = "redis://127.0.0.1:6379/0"
#: one compiler-style line: ``path:line: severity practice task: message``
LINE = re.compile(r"^(?P<path>[^:\s]+):(?P<line>\d+): (?P<severity>critical|warning|info) "
                  r"(?P<practice>[a-z_]+) (?P<task>\S+): (?P<message>.+)$")


def def_line(app: Celery, name: str) -> int:
    """The first line of the task's definition, by inspect (decorators included)."""
    task = app.tasks[name]
    run = getattr(task, "_orig_run", None) or task.run
    return inspect.getsourcelines(inspect.unwrap(getattr(run, "__func__", run)))[1]


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
    line = f"tests/apps/bad_tasks.py:{def_line(bad_tasks.app, 'bad.slow')}: warning " \
           "missing_time_limit bad.slow: "
    assert any(x.startswith(line) for x in lines), proc.stdout
    # app-wide findings point at the app's module (no line), task "-"
    assert any(x.startswith("tests/apps/bad_tasks.py: warning single_default_queue -: ")
               for x in lines), proc.stdout


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


# -- --fail-on --------------------------------------------------------------------------------
#: (broker, backend, app) -> the most severe finding it has
SCENARIOS = {
    "critical": ("tests.apps.bad_tasks", {"FP_TEST_BROKER": "sqla+postgresql://127.0.0.1/t",
                                          "FP_TEST_BACKEND": "db+postgresql://127.0.0.1/t"}),
    "warning": ("tests.apps.bad_tasks", {"FP_TEST_BROKER": REDIS}),
    "info": ("tests.apps.good_tasks", {"FP_TEST_BROKER": REDIS,
                                       "FP_TEST_BACKEND": "db+postgresql://127.0.0.1/t"}),
    "clean": ("tests.apps.good_tasks", {"FP_TEST_BROKER": REDIS}),
}
#: most severe finding -> expected exit status for --fail-on critical, warning, info, none
EXPECTED = {
    "critical": {"critical": 1, "warning": 1, "info": 1, "none": 0},
    "warning": {"critical": 0, "warning": 1, "info": 1, "none": 0},
    "info": {"critical": 0, "warning": 0, "info": 1, "none": 0},
    "clean": {"critical": 0, "warning": 0, "info": 0, "none": 0},
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_fail_on_each_level(scenario: str) -> None:
    app, env = SCENARIOS[scenario]
    worst = None
    for level, status in EXPECTED[scenario].items():
        proc = run_check(app, "--format", "json", "--fail-on", level, **env)
        assert proc.returncode == status, (scenario, level, proc.stdout, proc.stderr)
        doc = json.loads(proc.stdout)
        severities = [f["severity"] for f in doc["findings"]]
        worst = severities[0] if severities else "clean"  # sorted most severe first
        assert doc["fail_on"] == level
        assert doc["failing"] == (0 if level == "none" else
                                  sum(1 for s in severities if
                                      ("critical", "warning", "info").index(s)
                                      <= ("critical", "warning", "info").index(level)))
        # the summary line says the same
        text = run_check(app, "--fail-on", level, **env)
        assert text.returncode == status
        assert f"{doc['failing']} at or above --fail-on={level}" in text.stdout.splitlines()[0]
    assert worst == scenario
    # no --fail-on: any finding fails (the behaviour before the option existed)
    assert run_check(app, **env).returncode == EXPECTED[scenario]["info"]


def test_fail_on_rejects_an_unknown_level() -> None:
    proc = run_check("tests.apps.good_tasks", "--fail-on", "error", FP_TEST_BROKER=REDIS)
    assert proc.returncode == 2
    assert "--fail-on" in proc.stderr and proc.stdout == ""


# -- file:line ----------------------------------------------------------------------------------
def test_findings_point_at_the_task_definitions() -> None:
    proc = run_check("tests.apps.check_gate", "--format", "json", FP_TEST_BROKER=REDIS)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    located = {f["task"]: (f["file"], f["line"]) for f in doc["findings"] if f["file"]}
    assert set(located) == {"gate.fetch", "gate.legacy_fetch", "gate.forever",
                            "gate.forever_bound", "gate.capped"}
    source = (ROOT / "tests/apps/check_gate.py").read_text().splitlines()
    for task, (path, line) in located.items():
        assert path == "tests/apps/check_gate.py"  # relative: under the working directory
        assert line == def_line(check_gate.app, task)
        assert f'name="{task}"' in source[line - 1]  # the task's own @app.task line
    # exec'd, no source file: reported, without a location
    dynamic = [f for f in doc["findings"] if f["task"] == "gate.dynamic"]
    assert [(f["file"], f["line"]) for f in dynamic] == [(None, None)]
    text = run_check("tests.apps.check_gate", FP_TEST_BROKER=REDIS).stdout.splitlines()
    parsed = {m["task"]: m for m in map(LINE.match, text[1:]) if m}
    assert {t: (m["path"], int(m["line"])) for t, m in parsed.items()} == located
    assert [x for x in text[1:] if not LINE.match(x)] == [
        next(x for x in text if x.startswith("-: warning retryless_failure gate.dynamic: "))]


def test_task_location_of_wrapped_class_based_and_builtin_tasks() -> None:
    path, line = task_location(check_gate.app.tasks["gate.wrapped"])
    assert path == "tests/apps/check_gate.py" or path.endswith("tests/apps/check_gate.py")
    assert "gate.wrapped" in (ROOT / path).read_text().splitlines()[line - 1]
    path, line = task_location(check_gate.app.tasks["gate.sync"])
    assert (ROOT / path).read_text().splitlines()[line - 1].strip() == "def run(self, n):"
    assert task_location(check_gate.app.tasks["gate.dynamic"]) is None  # exec'd
    assert task_location(check_gate.app.tasks["celery.chord_unlock"]) is not None
    class Builtin:  # a C function as the run function, and an object with none
        run = staticmethod(len)
    assert task_location(Builtin()) is None
    assert task_location(object()) is None


# -- unbounded retries ------------------------------------------------------------------------
def test_unbounded_retries_are_flagged_only_when_certain() -> None:
    proc = run_check("tests.apps.check_gate", "--format", "json", FP_TEST_BROKER=REDIS)
    storms = {f["task"]: f["message"] for f in json.loads(proc.stdout)["findings"]
              if f["practice"] == "retry_storm"}
    # autoretry_for or self.retry() with max_retries=None; not with a limit per call, in
    # retry_kwargs or Celery's default
    assert set(storms) == {"gate.forever", "gate.forever_bound", "gate.capped"}
    assert all("max_retries=None" in storms[t] for t in ("gate.forever", "gate.forever_bound"))
    # back-off capped at 0 s: no delay (gate.default_limit's back-off has Celery's 600 s)
    assert "retry_backoff_max=0" in storms["gate.capped"]
    assert "max_retries" not in storms["gate.capped"]
    good = run_check("tests.apps.good_tasks", "--format", "json", FP_TEST_BROKER=REDIS)
    assert json.loads(good.stdout)["count"] == 0


# -- ignore_tasks -------------------------------------------------------------------------------
def test_ignore_tasks_is_honoured(tmp_path: Path) -> None:
    config = tmp_path / "fp.toml"
    config.write_text('[practices.retryless_failure]\nignore_tasks = ["gate.legacy_*", '
                      '"gate.dyn?mic"]\n[practices.retry_storm]\n'
                      'ignore_tasks = ["gate.forever_b*"]\n')
    proc = run_check("tests.apps.check_gate", "--format", "json", "--config", str(config),
                     FP_TEST_BROKER=REDIS)
    assert proc.returncode == 1, proc.stderr
    assert findings(proc) == {("retryless_failure", "gate.fetch"),
                              ("retry_storm", "gate.forever"), ("retry_storm", "gate.capped")}
    # ignoring every offending task makes the gate pass
    config.write_text('[practices.retryless_failure]\nignore_tasks = ["gate.*"]\n'
                      '[practices.retry_storm]\nignore_tasks = ["gate.forever*", '
                      '"gate.capped"]\n')
    proc = run_check("tests.apps.check_gate", "--config", str(config), FP_TEST_BROKER=REDIS)
    assert proc.returncode == 0, proc.stdout
    assert "0 finding(s)" in proc.stdout


@pytest.mark.parametrize("value, problem", [
    ('"gate.legacy_*"', "expected a list"),
    ("[1]", "expected a list of strings"),
    ('[""]', "non-empty"),
    ('["gate.*", "  gate.x"]', "without surrounding spaces"),
])
def test_bad_ignore_tasks_is_rejected(tmp_path: Path, value: str, problem: str) -> None:
    config = tmp_path / "fp.toml"
    config.write_text(f"[practices.retryless_failure]\nignore_tasks = {value}\n")
    proc = run_check("tests.apps.check_gate", "--config", str(config), FP_TEST_BROKER=REDIS)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "[practices.retryless_failure] ignore_tasks" in lines[0] and problem in lines[0]
    assert str(config) in lines[0]


def test_misspelt_ignore_key_is_rejected(tmp_path: Path) -> None:
    config = tmp_path / "fp.toml"
    config.write_text('[practices.retryless_failure]\nignore_task = ["gate.*"]\n')
    proc = run_check("tests.apps.check_gate", "--config", str(config), FP_TEST_BROKER=REDIS)
    assert proc.returncode == 2
    assert "unknown key 'ignore_task'" in proc.stderr and "ignore_tasks" in proc.stderr
