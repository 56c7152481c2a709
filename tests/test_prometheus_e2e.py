"""End to end: a real Prometheus scrapes a real exporter watching a real worker whose
traffic breaks practices; the committed alert rules fire and the dashboards' queries run.

The committed rules file is loaded as is, except that ``for`` hold times are shortened so
the test does not wait minutes.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from dashboards import generate as dashboards_generate
from deploy.prometheus import generate as rules_generate
from deploy.prometheus.rules import STALL_SECONDS, alert_name
from flower_practices.apploader import load_app
from flower_practices.catalogue import BY_ID, DEFAULT_RUNBOOK_BASE_URL
from flower_practices.config import Settings
from flower_practices.rules import ALL_RULES
from tests.conftest import make_producer
from tests.support.binaries import require_binary
from tests.support.brokers import in_ci, reachable
from tests.support.exporter import RunningExporter, free_port, wait_for
from tests.support.process import stop_process
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.slow

JOB = "flower-practices"
#: practices whose findings appear within seconds with this test's workload, best first
CANDIDATES = ("result_backend_database", "retryless_failure")
#: labels the finding (hence the alert) must carry, and the summary they render to
WHERE = {"retryless_failure": ({"queue": "celery", "task": "alerting.fetch"},
                               " on queue celery, task alerting.fetch")}
#: the exporter is told the deployment's result backend; it never connects to it
DB_BACKEND = "db+postgresql://postgres@127.0.0.1:5432/test"
#: what Grafana would substitute for the dashboards' variables
GRAFANA_VARS = {"$__rate_interval": "15s", "$__range": "5m"}




class Prometheus:
    """``prometheus`` on a free port with a temp config, TSDB and the given rules."""

    def __init__(self, workdir: Path, target: str, rules: list[dict]) -> None:
        self.binary = require_binary("prometheus", "prometheus")
        self.port = free_port()
        self.workdir = workdir
        (workdir / "rules.yml").write_text(yaml.safe_dump({"groups": rules}, sort_keys=False))
        (workdir / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "1s"},
            "rule_files": ["rules.yml"],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
        }))
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Prometheus:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [self.binary, "--config.file=prometheus.yml",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while not self._ready():
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        if not reachable("127.0.0.1", self.port, 0.2):
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.proc)

    def api(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422 carry the error as JSON
            return json.loads(exc.read())

    def alerts(self, state: str = "firing") -> list[dict]:
        return [a for a in self.api("alerts")["data"]["alerts"] if a["state"] == state]

    def firing(self, name: str) -> list[dict]:
        return [a for a in self.alerts() if a["labels"]["alertname"] == name]


def shortened_rules(hold: str = "2s", stall_seconds: int | None = None) -> list[dict]:
    """The committed rules with every ``for`` cut to ``hold``, except the stall alerts'
    unless ``stall_seconds`` also shortens the no-event limit."""
    doc = yaml.safe_load((rules_generate.HERE / rules_generate.RULES_FILE).read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule["alert"] != "FlowerPracticesEventStreamStalled":
                rule["for"] = hold
            elif stall_seconds is not None:
                rule["for"] = hold
                limit = f"> {STALL_SECONDS} "
                if rule["labels"]["reason"] == "no_events":
                    assert limit in rule["expr"]
                    rule["expr"] = rule["expr"].replace(limit, f"> {stall_seconds} ")
    return doc["groups"]


def dashboard_queries() -> list[tuple[str, str]]:
    out = []
    for name in dashboards_generate.DASHBOARDS:
        board = json.loads((dashboards_generate.HERE / name).read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for var, value in GRAFANA_VARS.items():
                    expr = expr.replace(var, value)
                expr = re.sub(r"\$\w+", ".*", expr)  # "All" of every template variable
                out.append((f"{board['title']} / {panel['title']}", expr))
    return out


def test_prometheus_fires_the_practice_alerts(redis_url: str, tmp_path: Path) -> None:
    implemented = {cls.id for cls in ALL_RULES}
    targets = [p for p in CANDIDATES if p in implemented]
    if not targets:
        why = f"none of {CANDIDATES} is registered in flower_practices.rules.ALL_RULES"
        if in_ci():
            pytest.fail(why)
        pytest.skip(why)
    producer = make_producer(redis_url)
    backend = DB_BACKEND if "result_backend_database" in targets else None
    app, _ = load_app(None, redis_url, result_backend=backend)
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0)
    exporter = RunningExporter(app, settings).start()
    prom = None
    try:
        with WorkerProcess("tests.apps.alerting", redis_url, queues="celery").start(producer):
            prom = Prometheus(tmp_path, f"127.0.0.1:{exporter.port}", shortened_rules()).start()
            for _ in range(3):
                producer.send_task("alerting.fetch")
                producer.send_task("alerting.ok")
            for practice in targets:
                name = alert_name(practice)
                (alert,) = wait_for(lambda name=name: prom.firing(name), timeout=60,
                                    message=f"{name} firing in Prometheus")
                assert alert["labels"]["practice"] == practice
                assert alert["labels"]["severity"] == BY_ID[practice].severity
                assert alert["labels"]["job"] == JOB
                assert alert["annotations"]["runbook_url"] == (
                    f"{DEFAULT_RUNBOOK_BASE_URL}{practice}.md")
                summary = alert["annotations"]["summary"]
                assert summary.startswith(BY_ID[practice].title)
                if practice in WHERE:
                    labels, where = WHERE[practice]
                    assert labels.items() <= alert["labels"].items()
                    assert summary == BY_ID[practice].title + where
            check_dashboard_queries(prom)
            assert not prom.firing("FlowerPracticesExporterDown")
            # The exporter goes away: the exporter-down alert fires.
            exporter.stop()
            exporter = None
            (down,) = wait_for(lambda: prom.firing("FlowerPracticesExporterDown"), timeout=60,
                               message="FlowerPracticesExporterDown firing")
            assert down["labels"]["severity"] == "critical"
    except BaseException:
        if prom is not None:
            print(prom.log.read_text()[-3000:])
        raise
    finally:
        if prom is not None:
            prom.stop()
        if exporter is not None:
            exporter.stop()


def check_dashboard_queries(prom: Prometheus) -> None:
    """Every dashboard query is valid PromQL, and the headline ones have data."""
    wait_for(lambda: prom.api("query", query='celery_worker_up{job="flower-practices"} == 1')
             ["data"]["result"], timeout=30, message="worker up scraped")
    results = {}
    for where, expr in dashboard_queries():
        answer = prom.api("query", query=expr)
        assert answer["status"] == "success", (where, expr, answer.get("error"))
        results[where] = answer["data"]["result"]
    for where in ("Celery / Practices / Active findings by practice and severity",
                  "Celery / Tasks / Task events by state",
                  "Celery / Tasks / Top exceptions",
                  "Celery / Workers & exporter health / Worker up",
                  "Celery / Workers & exporter health / Event lag"):
        assert results[where], f"no data for {where}"


def stalled(prom: Prometheus, reason: str) -> list[dict]:
    return [a for a in prom.firing("FlowerPracticesEventStreamStalled")
            if a["labels"].get("reason") == reason]


def test_prometheus_fires_the_event_stream_alerts(private_redis: dict, tmp_path: Path) -> None:
    """No worker: no events -> stalled (no_events); a worker's heartbeats clear it; the
    broker dies -> stalled (disconnected)."""
    url = private_redis["url"]
    producer = make_producer(url)
    app, _ = load_app(None, url)
    with RunningExporter(app) as exporter:
        prom = Prometheus(tmp_path, f"127.0.0.1:{exporter.port}",
                          shortened_rules("1s", stall_seconds=3)).start()
        try:
            (alert,) = wait_for(lambda: stalled(prom, "no_events"), timeout=60,
                                message="stalled (no_events) firing without any worker")
            assert alert["annotations"]["runbook_url"] == (
                f"{DEFAULT_RUNBOOK_BASE_URL}event_stream_stalled.md")
            assert not stalled(prom, "disconnected")
            with WorkerProcess("tests.apps.basic", url, queues="celery").start(producer):
                wait_for(lambda: not stalled(prom, "no_events"), timeout=60,
                         message="heartbeats clear the no_events alert")
            private_redis["kill"]()
            wait_for(lambda: stalled(prom, "disconnected"), timeout=60,
                     message="stalled (disconnected) firing after the broker died")
        except BaseException:
            print(prom.log.read_text()[-3000:])
            raise
        finally:
            prom.stop()
