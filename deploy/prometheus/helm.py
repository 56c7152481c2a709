"""The chart's PrometheusRule template, from the same rules as the rules file.

The rules are rendered with :class:`Options` whose thresholds, durations, job and URLs are
placeholder tokens; Prometheus' own ``{{ ... }}`` templates are then escaped for Helm and
the tokens become Helm expressions on ``.Values.prometheusRule`` -- so a threshold changed
in the chart's values lands in the same rule text the generator writes for everyone else.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

import yaml

from .rules import Options, groups

#: fields taken from ``.Values.prometheusRule`` (the rest from ``.config``)
TOP_LEVEL = {"job": 'include "flower-practices.job" .',
             "runbook_base_url": ".Values.prometheusRule.runbookBaseUrl",
             "dashboard_base_url": ".Values.prometheusRule.dashboardBaseUrl"}
#: shaping labels: fixed at generation time (they change the expressions' structure)
STRUCTURAL = {"cluster_label", "namespace_label", "replica_labels"}
TOKEN = re.compile(r"@@(\w+?)(%?)@@")


class _Token(str):
    """A placeholder that survives ``str.format`` specs (``.0%`` becomes a percent
    token) and ``rstrip('/')``."""

    __slots__ = ()

    def __format__(self, spec: str) -> str:
        return self[:-2] + "%@@" if spec.endswith("%") else str(self)

    def rstrip(self, chars: str | None = None) -> str:
        return str(self)


def _placeholder_options() -> Options:
    values: dict[str, Any] = {f.name: _Token(f"@@{f.name}@@") for f in fields(Options)
                              if f.name not in STRUCTURAL}
    return Options(**values)


def _expression(name: str, percent: bool) -> str:
    if name in TOP_LEVEL:
        source = TOP_LEVEL[name]
        if name.endswith("_url"):
            source = f'trimSuffix "/" {source}'
    else:
        source = f".Values.prometheusRule.config.{name}"
    if percent:
        return f"{{{{ round (mulf {source} 100) 0 | int }}}}%"
    return f"{{{{ {source} }}}}"


def _escape_prometheus_templates(text: str) -> str:
    """``{{ x }}`` (Prometheus' template) -> printed literally by Helm."""
    return re.sub(r"\{\{|\}\}", lambda m: '{{ "' + m.group(0) + '" }}', text)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, str) else value


def template_text(header: str) -> str:
    """``templates/prometheusrule.yaml`` of the chart."""
    body = yaml.safe_dump(_plain(groups(_placeholder_options())), sort_keys=False,
                          width=1000, allow_unicode=True, default_flow_style=False)
    body = _escape_prometheus_templates(body)
    leftover = {m.group(1) for m in TOKEN.finditer(body)} - {f.name for f in fields(Options)}
    if leftover:
        raise ValueError(f"unknown placeholders {sorted(leftover)}")
    body = TOKEN.sub(lambda m: _expression(m.group(1), bool(m.group(2))), body)
    indented = "".join(f"    {line}\n" if line else "\n" for line in body.splitlines())
    comment = header.strip().lstrip("# ")
    return (f"{{{{- /* {comment} */}}}}\n"
            "{{- if .Values.prometheusRule.enabled }}\n"
            "apiVersion: monitoring.coreos.com/v1\n"
            "kind: PrometheusRule\n"
            "metadata:\n"
            '  name: {{ include "flower-practices.fullname" . }}\n'
            "  namespace: {{ .Values.prometheusRule.namespace | default .Release.Namespace }}\n"
            "  labels:\n"
            '    {{- include "flower-practices.labels" . | nindent 4 }}\n'
            "    app.kubernetes.io/component: alert-rules\n"
            "    {{- with .Values.prometheusRule.labels }}\n"
            "    {{- toYaml . | nindent 4 }}\n"
            "    {{- end }}\n"
            "spec:\n"
            "  groups:\n"
            f"{indented}"
            "{{- end }}\n")
