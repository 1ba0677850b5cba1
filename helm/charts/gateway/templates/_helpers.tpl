{{- define "gateway.name" -}}{{ printf "%s-gateway" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "gateway.selector" -}}
app.kubernetes.io/name: gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "gateway.labels" -}}
{{ include "gateway.selector" . }}
app.kubernetes.io/part-of: taskboard
app.kubernetes.io/version: {{ .Values.image.tag | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "gateway.jwtSecret" -}}{{ .Values.auth.hs256Secret | default (printf "%s-jwt" (include "gateway.name" .)) }}{{- end -}}
{{- define "gateway.jwtFiles" -}}{{ or .Values.auth.jwks .Values.auth.publicKey }}{{- end -}}
{{- /* repository@digest when a digest is given (pinned), else repository:tag. */ -}}
{{- define "gateway.image" -}}{{ if .digest }}{{ printf "%s@%s" .repository .digest }}{{ else }}{{ printf "%s:%s" .repository .tag }}{{ end }}{{- end -}}
