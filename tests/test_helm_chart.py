"""The Helm chart (deploy/helm/flower-practices), linted and rendered by a real Helm engine
(the Helm library embedded in ``helm-python-sdk``), the manifests validated against the
Kubernetes OpenAPI schemas (``kubernetes-validate``, strict) and the prometheus-operator CRD
schemas (tests/schemas/prometheus-operator-v1.json: the v1 openAPIV3Schema of the upstream
CRDs, descriptions dropped -- the PyPI package with them, cloudcoil-models-prometheus-operator,
installs a pytest plugin that breaks pytest without an undeclared dependency); the rules and
dashboards it renders are the generators' own (one source); values.schema.json refuses bad
values.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import generate as dashboards_generate
from deploy.prometheus import generate as rules_generate
from deploy.prometheus.rules import CONFIG, Options, groups
from tests.support.binaries import require_binary
from tests.support.brokers import in_ci

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy/helm/flower-practices"
KUBE_VERSION = "1.30"
OPERATOR_SCHEMAS = Path(__file__).resolve().parent / "schemas/prometheus-operator-v1.json"

#: every switch on
ALL_ON: dict[str, Any] = {
    "broker": {"url": "redis://redis:6379/0"},
    "replicaCount": 2,
    "app": {"name": "proj", "pythonPath": ["/opt/app"]},
    "config": "[exporter]\nevaluation_interval = 15\n",
    "webConfig": {"enabled": True, "existingSecret": "fp-web"},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True},
    "dashboards": {"enabled": True, "annotations": {"grafana_folder": "Celery"}},
    "flower": {"enabled": True, "app": "proj", "auth": {"existingSecret": "fp-flower"}},
    "extraVolumes": [{"name": "app", "configMap": {"name": "proj-code"}}],
    "extraVolumeMounts": [{"name": "app", "mountPath": "/opt/app", "readOnly": True}],
}


def _optional(module: str, package: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:  # pragma: no cover - depends on the environment
        message = f"{module} not importable (pip install {package}; in the test extra)"
        if in_ci():
            pytest.fail(f"{message}; CI=true: install it")
        pytest.skip(message)


@pytest.fixture(scope="module")
def helm() -> Any:
    return _optional("helm_python", "helm-python-sdk")


def render(helm: Any, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chart's manifests (NOTES.txt left out), as ``helm template`` prints them."""
    chart = helm.Chart.load(CHART)
    out = chart.render(values or {}, name="fp", namespace="celery")
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out


