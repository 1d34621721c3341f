{{/* Chart name, a DNS label. */}}
{{- define "nuclei-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of the release's objects: the release name, prefixed to the chart
name unless it already contains it. */}}
{{- define "nuclei-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels that select the operator pods; never change them after install. */}}
{{- define "nuclei-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nuclei-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object of the release. */}}
{{- define "nuclei-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "nuclei-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The operator image; scanner pods use it too unless scanner.image is set. */}}
{{- define "nuclei-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Name of the leader-election Lease (LEASE_NAME). */}}
{{- define "nuclei-operator.leaseName" -}}
{{- .Values.leaderElection.leaseName | default (printf "%s-leader" (include "nuclei-operator.fullname" .)) }}
{{- end }}

{{/* The listeners' host, with an IPv6 host in brackets. */}}
{{- define "nuclei-operator.httpHost" -}}
{{- $host := toString .Values.http.host }}
{{- if and (contains ":" $host) (not (hasPrefix "[" $host)) }}
{{- $host = printf "[%s]" $host }}
{{- end }}
{{- $host }}
{{- end }}

{{/* HTTP_ADDR: the data endpoints' host and port. */}}
{{- define "nuclei-operator.httpAddr" -}}
{{- printf "%s:%v" (include "nuclei-operator.httpHost" .) .Values.http.port }}
{{- end }}

{{/* HEALTH_ADDR: the probes' host and port. */}}
{{- define "nuclei-operator.healthAddr" -}}
{{- printf "%s:%v" (include "nuclei-operator.httpHost" .) .Values.health.port }}
{{- end }}

{{/* The ClusterRole that lets its subjects read /metrics and /queue. */}}
{{- define "nuclei-operator.dataReaderClusterRole" -}}
{{- printf "%s-data-reader" (include "nuclei-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/*
The scanner ClusterRole (SCANNER_CLUSTER_ROLE): what scanner pods may do.
*/}}
{{- define "nuclei-operator.scannerClusterRole" -}}
{{- printf "%s-scanner" (include "nuclei-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/*
The ValidatingAdmissionPolicy (and its binding) that lets a scanner pod
write only its own scan.
*/}}
{{- define "nuclei-operator.scannerPolicy" -}}
{{- printf "%s-scanner-own-scan" (include "nuclei-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end }}
