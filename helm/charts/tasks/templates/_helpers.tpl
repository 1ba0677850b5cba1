{{- define "tasks.name" -}}{{ printf "%s-tasks" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "tasks.selector" -}}
app.kubernetes.io/name: tasks
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "tasks.labels" -}}
{{ include "tasks.selector" . }}
app.kubernetes.io/part-of: taskboard
app.kubernetes.io/version: {{ .Values.image.tag | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "tasks.secretName" -}}{{ .Values.database.existingSecret | default (printf "%s-db" (include "tasks.name" .)) }}{{- end -}}
{{- define "tasks.serviceTokenSecret" -}}{{ .Values.auth.serviceTokenSecret | default (printf "%s-service-token" .Release.Name) }}{{- end -}}
{{- /* repository@digest when a digest is given (pinned), else repository:tag. */ -}}
{{- define "tasks.image" -}}{{ if .digest }}{{ printf "%s@%s" .repository .digest }}{{ else }}{{ printf "%s:%s" .repository .tag }}{{ end }}{{- end -}}
