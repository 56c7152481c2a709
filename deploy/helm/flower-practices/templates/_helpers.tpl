{{/* Names and labels shared by every manifest of the chart. */}}

{{- define "flower-practices.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flower-practices.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "flower-practices.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flower-practices.labels" -}}
helm.sh/chart: {{ include "flower-practices.chart" . }}
{{ include "flower-practices.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "flower-practices.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flower-practices.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The Prometheus job of the exporter: the ServiceMonitor/PodMonitor sets it from the
     app.kubernetes.io/name label (jobLabel), so the rules and dashboards select it. */}}
{{- define "flower-practices.job" -}}
{{- .Values.prometheusRule.job | default (include "flower-practices.name" .) }}
{{- end }}

{{- define "flower-practices.image" -}}
{{- $tag := .image.tag | default .chart.AppVersion -}}
{{- if .image.digest -}}
{{ .image.repository }}@{{ .image.digest }}
{{- else -}}
{{ .image.repository }}:{{ $tag }}
{{- end -}}
{{- end }}

{{- define "flower-practices.brokerSecretName" -}}
{{- .Values.broker.existingSecret | default (printf "%s-broker" (include "flower-practices.fullname" .)) }}
{{- end }}

{{- define "flower-practices.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flower-practices.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}
