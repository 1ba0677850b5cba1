{{- define "postgres.name" -}}{{ printf "%s-postgres" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "postgres.selector" -}}
app.kubernetes.io/name: postgres
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "postgres.labels" -}}
{{ include "postgres.selector" . }}
app.kubernetes.io/part-of: taskboard
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- /* repository@digest when a digest is given (pinned), else repository:tag. */ -}}
{{- define "postgres.image" -}}{{ if .digest }}{{ printf "%s@%s" .repository .digest }}{{ else }}{{ printf "%s:%s" .repository .tag }}{{ end }}{{- end -}}
