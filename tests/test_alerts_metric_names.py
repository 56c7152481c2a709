"""Every metric name the dashboards and alert rules query is one a live exporter exposes.

The exposed names come from scraping a real exporter's ``/metrics`` (HELP/TYPE lines list
every family even before it has samples), not from a hard-coded list.
"""

from __future__ import annotations

import json
import re

import yaml

from dashboards import generate as dashboards_generate
from deploy.prometheus import generate as rules_generate
from flower_practices.apploader import load_app
from flower_practices.metrics import METRICS
from tests.support.exporter import RunningExporter

#: series Prometheus itself writes for every target, not the exporter
SYNTHETIC = {"up"}
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "offset", "bool", "inf", "nan"}
IDENT = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


def metric_names(expr: str) -> set[str]:
    """Metric names used in a PromQL expression (or a Grafana label_values query)."""
    names = set()
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ",
                  text)
    text = re.sub(r"\$\w+", " ", text)
    # Grafana's label_values(metric, label): the second argument is a label name.
    text = re.sub(rf"label_values\(\s*({IDENT})\s*(?:,\s*{IDENT}\s*)?\)", r" \1 ", text)
    for match in re.finditer(rf"(?<![\w.]){IDENT}", text):
        name = match.group(0)
        following = text[match.end():].lstrip()
        if following.startswith("(") or name.lower() in KEYWORDS:
            continue  # a function, an aggregation or an operator keyword
        names.add(name)
    return names


def test_metric_names_extracts_metrics_only() -> None:
    expr = ('sum by (queue, le) (rate(foo_seconds_bucket{job=~"$job", q="a b{c}"}'
            '[$__rate_interval])) / ignoring(le) bar_total and on (x) baz > 0.5 '
            'or vector(0) unless time() - qux offset 5m')
    assert metric_names(expr) == {"foo_seconds_bucket", "bar_total", "baz", "qux"}
    assert metric_names('label_values(celery_worker_up{job=~"$job"}, worker)') == {
        "celery_worker_up"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(x_bucket[5m])))") == {
        "x_bucket"}


def dashboard_exprs() -> list[str]:
    out = []
    for name in dashboards_generate.DASHBOARDS:
        board = json.loads((dashboards_generate.HERE / name).read_text())
        for panel in board["panels"]:
            out += [t["expr"] for t in panel.get("targets", [])]
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                out.append(var["query"]["query"])
    return out


def rule_exprs() -> list[str]:
    doc = yaml.safe_load((rules_generate.HERE / rules_generate.RULES_FILE).read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def exposed_names(metrics_text: str) -> set[str]:
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
            else:
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.match(IDENT, line).group(0))
    return names


def test_dashboards_and_rules_use_only_exposed_metrics(redis_url: str) -> None:
    app, _ = load_app(None, redis_url)
    with RunningExporter(app) as exporter:
        status, text = exporter.get("/metrics")
    assert status == 200
    exposed = exposed_names(text)
    assert "celery_task_runtime_seconds_bucket" in exposed  # families with no samples yet
    used_by_dashboards = set().union(*map(metric_names, dashboard_exprs()))
    used_by_rules = set().union(*map(metric_names, rule_exprs()))
    assert {"celery_practice_violation", "celery_queue_length",
            "flower_practices_last_event_timestamp_seconds"} <= used_by_dashboards
    assert {"celery_practice_violation", "flower_practices_event_stream_connected",
            "up"} <= used_by_rules
    unknown = (used_by_dashboards | used_by_rules) - exposed - SYNTHETIC
    assert unknown == set(), f"not exposed by the exporter: {sorted(unknown)}"


def test_label_matchers_name_real_labels() -> None:
    """``metric{label=...}`` selectors only use labels the metric has (METRICS contract),
    plus the target labels Prometheus adds."""
    # what Prometheus adds: the target, and on Kubernetes the pod, namespace and cluster
    target_labels = {"job", "instance", "pod", "namespace", "cluster"}
    selector = re.compile(rf"({IDENT})\{{([^}}]*)\}}")
    checked = 0
    for expr in dashboard_exprs() + rule_exprs():
        clean = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
        for name, matchers in selector.findall(clean):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name in SYNTHETIC:
                allowed = target_labels
            else:
                kind, _, labels = METRICS[base if base in METRICS else name]
                allowed = set(labels) | target_labels
                if kind == "histogram" and name.endswith("_bucket"):
                    allowed.add("le")
            for label in re.findall(rf"({IDENT})\s*(?:=~|!~|!=|=)", matchers):
                assert label in allowed, f"{name} has no label {label!r}: {expr}"
                checked += 1
    assert checked > 50
