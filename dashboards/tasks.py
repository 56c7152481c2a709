"""The "Celery / Tasks" dashboard: event rates by state, failure/retry ratios, runtimes."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from .common import (
    dashboard,
    dedup,
    graph,
    label_variable,
    query,
    row,
    series,
    single,
    zero_while_up,
)

UID = "celery-tasks"
QT = ('queue=~"$queue"', 'task=~"$task"')
RATE = "[$__rate_interval]"
SUCCEEDED, FAILED = 'type="succeeded"', 'type="failed"'
RETRIED, STARTED = 'type="retried"', 'type="started"'


def events(*matchers: str) -> str:
    return series("celery_task_events_total", *QT, *matchers)


def rate(selector: str) -> str:
    """``rate(selector[$__rate_interval])``, once for all replicas."""
    return dedup(f"rate({selector}{RATE})")


def rate_by(by: str, *matchers: str) -> str:
    return f"sum by ({by}) ({rate(events(*matchers))})"


def runtime_quantile(q: float) -> str:
    buckets = series("celery_task_runtime_seconds_bucket", *QT, 'state="succeeded"')
    return f"histogram_quantile({q}, sum by (task, le) ({rate(buckets)}))"


def build() -> db.Dashboard:
    board = dashboard(
        UID, "Celery / Tasks",
        "Task throughput by state, failure and retry ratios, and runtime percentiles, "
        "from Celery task events.",
        [label_variable("queue", "Queue",
                        'label_values(celery_task_events_total{job=~"$job"}, queue)'),
         label_variable("task", "Task", 'label_values(celery_task_events_total'
                        '{job=~"$job", queue=~"$queue"}, task)')])
    finished = 'type=~"succeeded|failed"'
    board.with_row(row("Throughput"))
    board.with_panel(single(
        "Succeeded / s", "Task-succeeded events per second.", "ops",
        zero_while_up(f"sum({rate(events(SUCCEEDED))})")))
    board.with_panel(single(
        "Failed / s", "Task-failed events per second.", "ops",
        zero_while_up(f"sum({rate(events(FAILED))})"),
        steps=[(None, "green"), (0.01, "orange")]))
    board.with_panel(single(
        "Failure ratio", "Failed / (succeeded + failed) over the selection.", "percentunit",
        f"sum({rate(events(FAILED))}) / sum({rate(events(finished))})",
        steps=[(None, "green"), (0.05, "orange"), (0.2, "red")]))
    board.with_panel(single(
        "Retry ratio", "Retried / started over the selection.", "percentunit",
        f"sum({rate(events(RETRIED))}) / sum({rate(events(STARTED))})",
        steps=[(None, "green"), (0.1, "orange"), (0.5, "red")]))
    board.with_panel(graph(
        "Task events by state",
        "Task events per second by type (sent, received, started, succeeded, failed, "
        "retried, revoked, rejected).", "ops", [query(rate_by("type"), "{{type}}")],
        width=24))
    board.with_panel(graph(
        "Succeeded by task", "Task-succeeded events per second per task.", "ops",
        [query(rate_by("task", 'type="succeeded"'), "{{task}}")]))
    board.with_panel(graph(
        "Failed by task", "Task-failed events per second per task.", "ops",
        [query(rate_by("task", 'type="failed"'), "{{task}}")]))
    board.with_row(row("Failure and retry ratios"))
    board.with_panel(graph(
        "Failure ratio by task", "Failed / (succeeded + failed) per task.", "percentunit",
        [query(f"{rate_by('task', FAILED)} / {rate_by('task', finished)}",
               "{{task}}")]))
    board.with_panel(graph(
        "Retry ratio by task", "Retried / started per task.", "percentunit",
        [query(f"{rate_by('task', RETRIED)} / "
               f"{rate_by('task', STARTED)}", "{{task}}")]))
    board.with_panel(graph(
        "Revoked and rejected", "Task-revoked and task-rejected events per second per task.",
        "ops", [query(rate_by("task, type", 'type=~"revoked|rejected"'), "{{task}} {{type}}")]))
    board.with_panel(graph(
        "Top exceptions",
        "The 10 exception classes failing tasks most often (task-failed events per second "
        "by exception class, celery_task_failures_total; class names only, past "
        "max_exception_classes folded into __other__).", "ops",
        [query("topk(10, sum by (exception) "
               f"({rate(series('celery_task_failures_total', *QT))}))", "{{exception}}")]))
    board.with_row(row("Runtime"))
    board.with_panel(graph(
        "Runtime p50 / p95 / p99 (succeeded)",
        "Runtime from task-started to task-succeeded, per task.", "s",
        [query(runtime_quantile(0.5), "{{task}} p50", ref="A"),
         query(runtime_quantile(0.95), "{{task}} p95", ref="B"),
         query(runtime_quantile(0.99), "{{task}} p99", ref="C")], width=24))
    board.with_panel(graph(
        "Mean runtime by task and outcome",
        "Average runtime (sum / count) per task and final state.", "s",
        [query(f"sum by (task, state) ({rate(series('celery_task_runtime_seconds_sum', *QT))})"
               " / sum by (task, state) "
               f"({rate(series('celery_task_runtime_seconds_count', *QT))})",
               "{{task}} {{state}}")], width=24))
    return board
