{{/* Names and labels */}}
{{- define "shipyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shipyard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "shipyard.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "shipyard.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "shipyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shipyard.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "shipyard.labels" -}}
{{ include "shipyard.selectorLabels" . }}
app.kubernetes.io/part-of: shipyard
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "shipyard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "shipyard.cudaImage" -}}
{{- printf "%s:%s" .Values.image.cudaRepository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Pod Security "restricted": the pod and container halves. uid is the image's non-root user. */}}
{{- define "shipyard.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "shipyard.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Required Secrets: a missing name fails the render with the value to set. */}}
{{- define "shipyard.postgresSecret" -}}
{{- required "postgres.auth.existingSecret is required: the name of a Secret with key `password` (kubectl create secret generic shipyard-postgres --from-literal=password=...)" .Values.postgres.auth.existingSecret -}}
{{- end -}}

{{- define "shipyard.minioSecret" -}}
{{- required "minio.auth.existingSecret is required: the name of a Secret with keys `root-user` and `root-password` (kubectl create secret generic shipyard-minio --from-literal=root-user=... --from-literal=root-password=...)" .Values.minio.auth.existingSecret -}}
{{- end -}}

{{- define "shipyard.mlflowSecret" -}}
{{- required "mlflow.auth.existingSecret is required when mlflow.auth.enabled: the name of a Secret with keys `admin-username`, `admin-password` and `flask-secret-key`" .Values.mlflow.auth.existingSecret -}}
{{- end -}}

{{/* S3 coordinates and credentials, as env, for every S3 client (MLflow, Feast, the runtime's storage). */}}
{{- define "shipyard.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "http://%s-minio.%s.svc:9000" (include "shipyard.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- required "s3.endpoint is required when minio.enabled is false" .Values.s3.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "shipyard.s3Env" -}}
{{- $secret := "" -}}{{- $user := "" -}}{{- $pass := "" -}}
{{- if .Values.minio.enabled -}}
{{- $secret = include "shipyard.minioSecret" . -}}{{- $user = "root-user" -}}{{- $pass = "root-password" -}}
{{- else -}}
{{- $secret = required "s3.existingSecret is required when minio.enabled is false: a Secret with keys `access-key` and `secret-key`" .Values.s3.existingSecret -}}{{- $user = "access-key" -}}{{- $pass = "secret-key" -}}
{{- end }}
- name: AWS_ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: {{ $secret }}, key: {{ $user }}}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ $secret }}, key: {{ $pass }}}}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | quote }}
- name: AWS_ENDPOINT_URL
  value: {{ include "shipyard.s3Endpoint" . | quote }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ include "shipyard.s3Endpoint" . | quote }}
{{- end -}}

{{/* Postgres coordinates (FQDN: the Feast config is shared with the client namespaces); PGPASSWORD is read by libpq, so no password ever sits in a URI or a ConfigMap. */}}
{{- define "shipyard.postgresHost" -}}
{{- if .Values.postgres.enabled -}}
{{- printf "%s-postgres.%s.svc" (include "shipyard.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- required "postgres.external.host is required when postgres.enabled is false" .Values.postgres.external.host -}}
{{- end -}}
{{- end -}}

{{- define "shipyard.postgresPort" -}}
{{- if .Values.postgres.enabled -}}5432{{- else -}}{{ .Values.postgres.external.port }}{{- end -}}
{{- end -}}

{{- define "shipyard.postgresSslmode" -}}
{{- if .Values.postgres.enabled -}}disable{{- else -}}{{ .Values.postgres.external.sslmode }}{{- end -}}
{{- end -}}

{{/* MLflow's store and auth DB: no password in it (libpq reads PGPASSWORD). */}}
{{- define "shipyard.postgresUri" -}}
{{- printf "postgresql://%s@%s:%s/%s" .Values.postgres.auth.username (include "shipyard.postgresHost" .) (include "shipyard.postgresPort" .) .Values.postgres.auth.database -}}
{{- end -}}

{{- define "shipyard.postgresEnv" -}}
- name: PGPASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "shipyard.postgresSecret" . }}, key: password}}
- name: PGSSLMODE
  value: {{ include "shipyard.postgresSslmode" . | quote }}
{{- end -}}

{{/* A GPU pool's placement (the pool's values, already looked up): nodeSelector + tolerations. */}}
{{- define "shipyard.poolPlacement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A scratch volume for readOnlyRootFilesystem containers. */}}
{{- define "shipyard.tmpVolume" -}}
- name: tmp
  emptyDir: {sizeLimit: 1Gi}
{{- end -}}

{{/* NetworkPolicy peers: a component of this release, the InferenceService pods `shipyard deploy` labels, client namespaces. */}}
{{- define "shipyard.peer" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/instance: {{ .root.Release.Name }}
      app.kubernetes.io/component: {{ .component }}
{{- end -}}
{{- define "shipyard.inferencePeer" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/part-of: shipyard
      app.kubernetes.io/component: inference
{{- end -}}
{{- define "shipyard.namespacePeers" -}}
{{- range .namespaces }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ . }}
{{- end }}
{{- end -}}
