"""Shared building blocks for the dashboards: datasource, template variables, panel helpers.

Every panel queries the ``$datasource`` Prometheus datasource variable and filters on the
``$cluster``, ``$namespace`` and ``$job`` variables; rates use ``$__rate_interval`` so they
stay correct at any scrape interval. Replicas of one exporter report the same series (they
watch the same broker): :func:`dedup` keeps one per label set, so two replicas draw one
line. The label names and whether the cluster/namespace pickers are shown are
:data:`CONFIG` (mixin style, :func:`configured` for a variant). Helpers return
grafana-foundation-sdk builders.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from grafana_foundation_sdk.builders import bargauge, stat, table, text, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm
from grafana_foundation_sdk.models import text as tm

from deploy.prometheus.rules import CONFIG as RULES_CONFIG

#: what a deployment may change, mixin style; the label names are the alert rules' own
CONFIG: dict[str, Any] = {
    "cluster_label": RULES_CONFIG["cluster_label"],
    "namespace_label": RULES_CONFIG["namespace_label"],
    "replica_labels": RULES_CONFIG["replica_labels"],
    #: show the cluster and namespace pickers (Kubernetes); hidden otherwise, where the
    #: labels are usually absent -- their All (``.*``) matches an absent label either way
    "show_multi_cluster": False,
}


@contextmanager
def configured(**overrides: Any) -> Iterator[None]:
    """Build dashboards with some :data:`CONFIG` keys changed (restored afterwards)."""
    unknown = set(overrides) - set(CONFIG)
    if unknown:
        raise KeyError(f"unknown dashboard settings {sorted(unknown)}")
    saved = dict(CONFIG)
    CONFIG.update(overrides)
    try:
        yield
    finally:
        CONFIG.clear()
        CONFIG.update(saved)


DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["celery", "flower-practices"]
#: the job matcher every query has; extended per dashboard with queue/task filters
JOB = 'job=~"$job"'


def scope() -> tuple[str, ...]:
    """``cluster=~"$cluster", namespace=~"$namespace", job=~"$job"`` (configured names)."""
    labelled = ((CONFIG["cluster_label"], "cluster"), (CONFIG["namespace_label"], "namespace"))
    return (*(f'{label}=~"${name}"' for label, name in labelled if label), JOB)


def series(metric: str, *matchers: str) -> str:
    """``metric{cluster=~"$cluster", namespace=~"$namespace", job=~"$job", <matchers>}``."""
    return f"{metric}{{{', '.join((*scope(), *matchers))}}}"


def scope_labels() -> str:
    """``cluster, namespace, job``: the labels a per-exporter aggregation keeps."""
    return ", ".join(x for x in (CONFIG["cluster_label"], CONFIG["namespace_label"], "job")
                     if x)


def dedup(expr: str) -> str:
    """``max without (instance, pod) (expr)``: one series for all replicas of an exporter
    (they count the same events), so a sum over them is not doubled."""
    replicas = [x.strip() for x in CONFIG["replica_labels"].split(",") if x.strip()]
    return f"max without ({', '.join(replicas)}) ({expr})"


def _all_option() -> dm.VariableOption:
    return dm.VariableOption(selected=True, text="All", value="$__all")


def datasource_variable() -> db.DatasourceVariable:
    return (db.DatasourceVariable("datasource").label("Data source").type("prometheus")
            .current(dm.VariableOption(selected=True, text="default", value="default")))


def label_variable(name: str, label: str, query: str, *, multi: bool = True,
                   all_value: str | None = ".*") -> db.QueryVariable:
    """A ``label_values`` query variable with an All option; ``all_value`` ``.*`` matches
    empty labels too, None makes All the list of the variable's values."""
    variable = (db.QueryVariable(name).label(label)
                .query({"query": query, "refId": f"{name}-var"})
                .datasource(DATASOURCE)
                .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
                .sort(dm.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
                .multi(multi).include_all(True).current(_all_option()))
    return variable.all_value(all_value) if all_value is not None else variable


def scope_variables() -> list[db.QueryVariable]:
    """``cluster`` and ``namespace`` (as the monitoring mixins: All is ``.*``, which also
    matches a series without the label; hidden unless ``show_multi_cluster``), then
    ``job``, each listing only what the one before it selects."""
    hide = (dm.VariableHide.DONT_HIDE if CONFIG["show_multi_cluster"]
            else dm.VariableHide.HIDE_VARIABLE)
    out, matchers = [], []
    for name, label in (("cluster", CONFIG["cluster_label"]),
                        ("namespace", CONFIG["namespace_label"])):
        if not label:
            continue
        selector = f"flower_practices_events_total{{{', '.join(matchers)}}}"
        out.append(label_variable(name, name.capitalize(),
                                  f"label_values({selector}, {label})",
                                  multi=False).hide(hide))
        matchers.append(f'{label}=~"${name}"')
    return [*out, job_variable(matchers)]


def job_variable(matchers: list[str] | None = None) -> db.QueryVariable:
    """The exporter's jobs only: its values are the jobs exposing flower_practices
    metrics, and All is exactly those (no ``.*``), so ``up{job=~"$job"}`` never reaches an
    unrelated job."""
    selector = f"flower_practices_events_total{{{', '.join(matchers or [])}}}"
    return label_variable("job", "Job", f"label_values({selector}, job)", all_value=None)


#: what a stat panel shows without a value: the exporter is down or not scraped (counts
#: that are legitimately zero are made explicit with :func:`zero_while_up`)
NO_VALUE = "No data"


def zero_while_up(expr: str) -> str:
    """``expr``, or 0 while the exporter is scraped; no value (shown as "No data") when it
    is down -- unlike ``or vector(0)``, which shows a green 0 for a dead exporter."""
    return f"({expr}) or (0 * max({series('up')} == 1))"


def dashboard(uid: str, title: str, description: str,
              variables: list[cogbuilder.Builder[dm.VariableModel]]) -> db.Dashboard:
    board = (db.Dashboard(title).uid(uid).description(description).tags(TAGS)
             .refresh("30s").time("now-3h", "now").timezone("browser").editable()
             .tooltip(dm.DashboardCursorSync.CROSSHAIR)
             .link(db.DashboardLink("Celery dashboards").type(dm.DashboardLinkType.DASHBOARDS)
                   .tags(["celery"]).as_dropdown(True).include_vars(True).keep_time(True)))
    board.with_variable(datasource_variable())
    for variable in scope_variables():
        board.with_variable(variable)
    for variable in variables:
        board.with_variable(variable)
    return board


def query(expr: str, legend: str = "", *, ref: str = "A", instant: bool = False,
          table_format: bool = False) -> prom.Dataquery:
    q = prom.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    q = q.instant() if instant else q.range()
    if table_format:
        q = q.format(pm.PromQueryFormat.TABLE)
    return q


def _targets(panel, queries: list[prom.Dataquery]):  # any panel builder
    for q in queries:
        panel = panel.with_target(q)
    return panel


def graph(title: str, description: str, unit: str, queries: list[prom.Dataquery], *,
          width: int = 12, height: int = 8, stacked: bool = False,
          minimum: float | None = 0) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).unit(unit)
             .datasource(DATASOURCE).span(width).height(height)
             .fill_opacity(10).line_width(1)
             .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
                     .placement(cm.LegendPlacement.BOTTOM).show_legend(True)
                     .calcs(["lastNotNull", "max"]))
             .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI)
                      .sort(cm.SortOrder.DESCENDING)))
    if minimum is not None:
        panel = panel.min(minimum)
    if stacked:
        panel = panel.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    return _targets(panel, queries)


