//! Telemetry shared by both services: logging set-up, the process's Prometheus recorder, the admin
//! listener that serves `/metrics` (never the public port), and the stop signal of the binaries.

mod grpc;
pub mod otel;
mod slotted;

use std::future::Future;
use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

pub use grpc::{code_of, code_of_error, GrpcMetrics, GrpcMetricsLayer};
pub use slotted::Slotted;

/// Histogram buckets, seconds: 100 µs … 5 s (base units, as Prometheus expects).
pub const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Installs the global log subscriber: `RUST_LOG` filters (default `info`), `LOG_FORMAT=json` for
/// structured logs, and OpenTelemetry spans exported over OTLP/gRPC when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (log lines then carry the request's `trace_id`). Call
/// once, from `main`; shut the returned exporter down on exit.
pub fn init_logging(service: &'static str) -> otel::Otel {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty());
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    init_subscriber(service, endpoint.as_deref(), filter, json, false)
}

/// [`init_logging`] for tests: logs to the test harness's capture, spans to `otlp_endpoint`.
pub fn init_test_logging_to(
    service: &'static str,
    otlp_endpoint: &str,
    filter: &str,
) -> otel::Otel {
    init_subscriber(
        service,
        Some(otlp_endpoint),
        EnvFilter::new(filter),
        false,
        true,
    )
}

fn init_subscriber(
    service: &'static str,
    otlp_endpoint: Option<&str>,
    filter: EnvFilter,
    json: bool,
    test_writer: bool,
) -> otel::Otel {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let fmt: Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync> = match (json, test_writer)
    {
        (true, _) => tracing_subscriber::fmt::layer().json().boxed(),
        (false, true) => tracing_subscriber::fmt::layer().with_test_writer().boxed(),
        (false, false) => tracing_subscriber::fmt::layer().with_target(true).boxed(),
    };
    let registry = tracing_subscriber::registry().with(fmt).with(filter);
    let (layer, exporter) = match otlp_endpoint.map(|e| otel::layer(service, e)) {
        Some(Ok((layer, exporter))) => (Some(layer), exporter),
        Some(Err(e)) => {
            eprintln!("{service}: tracing off: {e}");
            (None, otel::off())
        }
        None => (None, otel::off()),
    };
    let _ = registry.with(layer).try_init();
    exporter
}

/// Buckets of `taskboard_write_batch_size` (changes per commit, up to the task service's
/// largest `WRITE_BATCH_MAX` default).
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The process's Prometheus recorder, installed on first use. The `metrics` facade has one
/// recorder per process by design; when both services run in one process (tests), they share it.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .expect("static buckets are valid")
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full("taskboard_write_batch_size".into()),
                    BATCH_BUCKETS,
                )
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            handle
        })
        .clone()
}

/// The git commit this binary was built from (12 hex digits), or `unknown`.
pub const GIT_SHA: &str = env!("TASKBOARD_GIT_SHA");

/// Sets `taskboard_build_info{service, version, git_sha} 1`, and describes the gRPC metrics.
pub fn build_info(service: &'static str) {
    metrics::describe_gauge!(
        "taskboard_build_info",
        "Version and git commit of the running binary"
    );
    metrics::describe_counter!(
        "taskboard_grpc_server_requests_total",
        "gRPC calls served, by method and code"
    );
    metrics::describe_histogram!(
        "taskboard_grpc_server_request_duration_seconds",
        metrics::Unit::Seconds,
        "gRPC call handling time by method"
    );
    metrics::describe_counter!(
        "taskboard_grpc_client_requests_total",
        "gRPC calls made, by method and code"
    );
    metrics::describe_histogram!(
        "taskboard_grpc_client_request_duration_seconds",
        metrics::Unit::Seconds,
        "gRPC call time by method, as the caller sees it"
    );
    metrics::gauge!(
        "taskboard_build_info",
        "service" => service,
        "version" => env!("CARGO_PKG_VERSION"),
        "git_sha" => GIT_SHA,
    )
    .set(1.0);
}

/// Binds a listener on `bind_addr:port`. `::` (the default of both services) is dual-stack: one
/// socket answering on every IPv6 and IPv4 address, as the original did; on a host without IPv6 it
/// falls back to `0.0.0.0`.
///
/// # Errors
/// The address does not parse or cannot be bound.
pub async fn bind(bind_addr: &str, port: u16) -> std::io::Result<TcpListener> {
    let ip: std::net::IpAddr = bind_addr
        .trim_matches(|c| c == '[' || c == ']')
        .parse()
        .map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{bind_addr:?}: {e}"),
            )
        })?;
    if ip == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
        match dual_stack(port) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "no IPv6 here; listening on IPv4 only");
                return TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)).await;
            }
        }
    }
    TcpListener::bind((ip, port)).await
}

