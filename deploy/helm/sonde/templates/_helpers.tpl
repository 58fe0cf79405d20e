{{/*
The chart's name, or nameOverride.
*/}}
{{- define "sonde.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of every object: fullnameOverride, else the release name, with the
chart's name added when the release name does not already contain it.
Object names are DNS labels, hence at most 63 characters.
*/}}
{{- define "sonde.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "sonde.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
chart-version, as the helm.sh/chart label wants it.
*/}}
{{- define "sonde.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The labels that pick the agent's pods; never change them in an upgrade (a
DaemonSet's selector is immutable).
*/}}
{{- define "sonde.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sonde.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The labels of every object.
*/}}
{{- define "sonde.labels" -}}
helm.sh/chart: {{ include "sonde.chart" . }}
{{ include "sonde.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: node-agent
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The ServiceAccount the agent runs as.
*/}}
{{- define "sonde.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sonde.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "sonde.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The agent's configuration as written into sonde.yaml: .Values.config, with
kubernetes.cluster_name taken from .Values.clusterName when that is set.
*/}}
{{- define "sonde.config" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- if .Values.clusterName }}
{{- $kubernetes := get $config "kubernetes" | default dict }}
{{- $_ := set $kubernetes "cluster_name" .Values.clusterName }}
{{- $_ := set $config "kubernetes" $kubernetes }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
The port of a listen address from the agent's config (HOST:PORT or a port
alone), so that container ports and probes follow the config. Called with
(list ADDRESS KEY), KEY naming the setting in error messages.
*/}}
{{- define "sonde.listenPort" -}}
{{- $address := index . 0 | toString }}
{{- $key := index . 1 }}
{{- $port := regexFind "[0-9]+$" $address }}
{{- if not $port }}
{{- fail (printf "config.%s: %q has no port; write HOST:PORT, e.g. 0.0.0.0:9465" $key $address) }}
{{- end }}
{{- $port }}
{{- end }}

{{/*
The health port: the probes need config.health.listen.
*/}}
{{- define "sonde.healthPort" -}}
{{- $listen := dig "health" "listen" "" (.Values.config | default dict) }}
{{- if not $listen }}
{{- fail "config.health.listen must be set (e.g. 0.0.0.0:9465): the liveness and readiness probes use it" }}
{{- end }}
{{- include "sonde.listenPort" (list $listen "health.listen") }}
{{- end }}