def _thresholds(steps: list[tuple[float | None, str]]) -> db.ThresholdsConfig:
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=v, color=c) for v, c in steps])


def single(title: str, description: str, unit: str, expr: str, *,
           steps: list[tuple[float | None, str]] | None = None, width: int = 6,
           height: int = 4, mappings: list[dm.ValueMapping] | None = None) -> stat.Panel:
    panel = (stat.Panel().title(title).description(description).unit(unit)
             .datasource(DATASOURCE).span(width).height(height)
             .color_mode(cm.BigValueColorMode.BACKGROUND)
             .graph_mode(cm.BigValueGraphMode.AREA)
             .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
             .thresholds(_thresholds(steps or [(None, "green")]))
             .no_value(NO_VALUE)
             .with_target(query(expr, instant=True)))
    if mappings:
        panel = panel.mappings(mappings)
    return panel


def bars(title: str, description: str, unit: str, expr: str, legend: str, *,
         width: int = 12, height: int = 8) -> bargauge.Panel:
    return (bargauge.Panel().title(title).description(description).unit(unit)
            .datasource(DATASOURCE).span(width).height(height).min(0)
            .orientation(cm.VizOrientation.HORIZONTAL)
            .display_mode(cm.BarGaugeDisplayMode.GRADIENT)
            .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .thresholds(_thresholds([(None, "green"), (1, "orange")]))
            .with_target(query(expr, legend, instant=True)))


def instant_table(title: str, description: str, expr: str, *, width: int = 24,
                  height: int = 8, unit: str = "short",
                  hide: tuple[str, ...] = ("Time", "__name__"),
                  links: list[db.DashboardLink] | None = None) -> table.Panel:
    """An instant query shown as one row per series (labels as columns)."""
    organize = dm.DataTransformerConfig(
        id_val="organize", options={"excludeByName": {name: True for name in hide}})
    panel = (table.Panel().title(title).description(description).unit(unit)
             .datasource(DATASOURCE).span(width).height(height)
             .show_header(True)
             .with_target(query(expr, instant=True, table_format=True))
             .with_transformation(organize))
    if links:
        panel = panel.data_links(links)
    return panel


def markdown(title: str, description: str, content: str, *, width: int = 24,
             height: int = 8) -> text.Panel:
    return (text.Panel().title(title).description(description).span(width).height(height)
            .mode(tm.TextMode.MARKDOWN).content(content))


def up_down_mappings(up_text: str = "up", down_text: str = "down") -> list[dm.ValueMapping]:
    return [dm.ValueMap(options={
        "0": dm.ValueMappingResult(text=down_text, color="red", index=0),
        "1": dm.ValueMappingResult(text=up_text, color="green", index=1),
    })]


def row(title: str) -> db.Row:
    return db.Row(title)
