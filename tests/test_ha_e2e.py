"""HA end to end: two replicas of the exporter watch one Redis broker (both consume the
event fanout) and one real Prometheus scrapes both with the generated rules.

One alert per finding, not two, carrying the cluster and namespace labels of the targets
(the rules aggregate ``max without (instance, pod)``); the dashboards count each finding
once; when one replica dies the alert goes on firing from the survivor -- same
``activeAt``, never pending again, never resolved -- while ``keep_firing_for`` is cut to
1 s, so it is the survivor and not the hold that keeps it. The dead replica raises
``FlowerPracticesExporterReplicaDown`` (a warning), never the critical
``FlowerPracticesExporterDown``, which needs every replica down.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deploy.prometheus.rules import Options, alert_name, groups
from flower_practices.apploader import load_app
from flower_practices.config import Settings
from tests.conftest import make_producer
from tests.support.exporter import RunningExporter, wait_for
from tests.support.worker import WorkerProcess
from tests.test_prometheus_e2e import DB_BACKEND, JOB, Prometheus, dashboard_queries

pytestmark = pytest.mark.slow

#: generated rules with short holds; keep_firing_for 1 s: only the survivor can keep an
#: alert firing once a replica is gone
OPTIONS = Options(for_critical="2s", for_warning="2s", for_info="2s", keep_firing_for="1s",
                  exporter_down_for="2s")
#: a config-driven finding (at once) and an event-driven one (from the worker's traffic)
PRACTICES = ("result_backend_database", "retryless_failure")
SCOPE = {"cluster": "eu-1", "namespace": "celery"}


def scrape_config(targets: dict[str, int]) -> dict:
    """One job, one target group per replica, labelled as Kubernetes service discovery
    would label them (cluster from external labels or relabelling)."""
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                   "scrape_timeout": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [{"job_name": JOB, "static_configs": [
            {"targets": [f"127.0.0.1:{port}"], "labels": {**SCOPE, "pod": pod}}
            for pod, port in targets.items()]}],
    }


def one_alert(prom: Prometheus, practice: str) -> dict:
    alerts = prom.firing(alert_name(practice))
    assert len(alerts) <= 1, [a["labels"] for a in alerts]
    return alerts[0] if alerts else {}


def instant(prom: Prometheus, expr: str) -> list[dict]:
    out = prom.api("query", query=expr)
    assert out["status"] == "success", (expr, out)
    return out["data"]["result"]


def test_two_replicas_one_alert_and_a_dying_replica_resolves_nothing(
        redis_url: str, tmp_path: Path) -> None:
    producer = make_producer(redis_url)
    settings = Settings(evaluation_interval=0.5, probe_interval=1.0)
    replicas = {pod: RunningExporter(load_app(None, redis_url, result_backend=DB_BACKEND)[0],
                                     settings)
                for pod in ("fp-a", "fp-b")}
    prom = None
    try:
        for exporter in replicas.values():
            exporter.start()
        with WorkerProcess("tests.apps.alerting", redis_url, queues="celery").start(producer):
            prom = Prometheus(tmp_path, "unused:0", groups(OPTIONS))
            (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(scrape_config(
                {pod: exporter.port for pod, exporter in replicas.items()})))
            prom.start()
            for _ in range(3):
                producer.send_task("alerting.fetch")
                producer.send_task("alerting.ok")

            # Precondition: both replicas report each finding (two series)...
            for practice in PRACTICES:
                wait_for(lambda p=practice: len(instant(
                    prom, f'celery_practice_violation{{practice="{p}"}}')) == 2, timeout=90,
                    message=f"both replicas exposing {practice} to Prometheus")
            # ... and Prometheus makes one alert of them, with the scope labels kept.
            active_at = {}
            for practice in PRACTICES:
                alert = wait_for(lambda p=practice: one_alert(prom, p), timeout=60,
                                 message=f"{alert_name(practice)} firing")
                assert SCOPE.items() <= alert["labels"].items(), alert["labels"]
                assert alert["labels"]["job"] == JOB
                assert "instance" not in alert["labels"] and "pod" not in alert["labels"]
                active_at[practice] = alert["activeAt"]

            # The dashboards count each finding once: the "Active findings" stat equals
            # what one replica reports.
            (stat,) = [expr for where, expr in dashboard_queries()
                       if where == "Celery / Practices / Active findings"]

            def counted_once() -> bool:
                first, second = (len(e.findings()) for e in replicas.values())
                shown = instant(prom, stat)
                return first == second > 0 and float(shown[0]["value"][1]) == first

            wait_for(counted_once, timeout=30,
                     message="the Active findings stat equal to one replica's findings")
            by_practice = instant(prom, "sum by (practice) (max without (instance, pod) "
                                        "(celery_practice_violation))")
            assert all(float(r["value"][1]) == 1.0 for r in by_practice
                       if r["metric"]["practice"] in PRACTICES), by_practice

            # One replica dies. Until Prometheus has seen it down (and the replica-down
            # warning fired, 2 s later), every practice alert stays the one it was:
            # firing, same activeAt.
            dead = replicas.pop("fp-a")
            dead.stop()

            def dead_replica_reported() -> list[dict]:
                for practice in PRACTICES:
                    alert = one_alert(prom, practice)
                    assert alert, f"{alert_name(practice)} resolved when a replica died"
                    assert alert["activeAt"] == active_at[practice], "re-fired"
                return [a for a in prom.firing("FlowerPracticesExporterReplicaDown")
                        if a["labels"].get("pod") == "fp-a"]

            (down,) = wait_for(dead_replica_reported, timeout=60, interval=0.2,
                               message="the dead replica's FlowerPracticesExporterReplicaDown")
            assert down["labels"]["instance"] == f"127.0.0.1:{dead.port}"
            assert down["labels"]["severity"] == "warning"
            # the survivor is not reported down, and one dead replica of two pages nobody
            assert [a["labels"]["pod"]
                    for a in prom.firing("FlowerPracticesExporterReplicaDown")] == ["fp-a"]
            assert prom.firing("FlowerPracticesExporterDown") == []
            assert instant(prom, 'ALERTS{alertname="FlowerPracticesExporterDown"}') == []
            assert len(instant(prom, 'celery_practice_violation{practice="retryless_failure"}'
                                     )) == 1
            for practice in PRACTICES:
                assert one_alert(prom, practice)["activeAt"] == active_at[practice]
    except BaseException:
        if prom is not None:
            print(prom.log.read_text()[-3000:])
        raise
    finally:
        if prom is not None:
            prom.stop()
        for exporter in replicas.values():
            exporter.stop()
