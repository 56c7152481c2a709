"""docker-compose.yml, validated without a Docker engine: structure, pinned images, files
that exist, ports that do not clash, and the Prometheus/Alertmanager/Grafana configs it
mounts (checked with promtool/amtool when installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.support.binaries import require_binary

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
REQUIRED = {"redis", "rabbitmq", "worker", "producer", "flower", "exporter", "prometheus",
            "alertmanager", "grafana"}
PINNED = re.compile(r"^[\w./-]+:(?!latest$)[\w.-]*\d[\w.-]*$")


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict:
    return compose()["services"]




def mounts(service: dict) -> dict[str, Path]:
    """container path -> host path of the service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        assert source.startswith("./"), f"bind mounts only, relative to the repo: {volume}"
        out[target] = ROOT / source
    return out


def test_every_required_service_is_defined():
    assert set(services()) >= REQUIRED


def test_every_image_is_pinned_to_an_exact_version():
    for name, service in services().items():
        assert "image" in service or "build" in service, name
        image = service.get("image")
        if image is not None:
            assert PINNED.match(image), f"{name}: image {image!r} is not pinned"
        if "build" in service:
            dockerfile = ROOT / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile.is_file(), dockerfile
            bases = re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.MULTILINE)
            assert bases and all(PINNED.match(b) for b in bases), bases


def test_dockerfile_copies_files_that_exist():
    dockerfile = ROOT / "deploy/compose/Dockerfile"
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source


def test_every_mounted_file_exists():
    checked = 0
    for service in services().values():
        for host in mounts(service).values():
            assert host.exists(), host
            checked += 1
    assert checked >= 5


def test_published_host_ports_do_not_clash():
    seen: dict[int, str] = {}
    for name, service in services().items():
        for mapping in service.get("ports", []):
            host = int(str(mapping).split(":")[0])
            assert host not in seen, f"port {host}: {seen.get(host)} and {name}"
            seen[host] = name
    assert {5555, 9808, 9090, 9093, 3000} <= set(seen)


def test_app_services_share_the_broker_env_and_listen_where_published():
    svc = services()
    for name in ("worker", "producer", "flower", "exporter"):
        env = svc[name]["environment"]
        assert env["CELERY_BROKER_URL"].startswith("amqp://"), name
        assert env["CELERY_RESULT_BACKEND"].startswith("redis://"), name
    assert "--port=5555" in svc["flower"]["command"]
    exporter = svc["exporter"]["command"]
    assert exporter[exporter.index("--port") + 1] == "9808"
    for name in ("flower", "exporter"):
        for token in svc[name]["command"]:
            if token.startswith("deploy/") or token.endswith(".toml"):
                assert (ROOT / token.split("=")[-1]).is_file(), token


def test_prometheus_config_loads_our_rules_and_scrapes_the_exporter(tmp_path):
    prom = services()["prometheus"]
    files = mounts(prom)
    config_path = files["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text())
    rules = [files[f"/etc/prometheus/{r}"] for r in config["rule_files"]]
    assert ROOT / "deploy/prometheus/flower-practices.rules.yml" in rules
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["flower-practices"]["static_configs"][0]["targets"] == ["exporter:9808"]
    assert jobs["flower"]["static_configs"][0]["targets"] == ["flower:5555"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"]
    # the same layout as in the container, checked by promtool
    for target, host in files.items():
        shutil.copy(host, tmp_path / Path(target).name)
    result = subprocess.run([require_binary("promtool", "prometheus"), "check", "config",
                             str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_alertmanager_config_is_valid():
    files = mounts(services()["alertmanager"])
    result = subprocess.run([require_binary("amtool", "prometheus-alertmanager"), "check-config",
                             str(files["/etc/alertmanager/alertmanager.yml"])],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_with_prometheus_and_our_dashboards():
    graf = services()["grafana"]
    files = mounts(graf)
    provisioning = files["/etc/grafana/provisioning"]
    datasources = yaml.safe_load(
        (provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert [d["url"] for d in datasources] == ["http://prometheus:9090"]
    assert datasources[0]["type"] == "prometheus" and datasources[0]["isDefault"]
    providers = yaml.safe_load(
        (provisioning / "dashboards/flower-practices.yml").read_text())["providers"]
    path = providers[0]["options"]["path"]
    dashboards_dir = files[path]
    assert dashboards_dir == ROOT / "dashboards"
    boards = sorted(dashboards_dir.glob("*.json"))
    assert len(boards) >= 3
    for board in boards:
        doc = json.loads(board.read_text())
        variables = {v["name"]: v for v in doc["templating"]["list"]}
        assert variables["datasource"]["query"] == "prometheus", board.name
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards_dir / Path(home).relative_to(path)).is_file()
