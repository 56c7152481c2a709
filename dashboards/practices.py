"""The "Celery / Practices" dashboard: active findings, offenders and violation rates."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from flower_practices.catalogue import DEFAULT_RUNBOOK_BASE_URL, PRACTICES

from .common import (
    bars,
    dashboard,
    dedup,
    graph,
    instant_table,
    label_variable,
    markdown,
    query,
    row,
    scope_labels,
    series,
    single,
    zero_while_up,
)

UID = "celery-practices"
HAS_TASK = 'task!=""'
HAS_QUEUE = 'queue!=""'
SEL = ('practice=~"$practice"', 'queue=~"$queue"', 'task=~"$task"')


def findings(*extra: str) -> str:
    """The active findings, one series per finding whatever the number of replicas."""
    return dedup(series("celery_practice_violation", *SEL, *extra))


def violations(*extra: str) -> str:
    return series("celery_practice_violations_total", *SEL, *extra)


SEVERITY_STEPS = {
    "critical": [(None, "green"), (1, "red")],
    "warning": [(None, "green"), (1, "orange")],
    "info": [(None, "green"), (1, "blue")],
}


def runbook_link() -> db.DashboardLink:
    """Clicking a finding opens its practice's runbook."""
    return (db.DashboardLink("Runbook").type(dm.DashboardLinkType.LINK)
            .url(DEFAULT_RUNBOOK_BASE_URL + "${__data.fields.practice}.md")
            .target_blank(True))


def catalogue_markdown() -> str:
    lines = ["| practice | what it catches | default severity | runbook |",
             "|---|---|---|---|"]
    for p in PRACTICES:
        lines.append(f"| `{p.id}` | {p.title} | {p.severity} | [{p.id}.md]({p.runbook_url()}) |")
    return "\n".join(lines) + "\n"


def build() -> db.Dashboard:
    board = dashboard(
        UID, "Celery / Practices",
        "Where the Celery deployment breaks best practices right now (flower-practices "
        "findings), which tasks and queues offend most, and how often.",
        [
            label_variable("practice", "Practice",
                           'label_values(celery_practice_violation{job=~"$job"}, practice)'),
            label_variable("queue", "Queue",
                           'label_values(celery_practice_violations_total{job=~"$job"}, queue)'),
            label_variable("task", "Task",
                           'label_values(celery_practice_violations_total{job=~"$job"}, task)'),
        ])
    board.with_row(row("Active findings"))
    board.with_panel(single(
        "Active findings", "Findings active now (1 per celery_practice_violation series).",
        "short", zero_while_up(f"sum({findings()})"), steps=[(None, "green"), (1, "orange")]))
    for severity, steps in SEVERITY_STEPS.items():
        board.with_panel(single(
            f"{severity.capitalize()} findings", f"Active findings of severity {severity}.",
            "short", zero_while_up("sum(" + findings(f'severity="{severity}"') + ")"),
            steps=steps))
    board.with_panel(graph(
        "Active findings by practice and severity",
        "Number of active findings over time, per practice and severity.", "short",
        [query(f"sum by (practice, severity) ({findings()})", "{{practice}} ({{severity}})")],
        width=24, stacked=True))
    board.with_panel(instant_table(
        "Active findings (details)", "Every active finding with its labels; details and "
        "evidence are on the exporter's /api/practices and Flower's Practices page.",
        f"max by ({scope_labels()}, practice, severity, queue, task, worker) ({findings()})",
        hide=("Time", "Value"), links=[runbook_link()]))
    board.with_row(row("Offenders"))
    board.with_panel(bars(
        "Top offending tasks (active findings)", "Tasks with the most active findings.",
        "short", "topk(10, count by (task) (" + findings(HAS_TASK) + "))", "{{task}}"))
    board.with_panel(bars(
        "Top offending queues (active findings)", "Queues with the most active findings.",
        "short", "topk(10, count by (queue) (" + findings(HAS_QUEUE) + "))", "{{queue}}"))
    board.with_panel(bars(
        "Top offending tasks (violations over the range)",
        "Offending occurrences per task over the dashboard's time range.", "short",
        "topk(10, sum by (task) ("
        + dedup(f"increase({violations(HAS_TASK)}[$__range])") + "))",
        "{{task}}"))
    board.with_panel(bars(
        "Top offending queues (violations over the range)",
        "Offending occurrences per queue over the dashboard's time range.", "short",
        "topk(10, sum by (queue) ("
        + dedup(f"increase({violations(HAS_QUEUE)}[$__range])") + "))",
        "{{queue}}"))
    board.with_row(row("Violation rates"))
    board.with_panel(graph(
        "Violation rate by practice",
        "Offending occurrences per second (each retry-less failure, each task message "
        "carrying a model object, each unread result...).", "cps",
        [query("sum by (practice) (" + dedup(f"rate({violations()}[$__rate_interval])") + ")",
               "{{practice}}")]))
    board.with_panel(graph(
        "Violation rate by task", "Offending occurrences per second per practice and task.",
        "cps",
        [query("sum by (practice, task) ("
               + dedup(f"rate({violations(HAS_TASK)}[$__rate_interval])") + ")",
               "{{practice}} {{task}}")]))
    board.with_row(row("Practices"))
    board.with_panel(markdown(
        "Practices and runbooks", "The practices flower-practices checks, with the "
        "runbook for each (what it means, how to confirm, how to fix).",
        catalogue_markdown(), height=13))
    return board
