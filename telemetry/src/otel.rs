//! OpenTelemetry tracing, on only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set: spans exported over
//! OTLP/gRPC, and the W3C trace context (`traceparent`) carried from an HTTP request through gRPC
//! metadata and NATS headers. Off, every helper here is one relaxed atomic load.
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C trace context header (HTTP, gRPC metadata and NATS headers alike).
pub const TRACEPARENT: &str = "traceparent";

static ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are being exported.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The exporter's owner: flushes what is buffered on [`Otel::shutdown`].
#[must_use = "shut it down on exit, or the last spans are lost"]
pub struct Otel(Option<SdkTracerProvider>);

impl Otel {
    /// Exports what is still buffered and stops the exporter. Blocks, as [`Otel::flush`].
    pub fn shutdown(self) {
        if let Some(p) = self.0 {
            if let Err(e) = p.shutdown() {
                eprintln!("OpenTelemetry: {e}");
            }
        }
    }

    /// Exports what is buffered now (tests). Blocks: call it where blocking is allowed
    /// (`spawn_blocking`), as the export itself runs on the runtime.
    pub fn flush(&self) {
        if let Some(p) = &self.0 {
            let _ = p.force_flush();
        }
    }
}

/// A tracing layer exporting to `endpoint` (OTLP/gRPC) as `service`, and the exporter's owner;
/// turns the propagation helpers on.
///
/// # Errors
/// The exporter cannot be built (a malformed endpoint).
pub fn layer<S>(
    service: &'static str,
    endpoint: &str,
) -> Result<(impl tracing_subscriber::Layer<S>, Otel), String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint:?}: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer(service);
    ON.store(true, Ordering::Relaxed);
    Ok((
        tracing_opentelemetry::layer().with_tracer(tracer),
        Otel(Some(provider)),
    ))
}

/// No exporter (tracing off).
pub fn off() -> Otel {
    Otel(None)
}

struct HttpHeaders<'a>(&'a http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Makes `span` a child of the trace context in `headers` (HTTP or a gRPC request's), if any.
pub fn continue_from(span: &tracing::Span, headers: &http::HeaderMap) {
    if !enabled() {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HttpHeaders(headers)));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Makes `span` a child of a `traceparent` value (from NATS headers).
pub fn continue_from_traceparent(span: &tracing::Span, traceparent: &str) {
    let mut h = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(traceparent) {
        h.insert(TRACEPARENT, v);
        continue_from(span, &h);
    }
}

/// Adds the current span's trace context to outgoing gRPC metadata.
pub fn inject(md: &mut tonic::metadata::MetadataMap) {
    if !enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Metadata(md)));
}

/// The `traceparent` of `span` (for a NATS message), if tracing is on and it is sampled.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let sc = span.context().span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The trace id of `span` (for log lines), if tracing is on.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let sc = span.context().span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Links `span` to the trace of another (a commit shared by several requests links to each).
pub fn link(span: &tracing::Span, to: &tracing::Span) {
    if !enabled() {
        return;
    }
    let sc = to.context().span().span_context().clone();
    if sc.is_valid() {
        span.add_link(sc);
    }
}