def strict(schema: Any) -> Any:
    """The CRD schema as the API server applies it: unknown fields are errors (the server
    would prune them silently), except where the CRD preserves them."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def operator_validator(kind: str) -> Any:
    jsonschema = _optional("jsonschema", "jsonschema (a kubernetes-validate dependency)")
    schema = json.loads(OPERATOR_SCHEMAS.read_text())["schemas"][kind]
    return jsonschema.Draft7Validator(strict(schema))


def errors_and_warnings(report: dict[str, Any]) -> list[str]:
    return [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]


@pytest.mark.parametrize("values", [None, ALL_ON, {"serviceMonitor": {
    "enabled": True, "kind": "PodMonitor"}, "state": {"persistence": {"enabled": True}}}],
    ids=["defaults", "all-switches", "podmonitor-pvc"])
def test_helm_lint_is_clean(helm: Any, values: dict[str, Any] | None) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}.0")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == [] and errors_and_warnings(report) == [], report


def test_template_renders_every_object_with_the_switches_on(helm: Any) -> None:
    kinds = by_kind(render(helm, ALL_ON))
    assert len(kinds["Deployment"]) == 2  # the exporter and Flower
    assert len(kinds["Service"]) == 2
    (monitor,) = kinds["ServiceMonitor"]
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (rule,) = kinds["PrometheusRule"]
    assert rule["spec"]["groups"]
    dashboards = [c for c in kinds["ConfigMap"] if "grafana_dashboard" in c["metadata"]["labels"]]
    assert len(dashboards) == len(dashboards_generate.DASHBOARDS) == 4
    assert kinds["Secret"][0]["stringData"] == {"broker-url": "redis://redis:6379/0"}

    exporter = next(d for d in kinds["Deployment"]
                    if d["metadata"]["name"] == "fp-flower-practices")
    assert exporter["spec"]["replicas"] == 2
    pod = exporter["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    command = container["command"]
    assert command[:2] == ["flower-practices", "exporter"]
    assert "--app=proj" in command and "--state-dir=/var/lib/flower-practices" in command
    assert "--web-config-file=/etc/flower-practices/web/web-config.yml" in command
    env = {e["name"]: e for e in container["env"]}
    assert env["CELERY_BROKER_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "fp-flower-practices-broker", "key": "broker-url"}
    assert env["PYTHONPATH"]["value"] == "/opt/app"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["state"]
    assert volumes["web-config"]["secret"]["secretName"] == "fp-web"
    config = next(c for c in kinds["ConfigMap"] if c["metadata"]["name"] == "fp-flower-practices")
    assert "evaluation_interval = 15" in config["data"]["practices.toml"]

    flower = next(d for d in kinds["Deployment"] if d["metadata"]["name"].endswith("-flower"))
    (fc,) = flower["spec"]["template"]["spec"]["containers"]
    assert fc["command"][:4] == ["celery", "--app=proj", "flower", "--plugins=flower_practices"]
    assert {"name": "FLOWER_BASIC_AUTH", "valueFrom": {"secretKeyRef": {
        "name": "fp-flower", "key": "basic-auth"}}} in fc["env"]


def test_defaults_render_only_the_exporter(helm: Any) -> None:
    kinds = by_kind(render(helm))
    assert set(kinds) == {"Deployment", "Service", "ConfigMap", "Secret", "ServiceAccount"}
    assert len(kinds["ConfigMap"]) == 1


def test_podmonitor_and_persistent_state(helm: Any) -> None:
    kinds = by_kind(render(helm, {"serviceMonitor": {"enabled": True, "kind": "PodMonitor"},
                                  "state": {"persistence": {"enabled": True}}}))
    (monitor,) = kinds["PodMonitor"]
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    (claim,) = kinds["PersistentVolumeClaim"]
    (deployment,) = kinds["Deployment"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_replicas_never_share_a_persistent_state_directory(helm: Any) -> None:
    with pytest.raises(helm.HelmRenderError, match="replicaCount 1"):
        render(helm, {"replicaCount": 2, "state": {"persistence": {"enabled": True}}})


@pytest.mark.parametrize("values, complaint", [
    ({"replicaCount": "two"}, "replicaCount"),
    ({"serviceMonitor": {"kind": "Probe"}}, "kind"),
    ({"prometheusRule": {"config": {"for_warning": "five minutes"}}}, "for_warning"),
    ({"prometheusRule": {"config": {"failure_ratio": 3}}}, "failure_ratio"),
    ({"broker": {"url": ""}}, "broker"),
    ({"serviceMonitr": {"enabled": True}}, "serviceMonitr"),
])
def test_values_schema_refuses_bad_values(helm: Any, values: dict[str, Any],
                                          complaint: str) -> None:
    chart = helm.Chart.load(CHART)
    with pytest.raises(helm.HelmValuesError, match=complaint):
        chart.validate_schema(values)


def test_manifests_validate_against_kubernetes_and_prometheus_operator_schemas(
        helm: Any) -> None:
    kv = _optional("kubernetes_validate", "kubernetes-validate")
    checked: dict[str, int] = {}
    for values in (ALL_ON, {"serviceMonitor": {"enabled": True, "kind": "PodMonitor"},
                            "state": {"persistence": {"enabled": True}}}):
        for doc in render(helm, values):
            kind = doc["kind"]
            if doc["apiVersion"] == "monitoring.coreos.com/v1":
                problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                            for e in operator_validator(kind).iter_errors(doc)]
                assert problems == [], (kind, problems)
            else:
                kv.validate(doc, KUBE_VERSION, strict=True)
            checked[kind] = checked.get(kind, 0) + 1
    assert {"Deployment", "Service", "ConfigMap", "Secret", "ServiceAccount",
            "PersistentVolumeClaim", "ServiceMonitor", "PodMonitor",
            "PrometheusRule"} <= set(checked), checked


def test_the_schema_checks_can_fail(helm: Any) -> None:
    """The validators are not vacuous: a misspelt or mistyped field is refused."""
    kv = _optional("kubernetes_validate", "kubernetes-validate")
    kinds = by_kind(render(helm, ALL_ON))
    monitor = kinds["ServiceMonitor"][0]
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    assert list(operator_validator("ServiceMonitor").iter_errors(monitor))
    rule = kinds["PrometheusRule"][0]
    rule["spec"]["groups"][0]["rules"][0]["for"] = 5
    assert list(operator_validator("PrometheusRule").iter_errors(rule))
    deployment = kinds["Deployment"][0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"][
        "paht"] = "/healthz"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBE_VERSION, strict=True)


def test_the_chart_rules_are_the_generated_rules(helm: Any) -> None:
    """One source: with the default values the chart's PrometheusRule carries exactly the
    rules file's groups; a threshold or URL changed in the values lands where the
    generator would put it (same rule text as ``--set``)."""
    (rule,) = by_kind(render(helm, {"prometheusRule": {"enabled": True}}))["PrometheusRule"]
    committed = yaml.safe_load((rules_generate.HERE / rules_generate.RULES_FILE).read_text())
    assert rule["spec"]["groups"] == committed["groups"]

    changed = {"runbookBaseUrl": "https://runbooks.example.com/celery/",
               "dashboardBaseUrl": "https://grafana.example.com", "job": "celery-exporter",
               "config": {"queue_length": 5000, "failure_ratio": 0.25,
                          "keep_firing_for": "30m", "operations_severity": "critical"}}
    (rule,) = by_kind(render(helm, {"prometheusRule": {"enabled": True, **changed}}))[
        "PrometheusRule"]
    options = Options(job="celery-exporter",
                      runbook_base_url="https://runbooks.example.com/celery/",
                      dashboard_base_url="https://grafana.example.com", queue_length=5000,
                      failure_ratio=0.25, keep_firing_for="30m", operations_severity="critical")
    assert rule["spec"]["groups"] == groups(options)


def test_the_chart_rules_pass_promtool(helm: Any, tmp_path: Path) -> None:
    promtool = require_binary("promtool", "prometheus")
    (rule,) = by_kind(render(helm, {"prometheusRule": {"enabled": True}}))["PrometheusRule"]
    path = tmp_path / "chart.rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_values_defaults_match_the_rules_config() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rule_values = values["prometheusRule"]
    shaping = {"job", "runbook_base_url", "dashboard_base_url", "cluster_label",
               "namespace_label", "replica_labels"}
    assert rule_values["config"] == {k: v for k, v in CONFIG.items() if k not in shaping}
    assert rule_values["runbookBaseUrl"].rstrip("/") == CONFIG["runbook_base_url"].rstrip("/")
    assert rule_values["dashboardBaseUrl"] == CONFIG["dashboard_base_url"]


def test_dashboard_configmaps_are_the_generated_dashboards(helm: Any) -> None:
    values = {"dashboards": {"enabled": True, "label": "my_dashboards", "labelValue": "yes"}}
    maps = [c for c in by_kind(render(helm, values))["ConfigMap"]
            if c["metadata"]["labels"].get("my_dashboards") == "yes"]
    rendered = {name: text for c in maps for name, text in c["data"].items()}
    assert set(rendered) == set(dashboards_generate.DASHBOARDS)
    for name, text in rendered.items():
        assert text + "\n" == (dashboards_generate.CHART_DIR / name).read_text()
        board = json.loads(text)
        names = [v["name"] for v in board["templating"]["list"]]
        assert names[:4] == ["datasource", "cluster", "namespace", "job"]
        # shown in the chart's copies (Kubernetes), hidden in the plain ones
        assert all(v.get("hide", 0) == 0 for v in board["templating"]["list"][1:3])
        plain = json.loads((dashboards_generate.HERE / name).read_text())
        assert [v.get("hide") for v in plain["templating"]["list"][1:3]] == [2, 2]


def test_generators_own_the_chart_files() -> None:
    """The drift test: the chart's rule template and dashboards are what the generators
    write (``--check`` fails on a hand edit, via tools.codegen)."""
    owned = set(rules_generate.committed()) | set(dashboards_generate.committed())
    assert CHART / "templates/prometheusrule.yaml" in owned
    assert {CHART / "files/dashboards" / n for n in dashboards_generate.DASHBOARDS} <= owned
    assert rules_generate.stale() == [] and dashboards_generate.stale() == []
