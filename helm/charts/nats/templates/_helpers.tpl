{{- define "nats.name" -}}{{ printf "%s-nats" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "nats.selector" -}}
app.kubernetes.io/name: nats
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "nats.labels" -}}
{{ include "nats.selector" . }}
app.kubernetes.io/part-of: taskboard
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- /* repository@digest when a digest is given (pinned), else repository:tag. */ -}}
{{- define "nats.image" -}}{{ if .digest }}{{ printf "%s@%s" .repository .digest }}{{ else }}{{ printf "%s:%s" .repository .tag }}{{ end }}{{- end -}}
