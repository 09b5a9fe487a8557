{{/* Object names: at most 63 characters, the DNS label limit Services and labels share. */}}
{{- define "natlens.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "natlens.fullname" -}}
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

{{- define "natlens.agentName" -}}
{{- printf "%s-agent" (include "natlens.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "natlens.collectorName" -}}
{{- printf "%s-collector" (include "natlens.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Headless Service giving each collector peer a stable DNS name (replicas > 1). */}}
{{- define "natlens.collectorPeersName" -}}
{{- printf "%s-collector-peers" (include "natlens.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "natlens.clickhouseName" -}}
{{- printf "%s-clickhouse" (include "natlens.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding the ClickHouse URL the collector uses (statefulset and external modes). */}}
{{- define "natlens.clickhouseSecretName" -}}
{{- if and (eq .Values.clickhouse.mode "external") .Values.clickhouse.external.existingSecret }}
{{- .Values.clickhouse.external.existingSecret }}
{{- else }}
{{- include "natlens.clickhouseName" . }}
{{- end }}
{{- end }}

{{- define "natlens.clickhouseSecretKey" -}}
{{- if and (eq .Values.clickhouse.mode "external") .Values.clickhouse.external.existingSecret }}
{{- .Values.clickhouse.external.existingSecretKey }}
{{- else -}}
url
{{- end }}
{{- end }}

{{- define "natlens.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades (a selector cannot change). Call with (dict "ctx" $ "component" "agent"). */}}
{{- define "natlens.selectorLabels" -}}
app.kubernetes.io/name: {{ include "natlens.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "natlens.labels" -}}
{{ include "natlens.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: natlens
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ include "natlens.chart" .ctx }}
{{- end }}

{{/*
Pod annotations: prometheus.io/scrape, port and path when the component serves metrics, then the
user's podAnnotations (which win). Call with (dict "annotations" .podAnnotations "metrics" .metrics).
*/}}
{{- define "natlens.podAnnotations" -}}
{{- $out := dict }}
{{- if .metrics.enabled }}
{{- $_ := set $out "prometheus.io/scrape" "true" }}
{{- $_ := set $out "prometheus.io/port" (toString (int .metrics.port)) }}
{{- $_ := set $out "prometheus.io/path" "/metrics" }}
{{- end }}
{{- range $k, $v := .annotations }}
{{- $_ := set $out $k $v }}
{{- end }}
{{- if $out }}
annotations:
  {{- toYaml $out | nindent 2 }}
{{- end }}
{{- end }}

{{/* The container's metrics port and its liveness (/healthz) and readiness (/readyz) probes. Call with the component's .metrics. */}}
{{- define "natlens.metricsPortAndProbes" -}}
ports:
  - name: metrics
    containerPort: {{ int .port }}
    protocol: TCP
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  initialDelaySeconds: 10
  periodSeconds: 20
  timeoutSeconds: 5
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: 5
  timeoutSeconds: 5
{{- end }}

{{/* Labels for cluster-scoped objects and the namespace: no component. */}}
{{- define "natlens.commonLabels" -}}
app.kubernetes.io/name: {{ include "natlens.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: natlens
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "natlens.chart" . }}
{{- end }}

{{- define "natlens.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .ctx.Chart.AppVersion) }}
{{- end }}

{{/* host:port of the collector Service, as the agents dial it. */}}
{{- define "natlens.collectorAddress" -}}
{{- if .Values.agent.collectorAddress }}
{{- .Values.agent.collectorAddress }}
{{- else }}
{{- printf "%s.%s.svc:%d" (include "natlens.collectorName" .) .Release.Namespace (int .Values.collector.service.port) }}
{{- end }}
{{- end }}

{{/* NATLENS_PEERS for a scaled-out collector: id=host:port for every StatefulSet pod, itself included. */}}
{{- define "natlens.collectorPeers" -}}
{{- $name := include "natlens.collectorName" . }}
{{- $peers := include "natlens.collectorPeersName" . }}
{{- $list := list }}
{{- range $i := until (int .Values.collector.replicas) }}
{{- $list = append $list (printf "%s-%d=%s-%d.%s.%s.svc:7070" $name $i $name $i $peers $.Release.Namespace) }}
{{- end }}
{{- join "," $list }}
{{- end }}

{{/* The Secret with ca.crt, tls.crt, tls.key of one role. Call with (dict "ctx" $ "role" "agent"). */}}
{{- define "natlens.tlsSecretName" -}}
{{- $existing := get .ctx.Values.tls.existingSecrets .role | default "" }}
{{- if and (not .ctx.Values.tls.certManager.enabled) $existing }}
{{- $existing }}
{{- else if .ctx.Values.tls.certManager.enabled }}
{{- printf "%s-%s-tls" (include "natlens.fullname" .ctx) .role | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- fail (printf "tls.enabled needs tls.certManager.enabled=true or tls.existingSecrets.%s (a Secret with ca.crt, tls.crt, tls.key); tls.enabled=false is plain text, for a lab only" .role) }}
{{- end }}
{{- end }}

{{/* The issuer of the agent, collector and query certificates: the user's, or the chart's own CA. */}}
{{- define "natlens.certIssuerRef" -}}
{{- $ref := .Values.tls.certManager.issuerRef }}
{{- if $ref.name }}
name: {{ $ref.name }}
kind: {{ $ref.kind | default "Issuer" }}
group: {{ $ref.group | default "cert-manager.io" }}
{{- else }}
name: {{ include "natlens.fullname" . }}-ca
kind: Issuer
group: cert-manager.io
{{- end }}
{{- end }}

{{/* Environment and mounts giving a component its TLS files (NATLENS_TLS_*), or NATLENS_PLAINTEXT. */}}
{{- define "natlens.tlsEnv" -}}
{{- if .ctx.Values.tls.enabled }}
- name: NATLENS_TLS_CA
  value: /etc/natlens/tls/ca.crt
- name: NATLENS_TLS_CERT
  value: /etc/natlens/tls/tls.crt
- name: NATLENS_TLS_KEY
  value: /etc/natlens/tls/tls.key
{{- else }}
# tls.enabled=false: unencrypted and unauthenticated, for a lab only (docs/security.md).
- name: NATLENS_PLAINTEXT
  value: "true"
{{- end }}
{{- end }}

{{/* Capabilities the agent needs for its capture mode (test/integration/capabilities.test.ts). */}}
{{- define "natlens.agentCapabilities" -}}
{{- $mode := .Values.agent.capture.mode }}
{{- $caps := list "NET_ADMIN" }}
{{- if ne $mode "ctnetlink" }}
{{- $caps = list "BPF" "PERFMON" "NET_ADMIN" }}
{{- end }}
{{- if eq $mode "auto" }}
{{- $caps = append $caps "SYS_ADMIN" }}
{{- end }}
{{- range .Values.agent.extraCapabilities }}
{{- if not (has . $caps) }}
{{- $caps = append $caps . }}
{{- end }}
{{- end }}
{{- toJson $caps }}
{{- end }}