fn dual_stack(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    s.set_only_v6(false)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// Binds the admin (metrics) listener on `bind_addr:port`; port 0 means "no metrics listener".
///
/// # Errors
/// The port cannot be bound (the message names it and METRICS_PORT).
pub async fn bind_metrics(bind_addr: &str, port: u16) -> Result<Option<TcpListener>, String> {
    if port == 0 {
        return Ok(None);
    }
    bind(bind_addr, port)
        .await
        .map(Some)
        .map_err(|e| format!("cannot bind the metrics port {bind_addr}:{port} (METRICS_PORT): {e}"))
}

/// A secret given either as a value (`NAME`) or as a file (`NAME_FILE`, e.g. a mounted Kubernetes
/// secret; surrounding whitespace trimmed); `None` when neither is set.
///
/// # Errors
/// Both set, the file unreadable, or the secret empty (the message names the variable).
pub fn secret(
    value: Option<&str>,
    file: Option<&std::path::Path>,
    name: &str,
) -> Result<Option<String>, String> {
    let s = match (value, file) {
        (Some(_), Some(_)) => return Err(format!("set {name} or {name}_FILE, not both")),
        (Some(v), None) => v.trim().to_owned(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| format!("{name}_FILE {}: {e}", f.display()))?
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if s.is_empty() {
        return Err(format!("{name} is empty"));
    }
    Ok(Some(s))
}

/// Resolves on SIGINT or SIGTERM: the signal both binaries stop on.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let handle = handle.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&req, &handle)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn answer<B>(req: &Request<B>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found; try /metrics\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    handle.run_upkeep();
    let mut r = Response::new(Full::new(Bytes::from(handle.render())));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// Which end of a gRPC call a measurement is from.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    Server,
    Client,
}

/// The canonical name of a gRPC status code (`OK`, `NOT_FOUND`, …), as a label value.
pub fn code_name(code: tonic_code::Code) -> &'static str {
    use tonic_code::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// tonic's status codes, re-exported so callers name one type.
pub mod tonic_code {
    pub use tonic::Code;
}

/// Records one gRPC call: `taskboard_grpc_{server,client}_requests_total{method, code}` and
/// `taskboard_grpc_{server,client}_request_duration_seconds{method}`.
pub fn grpc(side: Side, method: &'static str, code: tonic::Code, elapsed: std::time::Duration) {
    let code = code_name(code);
    match side {
        Side::Server => {
            metrics::counter!("taskboard_grpc_server_requests_total", "method" => method, "code" => code)
                .increment(1);
            metrics::histogram!("taskboard_grpc_server_request_duration_seconds", "method" => method)
                .record(elapsed.as_secs_f64());
        }
        Side::Client => {
            metrics::counter!("taskboard_grpc_client_requests_total", "method" => method, "code" => code)
                .increment(1);
            metrics::histogram!("taskboard_grpc_client_request_duration_seconds", "method" => method)
                .record(elapsed.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_build_records_the_commit_it_was_built_from() {
        if std::env::var_os("GIT_SHA").is_some() {
            return; // set by whoever builds; nothing to compare with
        }
        let head = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        match head {
            // Built after the last commit or checkout: the same commit.
            Some(head) => assert_eq!(GIT_SHA, head, "build_info names a stale commit"),
            None => assert_eq!(GIT_SHA, "unknown"),
        }
    }

    #[tokio::test]
    async fn the_default_bind_address_is_dual_stack() {
        let l = bind("::", 0).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let accept = tokio::spawn(async move {
            for _ in 0..2 {
                l.accept().await.unwrap();
            }
        });
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("IPv4 loopback");
        match tokio::net::TcpStream::connect(("::1", port)).await {
            Ok(_) => accept.await.unwrap(),
            // A host without IPv6 (bind fell back to IPv4 only).
            Err(e) => assert!(
                std::net::TcpListener::bind("[::1]:0").is_err(),
                "::1 exists but the dual-stack listener refused it: {e}"
            ),
        }
    }

    use super::*;

    #[test]
    fn code_names_are_the_canonical_ones() {
        assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(tonic::Code::Ok), "OK");
    }

    #[test]
    fn buckets_resolve_100_microseconds_to_5_seconds() {
        assert_eq!(BUCKETS.first(), Some(&0.0001));
        assert_eq!(BUCKETS.last(), Some(&5.0));
        assert!(BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }
}
