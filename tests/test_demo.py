"""The real ``flower-practices demo`` command, run as a subprocess on free ports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flower_practices.rules import ALL_RULES
from tests.support.exporter import free_port, wait_for
from tests.support.http import get

#: the practices the demo's traffic is designed to break (see flower_practices/demo/traffic.py)
DEMO_PRACTICES = {
    "retryless_failure", "retry_storm", "orm_object_argument", "missing_time_limit",
    "queue_without_consumer", "queue_starvation", "single_default_queue", "events_disabled",
    "missed_periodic_task",
}


def demo_command() -> list[str]:
    exe = shutil.which("flower-practices")
    return [exe] if exe else [sys.executable, "-m", "flower_practices"]




class Demo:
    def __init__(self) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [*demo_command(), "demo", "--port", str(self.port),
             "--metrics-port", str(self.metrics_port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def url(self, path: str, metrics: bool = False) -> str:
        return f"http://127.0.0.1:{self.metrics_port if metrics else self.port}{path}"

    def wait_up(self, deadline: float = 60.0) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.proc.communicate()
            if get(self.url("/api/practices"))[0] == 200:
                return
            time.sleep(0.3)
        pytest.fail("the demo did not start serving /api/practices")

    def metric(self, name: str) -> float:
        """Sum of the samples named ``name`` on the demo's /metrics (0.0 if none, or if
        the page is not served yet)."""
        status, text = get(self.url("/metrics", metrics=True))
        if status != 200:
            return 0.0
        return sum(s.value for f in text_string_to_metric_families(text.decode())
                   for s in f.samples if s.name == name)

    def stop(self, sig: int) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"the demo did not exit after signal {sig}:\n{err[-3000:]}")
        return self.proc.returncode, out, err


def test_demo_practices_are_implemented_rules():
    assert {cls.id for cls in ALL_RULES} >= DEMO_PRACTICES


@pytest.mark.slow
def test_demo_shows_findings_and_metrics_and_stops_on_sigint():
    demo = Demo()
    try:
        demo.wait_up()
        seen: dict[str, dict] = {}
        end = time.monotonic() + 150  # a deadline for a hang, not a performance assertion
        while time.monotonic() < end and not set(seen) >= DEMO_PRACTICES:
            status, body = get(demo.url("/api/practices"))
            assert status == 200
            payload = json.loads(body)
            for finding in payload["findings"]:
                seen.setdefault(finding["practice"], finding)
            time.sleep(2)
        assert set(seen) >= DEMO_PRACTICES, f"missing: {DEMO_PRACTICES - set(seen)}"
        assert seen["orm_object_argument"]["task"] == "demo.send_welcome_email"
        assert seen["queue_without_consumer"]["queue"] == "images"
        assert seen["retry_storm"]["task"] == "demo.sync_inventory"
        assert seen["missing_time_limit"]["task"] == "demo.build_report"
        assert payload["coverage"]["unread_results"].startswith("unsupported:")
        # argument values never leave the engine (the demo's User repr is "<User: alice>")
        assert "alice" not in body.decode()

        # the Practices page of Flower (the plugin) lists the findings
        status, page = get(demo.url("/practices"))
        assert status == 200
        assert "demo.send_welcome_email" in page.decode()
        # the /metrics port serves the same engine's findings
        status, body = get(demo.url("/api/practices", metrics=True))
        assert status == 200
        assert {f["practice"] for f in json.loads(body)["findings"]} >= DEMO_PRACTICES

        status, text = get(demo.url("/metrics", metrics=True))
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text.decode())}
        active = {s.labels["practice"] for s in families["celery_practice_violation"].samples
                  if s.value == 1}
        assert active >= DEMO_PRACTICES
        assert get(demo.url("/healthz", metrics=True))[0] == 200
    finally:
        code, out, err = demo.stop(signal.SIGINT)
    assert code == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert f"http://127.0.0.1:{demo.metrics_port}/metrics" in out
    assert f"http://127.0.0.1:{demo.port}/practices" in out
    assert "demo stopped" in out


def test_demo_stops_cleanly_on_sigterm():
    demo = Demo()
    try:
        demo.wait_up()
        # the worker, traffic and rules at work: tasks counted and evaluations run
        wait_for(lambda: demo.metric("celery_task_events_total") > 0
                 and demo.metric("flower_practices_last_evaluation_timestamp_seconds") > 0,
                 timeout=60, message="the demo's traffic counted and evaluated")
    finally:
        code, out, err = demo.stop(signal.SIGTERM)
    assert code == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "demo stopped" in out
