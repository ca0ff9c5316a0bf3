{{- define "matchenv.labels" -}}
app.kubernetes.io/name: matchenv
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "matchenv.operatorSelector" -}}
app.kubernetes.io/name: matchenv
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "matchenv.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* cluster-scoped objects are named after the release and its namespace: two releases never share one */}}
{{- define "matchenv.clusterName" -}}
{{ .Release.Name }}-{{ .Release.Namespace }}
{{- end }}

{{/* the rules the operator needs where it serves MatchEnvironments (ClusterRole, or a Role per namespace) */}}
{{- define "matchenv.environmentRules" -}}
- apiGroups: [matchenv.io]
  resources: [matchenvironments]
  verbs: [get, list, watch, patch, update, delete]  # delete: an environment whose spec.expireAfter has passed
- apiGroups: [matchenv.io]
  resources: [matchenvironments/status]
  verbs: [get, patch, update]
- apiGroups: [matchenv.io]
  resources: [matchenvironments/finalizers]
  verbs: [update]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, create, patch, delete]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch, list]
{{- end }}

{{/* The bundled broker's URLs for (list $ scheme port): its Service for one node, every node (';'-separated, so a
client whose node goes away moves to the next at once) for a cluster. */}}
{{- define "matchenv.rabbitmqURLs" -}}
{{- $root := index . 0 }}{{ $scheme := index . 1 }}{{ $port := index . 2 }}
{{- $urls := list }}
{{- if gt (int $root.Values.rabbitmq.replicas) 1 }}
{{- range $i := until (int $root.Values.rabbitmq.replicas) }}
{{- $urls = append $urls (printf "%s://%s-rabbitmq-%d.%s-rabbitmq-nodes.%s.svc:%d" $scheme $root.Release.Name $i $root.Release.Name $root.Release.Namespace (int $port)) }}
{{- end }}
{{- else }}
{{- $urls = append $urls (printf "%s://%s-rabbitmq.%s.svc:%d" $scheme $root.Release.Name $root.Release.Namespace (int $port)) }}
{{- end }}
{{- join ";" $urls }}
{{- end }}
