"""The app services of docker-compose.yml, run outside Docker exactly as written there.

Worker, producer, Flower with the plugin and the standalone exporter are started from the
compose file's own ``command`` lists and ``environment``, with two changes only: the broker
and result backend (the same ``CELERY_BROKER_URL``/``CELERY_RESULT_BACKEND`` variables)
point at this test's Redis, and the published ports become free ports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.exporter import free_port
from tests.support.http import get
from tests.support.process import log_tail, stop_process

ROOT = Path(__file__).resolve().parents[1]
#: findings the demo traffic produces within its first phase on a real broker
EXPECTED = {"retryless_failure", "orm_object_argument", "retry_storm", "events_disabled",
            "single_default_queue", "unread_results"}




def executable(name: str) -> list[str]:
    if name == "python":
        return [sys.executable]
    path = shutil.which(name)
    assert path, f"{name} is not installed (pip install -e .)"
    return [path]


class Service:
    """One compose service's command, run as a subprocess from the repository root."""

    def __init__(self, name: str, spec: dict, broker: str, ports: dict[str, str]) -> None:
        self.name = name
        command = list(spec["command"])
        for i, token in enumerate(command):
            for old, new in ports.items():
                if token == old or (i and command[i - 1] == "--port" and token == old):
                    command[i] = new
        self.args = executable(command[0]) + command[1:]
        env = {**os.environ, **{k: str(v) for k, v in spec.get("environment", {}).items()}}
        env.update(CELERY_BROKER_URL=broker, CELERY_RESULT_BACKEND=broker,
                   PYTHONUNBUFFERED="1")
        self.logfile = Path(tempfile.mkstemp(prefix=f"fp-compose-{name}-", suffix=".log")[1])
        with open(self.logfile, "wb") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                         env=env, cwd=str(ROOT))

    def log(self) -> str:
        return log_tail(self.logfile)

    def alive(self) -> None:
        assert self.proc.poll() is None, f"{self.name} exited:\n{self.log()}"

    def stop(self) -> int | None:
        return stop_process(self.proc, 20)


@pytest.mark.slow
def test_compose_app_services_run_outside_docker(redis_url):
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    flower_port, exporter_port = free_port(), free_port()
    ports = {"--port=5555": f"--port={flower_port}", "9808": str(exporter_port)}
    running: list[Service] = []
    try:
        for name in ("worker", "exporter", "flower", "producer"):
            running.append(Service(name, spec[name], redis_url, ports))
        services = {s.name: s for s in running}
        exporter = f"http://127.0.0.1:{exporter_port}"
        flower = f"http://127.0.0.1:{flower_port}"

        seen: set[str] = set()
        healthy = False
        deadline = time.monotonic() + 150  # a hang guard, not a performance assertion
        while time.monotonic() < deadline and not (healthy and seen >= EXPECTED):
            for service in running:
                service.alive()
            healthy = healthy or get(f"{exporter}/healthz")[0] == 200
            status, body = get(f"{exporter}/api/practices")
            if status == 200:
                seen |= {f["practice"] for f in json.loads(body)["findings"]}
            time.sleep(2)
        assert healthy, services["exporter"].log()
        assert seen >= EXPECTED, (f"missing {EXPECTED - seen}\n"
                                  + "\n".join(s.log() for s in running))

        status, text = get(f"{exporter}/metrics")
        assert status == 200
        events = {(s.labels["type"], s.labels["task"]): s.value
                  for f in text_string_to_metric_families(text.decode())
                  if f.name == "celery_task_events" for s in f.samples
                  if s.name == "celery_task_events_total"}
        assert events.get(("sent", "demo.add"), 0) > 0, events
        assert events.get(("succeeded", "demo.add"), 0) > 0, events

        # Flower with the plugin, on the same broker: its page and API show findings too
        status, page = get(f"{flower}/practices")
        assert status == 200, services["flower"].log()
        status, body = get(f"{flower}/api/practices")
        assert status == 200, body[:300]
        assert {f["practice"] for f in json.loads(body)["findings"]} & EXPECTED
    finally:
        codes = {s.name: s.stop() for s in reversed(running)}
    assert codes["producer"] == 0, services["producer"].log()
    assert codes["exporter"] == 0, services["exporter"].log()
    assert codes["worker"] is not None and codes["flower"] is not None, codes
