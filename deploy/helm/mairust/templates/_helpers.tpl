{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "mairust.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified release name. */}}
{{- define "mairust.fullname" -}}
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

{{- define "mairust.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels common to every object. */}}
{{- define "mairust.labels" -}}
helm.sh/chart: {{ include "mairust.chart" . }}
{{ include "mairust.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mairust
{{- end }}

{{- define "mairust.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mairust.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component; call with (dict "ctx" $ "component" "core"). */}}
{{- define "mairust.componentLabels" -}}
{{ include "mairust.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mairust.componentSelectorLabels" -}}
{{ include "mairust.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mairust.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mairust.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference of a component; call with (dict "ctx" $ "image" .Values.core.image). */}}
{{- define "mairust.image" -}}
{{- $repo := .image.repository }}
{{- with .ctx.Values.global.imageRegistry }}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}
{{- end }}
{{- printf "%s:%s" $repo (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{- define "mairust.headlessServiceName" -}}
{{- printf "%s-core-headless" (include "mairust.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mairust.clusterSecretName" -}}
{{- default (printf "%s-cluster" (include "mairust.fullname" .)) .Values.cluster.existingSecret }}
{{- end }}

{{- define "mairust.apiServiceName" -}}
{{- printf "%s-api" (include "mairust.fullname" .) }}
{{- end }}

{{/* Checks that fail the render with a message saying what to change. */}}
{{- define "mairust.validate" -}}
{{- if .Values.postgresql.enabled }}
{{- fail "postgresql.enabled=true: this chart bundles no PostgreSQL; set postgresql.enabled=false and point postgresql.external at your database" }}
{{- end }}
{{- if not .Values.postgresql.external.host }}
{{- fail "postgresql.external.host is empty: set the host of the external PostgreSQL" }}
{{- end }}
{{- if not .Values.postgresql.external.existingSecret }}
{{- fail "postgresql.external.existingSecret is empty: create a Secret with the database password and name it here" }}
{{- end }}
{{- if eq .Values.storage.backend "s3" }}
{{- if not .Values.storage.s3.bucket }}
{{- fail "storage.s3.bucket is empty: name the (existing) bucket for message bodies" }}
{{- end }}
{{- if not .Values.storage.s3.existingSecret }}
{{- fail "storage.s3.existingSecret is empty: create a Secret with the S3 access and secret keys and name it here" }}
{{- end }}
{{- else if eq .Values.storage.backend "fs" }}
{{- if not .Values.storage.fs.existingClaim }}
{{- fail "storage.backend=fs needs storage.fs.existingClaim: a ReadWriteMany PersistentVolumeClaim every pod mounts (or use storage.backend=s3)" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Environment shared by every engine container: database, blob store, logging, secrets. */}}
{{- define "mairust.commonEnv" -}}
{{- $pg := .Values.postgresql.external }}
- name: LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: MAIRUST_LOG__FORMAT
  value: "json"
{{- with .Values.hostname }}
- name: MAIRUST_SERVER__HOSTNAME
  value: {{ . | quote }}
{{- end }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $pg.existingSecret | quote }}
      key: {{ $pg.passwordKey | quote }}
# Kubernetes expands $(PGPASSWORD) from the variable above.
- name: DATABASE_URL
  value: {{ printf "postgres://%s:$(PGPASSWORD)@%s:%v/%s%s" $pg.username $pg.host $pg.port $pg.database (ternary (printf "?%s" $pg.options) "" (ne $pg.options "")) | quote }}
- name: STORAGE_BACKEND
  value: {{ .Values.storage.backend | quote }}
{{- if eq .Values.storage.backend "s3" }}
{{- $s3 := .Values.storage.s3 }}
- name: S3_BUCKET
  value: {{ $s3.bucket | quote }}
- name: S3_REGION
  value: {{ $s3.region | quote }}
{{- with $s3.endpoint }}
- name: S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $s3.existingSecret | quote }}
      key: {{ $s3.accessKeyKey | quote }}
- name: S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $s3.existingSecret | quote }}
      key: {{ $s3.secretKeyKey | quote }}
{{- else }}
- name: MAIRUST_STORAGE__OPTIONS__PATH
  value: "/var/lib/mairust/mail"
- name: MAIRUST_STORAGE__OPTIONS__SHARED
  value: "true"
{{- end }}
{{- with .Values.security.masterKey.existingSecret }}
- name: MAIRUST_MASTER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . | quote }}
      key: {{ $.Values.security.masterKey.key | quote }}
{{- end }}
{{- with .Values.admin.existingSecret }}
- name: MAIRUST_ADMIN_EMAIL
  valueFrom:
    secretKeyRef:
      name: {{ . | quote }}
      key: {{ $.Values.admin.emailKey | quote }}
- name: MAIRUST_ADMIN_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . | quote }}
      key: {{ $.Values.admin.passwordKey | quote }}
{{- end }}
{{- end }}

{{/* Cluster membership environment (core and api pods join the QUIC cluster). */}}
{{- define "mairust.clusterEnv" -}}
{{- if .Values.cluster.enabled }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: MAIRUST_CLUSTER__ENABLED
  value: "true"
- name: MAIRUST_CLUSTER__NODE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: MAIRUST_CLUSTER__BIND
  value: {{ printf "0.0.0.0:%v" .Values.cluster.port | quote }}
- name: MAIRUST_CLUSTER__ADVERTISE
  value: {{ printf "$(POD_IP):%v" .Values.cluster.port | quote }}
- name: MAIRUST_CLUSTER__SEED_DNS
  value: {{ printf "%s.%s.svc.cluster.local:%v" (include "mairust.headlessServiceName" .) .Release.Namespace .Values.cluster.port | quote }}
- name: MAIRUST_CLUSTER__SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "mairust.clusterSecretName" . | quote }}
      key: {{ .Values.cluster.secretKey | quote }}
{{- end }}
{{- end }}

{{/* The cluster's members, the core and api pods of this release (a label selector). */}}
{{- define "mairust.clusterMemberSelector" -}}
matchLabels:
  {{- include "mairust.selectorLabels" . | nindent 2 }}
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values: [core, api]
{{- end }}

{{/* Liveness and readiness probes (deployment spec 8.2) on the container's "http" port. */}}
{{- define "mairust.probes" -}}
{{- $l := .Values.probes.liveness }}
{{- $r := .Values.probes.readiness }}
livenessProbe:
  httpGet:
    path: {{ $l.path }}
    port: http
  initialDelaySeconds: {{ $l.initialDelaySeconds }}
  periodSeconds: {{ $l.periodSeconds }}
  timeoutSeconds: {{ $l.timeoutSeconds }}
  failureThreshold: {{ $l.failureThreshold }}
readinessProbe:
  httpGet:
    path: {{ $r.path }}
    port: http
  initialDelaySeconds: {{ $r.initialDelaySeconds }}
  periodSeconds: {{ $r.periodSeconds }}
  timeoutSeconds: {{ $r.timeoutSeconds }}
  failureThreshold: {{ $r.failureThreshold }}
{{- end }}

{{/* Volumes every engine pod mounts: config, writable scratch, the shared fs store. */}}
{{- define "mairust.commonVolumes" -}}
- name: config
  configMap:
    name: {{ include "mairust.fullname" . }}-config
- name: tmp
  emptyDir: {}
{{- if eq .Values.storage.backend "fs" }}
- name: mail
  persistentVolumeClaim:
    claimName: {{ .Values.storage.fs.existingClaim }}
{{- end }}
{{- end }}

{{- define "mairust.commonMounts" -}}
- name: config
  mountPath: /etc/mairust
  readOnly: true
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /var/lib/mairust
{{- if eq .Values.storage.backend "fs" }}
- name: mail
  mountPath: /var/lib/mairust/mail
{{- end }}
{{- end }}

{{- define "mairust.roles" -}}
{{- join "," . }}
{{- end }}
