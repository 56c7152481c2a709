"""The Grafana dashboards: committed JSON equals the generator, and every panel is wired to
the datasource/job variables, uses ``$__rate_interval`` and sets a unit."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dashboards import generate
from flower_practices.catalogue import DEFAULT_RUNBOOK_BASE_URL, PRACTICES

ROOT = Path(__file__).resolve().parents[1]
DEDUP = "max without (instance, pod) ("
REQUIRED_TITLES = {
    "Celery / Practices", "Celery / Queues", "Celery / Tasks",
    "Celery / Workers & exporter health",
}


def load_all() -> dict[str, dict]:
    return {name: json.loads((generate.HERE / name).read_text(encoding="utf-8"))
            for name in generate.DASHBOARDS}


def panels(board: dict) -> list[dict]:
    """Panels that query Prometheus (not rows or text)."""
    return [p for p in board["panels"] if p["type"] not in ("row", "text")]


def exprs(board: dict) -> list[str]:
    return [t["expr"] for p in panels(board) for t in p.get("targets", [])]


def test_committed_json_matches_the_generator() -> None:
    assert generate.stale() == []
    out = subprocess.run([sys.executable, "-m", "dashboards.generate", "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_check_detects_a_stale_or_missing_file(tmp_path: Path) -> None:
    for name in generate.DASHBOARDS:
        shutil.copy(generate.HERE / name, tmp_path / name)
    assert generate.stale(tmp_path) == []
    first, second = list(generate.DASHBOARDS)[:2]
    board = json.loads((tmp_path / first).read_text())
    board["title"] = "edited by hand"
    (tmp_path / first).write_text(json.dumps(board, indent=2, sort_keys=True) + "\n")
    (tmp_path / second).unlink()
    assert generate.stale(tmp_path) == [first, second]


def test_the_required_dashboards_exist_with_unique_uids() -> None:
    boards = load_all()
    assert {b["title"] for b in boards.values()} >= REQUIRED_TITLES
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids)
    for board in boards.values():
        ids = [p["id"] for p in board["panels"]]
        assert len(set(ids)) == len(ids), board["title"]


def variables(board: dict) -> dict[str, dict]:
    return {v["name"]: v for v in board["templating"]["list"]}


def test_datasource_and_template_variables() -> None:
    boards = load_all()
    for board in boards.values():
        var = variables(board)
        assert var["datasource"]["type"] == "datasource"
        assert var["datasource"]["query"] == "prometheus"
        assert var["job"]["type"] == "query"
        # The job variable lists only jobs exposing the exporter's metrics, and its All is
        # exactly those jobs (no ".*"): up{job=~"$job"} never reaches an unrelated job.
        assert "flower_practices_" in var["job"]["query"]["query"]
        assert var["job"]["includeAll"] and "allValue" not in var["job"]
        for v in var.values():
            if v["type"] == "query" and v["name"] != "job":
                # "All" must also match findings whose queue/task label is empty.
                assert v["includeAll"] and v["allValue"] == ".*", v["name"]
            if v["type"] == "query":
                assert v["datasource"]["uid"] == "${datasource}"
    by_title = {b["title"]: b for b in boards.values()}
    assert {"queue", "task"} <= set(variables(by_title["Celery / Tasks"]))
    assert {"queue", "task", "practice"} <= set(variables(by_title["Celery / Practices"]))
    assert "queue" in variables(by_title["Celery / Queues"])
    assert "worker" in variables(by_title["Celery / Workers & exporter health"])


METRIC_SELECTOR = re.compile(r"\b([a-z_:][a-z0-9_:]*)\{([^}]*)\}")


def test_every_panel_uses_the_variables_rate_interval_and_a_unit() -> None:
    for board in load_all().values():
        var_names = set(variables(board))
        for panel in panels(board):
            where = f"{board['title']} / {panel['title']}"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel["fieldConfig"]["defaults"].get("unit"), f"no unit: {where}"
            assert panel.get("description"), f"no description: {where}"
            assert panel["targets"], where
            for target in panel["targets"]:
                expr = target["expr"]
                assert target["datasource"]["uid"] == "${datasource}", where
                # Range vectors only through Grafana's interval variables.
                for window in re.findall(r"\[([^\]]+)\]", expr):
                    assert window in ("$__rate_interval", "$__range"), (where, expr)
                selectors = METRIC_SELECTOR.findall(expr)
                assert selectors, (where, expr)
                for _name, matchers in selectors:
                    assert 'job=~"$job"' in matchers, (where, expr)
                for used in re.findall(r"\$(\w+)", expr):
                    assert used in var_names or used.startswith("__"), (where, used)


def test_stat_panels_show_no_data_when_the_exporter_is_down() -> None:
    """No ``or vector(0)`` (a green 0 while the exporter is dead): a count that may be 0
    falls back to 0 only while ``up`` is 1, and every stat panel says "No data"."""
    for board in load_all().values():
        for panel in panels(board):
            where = f"{board['title']} / {panel['title']}"
            for target in panel["targets"]:
                assert "vector(0)" not in target["expr"], where
                if " or (0 * " in target["expr"]:
                    assert target["expr"].endswith(
                        '(0 * max(up{cluster=~"$cluster", namespace=~"$namespace", '
                        'job=~"$job"} == 1))'), where
            if panel["type"] == "stat":
                assert panel["fieldConfig"]["defaults"]["noValue"] == "No data", where


def test_event_lag_ignores_a_zero_timestamp() -> None:
    """Before the first event the timestamp is 0: no lag of 56 years."""
    for board in load_all().values():
        for panel in panels(board):
            for target in panel["targets"]:
                expr = target["expr"]
                if "flower_practices_last_event_timestamp_seconds" in expr:
                    assert re.search(r'flower_practices_last_event_timestamp_seconds\{[^}]*\}'
                                     r" > 0\)", expr), (panel["title"], expr)


def test_requested_panels_are_there() -> None:
    by_title = {b["title"]: b for b in load_all().values()}
    practices = " ".join(exprs(by_title["Celery / Practices"]))
    # replicas of the exporter count once (max without (instance, pod))
    assert f"sum by (practice, severity) ({DEDUP}celery_practice_violation" in practices
    assert "topk(10, count by (task)" in practices and "topk(10, count by (queue)" in practices
    assert f"{DEDUP}rate(celery_practice_violations_total" in practices
    queues = " ".join(exprs(by_title["Celery / Queues"]))
    assert f"sum by (queue, priority) ({DEDUP}celery_queue_length" in queues
    assert "celery_queue_consumers" in queues
    for q in ("0.5", "0.95", "0.99"):
        assert (f"histogram_quantile({q}, sum by (queue, le) ({DEDUP}rate("
                "celery_task_queue_wait_seconds_bucket") in queues
    assert "queue_starvation" in queues
    tasks = " ".join(exprs(by_title["Celery / Tasks"]))
    assert f"sum by (type) ({DEDUP}rate(celery_task_events_total" in tasks
    assert 'type="failed"' in tasks and 'type="retried"' in tasks
    assert "celery_task_runtime_seconds_bucket" in tasks
    assert ("topk(10, sum by (exception) ("
            f"{DEDUP}rate(celery_task_failures_total") in tasks
    assert f"max by (queue) ({DEDUP}celery_queue_oldest_task_age_seconds" in queues
    health = " ".join(exprs(by_title["Celery / Workers & exporter health"]))
    for needle in ("celery_worker_up", "rate(flower_practices_events_total",
                   "time() - max by (instance) (flower_practices_last_event_timestamp_seconds",
                   "flower_practices_event_decode_errors_total",
                   "flower_practices_broker_reconnects_total"):
        assert needle in health, needle
    units = {p["title"]: p["fieldConfig"]["defaults"]["unit"]
             for b in by_title.values() for p in panels(b)}
    assert units["Queue wait p50 / p95 / p99"] == "s"
    assert units["Failure ratio by task"] == "percentunit"
    assert units["Event lag"] == "s"
    assert units["Top exceptions"] == "ops"
    assert units["Oldest waiting task age"] == "s"


def test_practices_dashboard_links_every_runbook() -> None:
    board = next(b for b in load_all().values() if b["title"] == "Celery / Practices")
    (text,) = [p for p in board["panels"] if p["type"] == "text"]
    content = text["options"]["content"]
    for p in PRACTICES:
        assert f"`{p.id}`" in content and p.runbook_url() in content
    (findings,) = [p for p in panels(board) if p["title"] == "Active findings (details)"]
    (link,) = findings["fieldConfig"]["defaults"]["links"]
    assert link["url"] == DEFAULT_RUNBOOK_BASE_URL + "${__data.fields.practice}.md"


@pytest.mark.parametrize("name", list(generate.DASHBOARDS))
def test_generator_output_is_stable(name: str) -> None:
    build = generate.DASHBOARDS[name]
    assert generate.render(build) == generate.render(build)
