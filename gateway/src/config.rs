//! Gateway configuration: the Go original's environment variables, each also a flag.
use std::time::Duration;

use clap::Parser;

pub const DEFAULT_HTTP_PORT: u16 = 8080;
pub const DEFAULT_METRICS_PORT: u16 = 9090;
pub const DEFAULT_TASK_SERVICE_ADDR: &str = "localhost:50051";
pub const DEFAULT_NATS_URL: &str = "nats://localhost:4222";
/// Per-connection event queue. The original buffered 256 messages per client; a client further
/// behind than this is closed with 1013 and resumes with `since`.
pub const DEFAULT_WS_QUEUE: usize = 256;

/// Configuration of `taskboard-gateway`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "taskboard-gateway",
    version,
    about = "Taskboard gateway: REST API over the task service, live events over WebSocket",
    long_about = "Taskboard gateway.\n\nServes the REST API (/api/tasks...), /health, /ready and the \
WebSocket feed /ws?board_id=B&since=S. Task calls go to the task service over gRPC, with deadlines; \
events arrive from NATS (<prefix>.>) and are fanned out to WebSocket clients in per-board seq order, \
gaps filled from the task service. Starts even when the task service or NATS is not up yet: /ready \
answers 503 until both are reachable."
)]
pub struct Config {
    /// HTTP listen port (REST, WebSocket, health).
    #[arg(long, env = "HTTP_PORT", default_value_t = DEFAULT_HTTP_PORT)]
    pub http_port: u16,

    /// Address to bind; `::` (the default) answers on every IPv6 and IPv4 address.
    #[arg(long, env = "BIND_ADDR", default_value = "::")]
    pub bind_addr: String,

    /// Admin port reserved for /metrics (kept off the public port).
    #[arg(long, env = "METRICS_PORT", default_value_t = DEFAULT_METRICS_PORT)]
    pub metrics_port: u16,

    /// Task service address, host:port (or an http:// URL).
    #[arg(long, env = "TASK_SERVICE_ADDR", default_value = DEFAULT_TASK_SERVICE_ADDR)]
    pub task_service_addr: String,

    /// Deadline of every gRPC call to the task service.
    #[arg(long, env = "GRPC_TIMEOUT_MS", default_value_t = 5000)]
    pub grpc_timeout_ms: u64,

    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS_URL)]
    pub nats_url: String,

    /// First token of the event subjects; the gateway subscribes `<prefix>.>`.
    #[arg(long, env = "NATS_SUBJECT_PREFIX", default_value = "tasks")]
    pub nats_subject_prefix: String,

    /// Allowed browser origins for CORS and WebSocket, comma-separated; `*` (the default, as the
    /// original) allows any.
    #[arg(long, env = "CORS_ORIGINS", default_value = "*")]
    pub cors_origins: String,

    /// Events queued per WebSocket connection before it counts as too slow (closed with 1013).
    #[arg(long, env = "WS_QUEUE", default_value_t = DEFAULT_WS_QUEUE)]
    pub ws_queue: usize,

    /// Interval between server pings; a client that has not answered the previous ping by the
    /// next one is dropped.
    #[arg(long, env = "WS_PING_INTERVAL_MS", default_value_t = 30_000)]
    pub ws_ping_interval_ms: u64,

    /// A write that cannot complete in this time drops the connection.
    #[arg(long, env = "WS_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub ws_write_timeout_ms: u64,

    /// How often the heads of watched boards are checked against what arrived over NATS: an
    /// event lost on the way (a NATS hiccup nobody noticed) reaches subscribers within two of
    /// these.
    #[arg(long, env = "EVENT_CHECK_INTERVAL_MS", default_value_t = 2000)]
    pub event_check_interval_ms: u64,

    /// Kernel send buffer per WebSocket connection (SO_SNDBUF), bytes; unset = kernel autotuning.
    /// Smaller values cut memory per idle connection and surface slow clients sooner.
    #[arg(long, env = "WS_SEND_BUFFER")]
    pub ws_send_buffer: Option<usize>,

    /// Most client sockets open at once (HTTP and WebSocket); more are answered 503 and closed.
    /// 0 = the descriptor limit less a reserve of 512.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Most WebSockets open at once; more are answered 503 before the upgrade. 0 = MAX_CONNECTIONS
    /// less 256, so REST and health checks are still answered when WebSockets are at their cap.
    #[arg(long, env = "MAX_WEBSOCKETS", default_value_t = 0)]
    pub max_websockets: usize,

    /// Deadline for receiving a whole request body once its headers are in (the original's read
    /// timeout); a client that stalls gets 408.
    #[arg(long, env = "BODY_TIMEOUT_MS", default_value_t = 15_000)]
    pub body_timeout_ms: u64,

    /// On SIGTERM, how long in-flight requests get to finish before connections are dropped.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 25)]
    pub shutdown_grace_secs: u64,
}

impl Config {
    /// Config for tests and embedding: the defaults with the given task service and NATS. Reads no
    /// environment variable.
    pub fn for_addrs(task_service_addr: &str, nats_url: &str) -> Self {
        Config {
            http_port: DEFAULT_HTTP_PORT,
            bind_addr: "127.0.0.1".into(),
            metrics_port: DEFAULT_METRICS_PORT,
            task_service_addr: task_service_addr.to_owned(),
            grpc_timeout_ms: 5000,
            nats_url: nats_url.to_owned(),
            nats_subject_prefix: "tasks".into(),
            cors_origins: "*".into(),
            ws_queue: DEFAULT_WS_QUEUE,
            ws_ping_interval_ms: 30_000,
            ws_write_timeout_ms: 10_000,
            ws_send_buffer: None,
            event_check_interval_ms: 2000,
            body_timeout_ms: 15_000,
            max_connections: 0,
            max_websockets: 0,
            shutdown_grace_secs: 25,
        }
    }

    /// The task service endpoint as a URI.
    pub fn task_service_uri(&self) -> String {
        if self.task_service_addr.contains("://") {
            self.task_service_addr.clone()
        } else {
            format!("http://{}", self.task_service_addr)
        }
    }

    pub fn grpc_timeout(&self) -> Duration {
        Duration::from_millis(self.grpc_timeout_ms.max(1))
    }

    /// Checks what clap cannot.
    ///
    /// # Errors
    /// A value out of range, with the reason.
    pub fn validate(&self) -> Result<(), crate::Error> {
        if self.ws_queue == 0 {
            return Err(crate::Error::Config("WS_QUEUE must be at least 1".into()));
        }
        if self.ws_ping_interval_ms == 0 {
            return Err(crate::Error::Config(
                "WS_PING_INTERVAL_MS must be at least 1".into(),
            ));
        }
        self.task_service_uri()
            .parse::<http::Uri>()
            .map_err(|e| crate::Error::Config(format!("invalid TASK_SERVICE_ADDR: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_host_port_becomes_an_http_uri() {
        let c = Config::for_addrs("tasks:50051", "nats://n");
        assert_eq!(c.task_service_uri(), "http://tasks:50051");
        let c = Config::for_addrs("http://tasks:1", "nats://n");
        assert_eq!(c.task_service_uri(), "http://tasks:1");
    }

    #[test]
    fn zero_queue_is_rejected() {
        let mut c = Config::for_addrs("tasks:50051", "nats://n");
        c.ws_queue = 0;
        assert!(c.validate().unwrap_err().to_string().contains("WS_QUEUE"));
    }
}
