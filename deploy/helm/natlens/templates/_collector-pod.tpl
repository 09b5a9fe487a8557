{{/* The collector's pod template, shared by its Deployment (1 replica) and StatefulSet (peers). */}}
{{- define "natlens.collectorPodTemplate" -}}
{{- $c := .Values.collector }}
{{- $scaled := gt (int $c.replicas) 1 }}
{{- $embedded := eq .Values.clickhouse.mode "embedded" -}}
metadata:
  labels:
    {{- include "natlens.selectorLabels" (dict "ctx" . "component" "collector") | nindent 4 }}
  {{- include "natlens.podAnnotations" (dict "annotations" $c.podAnnotations "metrics" $c.metrics) | nindent 2 }}
spec:
  serviceAccountName: {{ include "natlens.collectorName" . }}
  # Stored data is flushed on SIGTERM before the store closes.
  terminationGracePeriodSeconds: 30
  {{- with $c.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    # The data volume becomes writable for that group.
    fsGroup: 65532
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: collector
      image: {{ include "natlens.image" (dict "image" $c.image "ctx" .) | quote }}
      imagePullPolicy: {{ $c.image.pullPolicy }}
      args: ["collector"]
      env:
        - name: NATLENS_LISTEN
          value: "0.0.0.0:7070"
        - name: NATLENS_KUBERNETES
          value: {{ $c.kubernetes | quote }}
        - name: NATLENS_DATABASE
          value: {{ $c.database | quote }}
        - name: NATLENS_TTL_DAYS
          value: {{ int $c.ttlDays | quote }}
        - name: NATLENS_LOG_LEVEL
          value: {{ $c.logLevel | quote }}
        {{- if $c.metrics.enabled }}
        - name: NATLENS_METRICS_LISTEN
          value: {{ printf "0.0.0.0:%d" (int $c.metrics.port) | quote }}
        {{- end }}
        {{- if $embedded }}
        - name: NATLENS_DATA
          value: /var/lib/natlens
        {{- else }}
        - name: NATLENS_CLICKHOUSE_URL
          valueFrom:
            secretKeyRef:
              name: {{ include "natlens.clickhouseSecretName" . }}
              key: {{ include "natlens.clickhouseSecretKey" . }}
        {{- end }}
        {{- if $scaled }}
        # Peers: every collector owns the pods whose addresses hash to it; hops reach their owner
        # whichever collector an agent streams to.
        - name: NATLENS_COLLECTOR_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: NATLENS_PEERS
          value: {{ include "natlens.collectorPeers" . | quote }}
        {{- end }}
        {{- include "natlens.tlsEnv" (dict "ctx" .) | trim | nindent 8 }}
        {{- if .Values.query.tokenSecret }}
        - name: NATLENS_QUERY_TOKEN_FILE
          value: /etc/natlens/query-tokens/tokens
        {{- end }}
        {{- with $c.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: grpc
          containerPort: 7070
          protocol: TCP
        {{- if $c.metrics.enabled }}
        - name: metrics
          containerPort: {{ int $c.metrics.port }}
          protocol: TCP
      # /readyz: the store answers and gRPC is listening; /healthz: the process and its event loop.
      readinessProbe:
        httpGet:
          path: /readyz
          port: metrics
        periodSeconds: 5
        timeoutSeconds: 5
      livenessProbe:
        httpGet:
          path: /healthz
          port: metrics
        initialDelaySeconds: 30
        periodSeconds: 20
        timeoutSeconds: 5
        {{- else }}
      # No HTTP endpoint (collector.metrics.enabled=false): the gRPC port accepting connections means the store is open.
      readinessProbe:
        tcpSocket:
          port: grpc
        periodSeconds: 5
      livenessProbe:
        tcpSocket:
          port: grpc
        initialDelaySeconds: 30
        periodSeconds: 20
        {{- end }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities:
          drop: ["ALL"]
      resources:
        {{- toYaml $c.resources | nindent 8 }}
      volumeMounts:
        {{- if $embedded }}
        - name: data
          mountPath: /var/lib/natlens
        {{- end }}
        - name: tmp
          mountPath: /tmp
        {{- if .Values.tls.enabled }}
        - name: tls
          mountPath: /etc/natlens/tls
          readOnly: true
        {{- end }}
        {{- if .Values.query.tokenSecret }}
        - name: query-tokens
          mountPath: /etc/natlens/query-tokens
          readOnly: true
        {{- end }}
  volumes:
    {{- if and $embedded (not $c.persistence.enabled) }}
    - name: data
      emptyDir: {}
    {{- else if and $embedded (not $scaled) }}
    - name: data
      persistentVolumeClaim:
        claimName: {{ include "natlens.collectorName" . }}-data
    {{- end }}
    - name: tmp
      emptyDir: {}
    {{- if .Values.tls.enabled }}
    # The collector's certificate (role collector: serves agents and queries, forwards to peers).
    - name: tls
      secret:
        secretName: {{ include "natlens.tlsSecretName" (dict "ctx" . "role" "collector") }}
        defaultMode: 0440
    {{- end }}
    {{- if .Values.query.tokenSecret }}
    # Bearer tokens the query API accepts (query.tokenSecret).
    - name: query-tokens
      secret:
        secretName: {{ .Values.query.tokenSecret }}
        defaultMode: 0440
        items:
          - key: {{ .Values.query.tokenSecretKey }}
            path: tokens
    {{- end }}
{{- end }}
