//! Gateway configuration: the Go original's environment variables, each also a flag, and their checks
//! (here); what the authentication settings turn into (`auth`: verifier, service token, CORS, rate
//! limits). May use `auth` for the types it builds; everything else reads `Config`.
use std::time::Duration;

use clap::Parser;

mod auth;

pub const DEFAULT_HTTP_PORT: u16 = 8080;
pub const DEFAULT_METRICS_PORT: u16 = 9090;
pub const DEFAULT_TASK_SERVICE_ADDR: &str = "localhost:50051";
pub const DEFAULT_NATS_URL: &str = "nats://localhost:4222";
/// Per-connection event queue. The original buffered 256 messages per client; a client further
/// behind than this is closed with 1013 and resumes with `since`.
pub const DEFAULT_WS_QUEUE: usize = 256;
pub const DEFAULT_WS_DIRECT_BUDGET_US: u64 = 2_000;
pub const DEFAULT_WS_DEFLATE_MIN_BYTES: usize = 64;
pub const DEFAULT_CREATE_CALLS: usize = 4;
pub const DEFAULT_CREATE_BATCH_MAX: usize = 64;
/// 200 creates of at most a request body each (64 KiB) stay under the gRPC message limit.
const MOST_CREATES_PER_CALL: usize = 200;

/// Configuration of `taskboard-gateway`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "taskboard-gateway",
    version,
    about = "Taskboard gateway: REST API over the task service, live events over WebSocket",
    long_about = "Taskboard gateway.\n\nServes the REST API (/api/tasks...), /health, /ready and the \
WebSocket feed /ws?board_id=B&since=S. Task calls go to the task service over gRPC, with deadlines; \
events arrive from NATS (each watched board's board.<prefix>.<id>.*) and are fanned out to WebSocket clients in per-board seq order, \
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

    /// Admin port reserved for /metrics (kept off the public port); 0 turns it off.
    #[arg(long, env = "METRICS_PORT", default_value_t = DEFAULT_METRICS_PORT)]
    pub metrics_port: u16,

    /// Address the metrics port binds; loopback by default (`::` for a Prometheus elsewhere).
    #[arg(long, env = "METRICS_BIND_ADDR", default_value = "127.0.0.1")]
    pub metrics_bind_addr: String,

    /// `on`: the API and /ws need a bearer JWT (Authorization header; browsers offer it as the
    /// `bearer.<jwt>` WebSocket subprotocol) and users see only the boards they are members of.
    /// `off`: everyone may do everything, as in the original (development only; logged at start
    /// and shown by /ready).
    #[arg(long, env = "AUTH", default_value = "on", value_parser = ["on", "off"])]
    pub auth: String,

    /// HS256 secret tokens are signed with (at least 32 characters; development and small setups).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// A file holding JWT_SECRET (a mounted secret), instead of the variable.
    #[arg(long, env = "JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<std::path::PathBuf>,

    /// The identity provider's public key in PEM (RSA: RS256/384/512, PS*; EC: ES256/ES384).
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,

    /// A JWKS document (the provider's `jwks_uri`, saved to a file or a ConfigMap); keys are
    /// picked by the token's `kid`.
    #[arg(long, env = "JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<std::path::PathBuf>,

    /// The identity provider's JWKS address (http or https): keys fetched at start and cached as
    /// its Cache-Control says, refetched when a token names an unknown `kid` (at most every
    /// 10 s). Unset with JWT_ISSUER and no other key: found by OIDC discovery
    /// (`<JWT_ISSUER>/.well-known/openid-configuration`).
    #[arg(long, env = "JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,

    /// How long the last keys fetched stay in use while the provider cannot be reached, seconds;
    /// past it tokens are refused (a key the provider withdrew is not trusted forever).
    #[arg(long, env = "JWT_JWKS_MAX_STALE_SECS", default_value_t = 86_400)]
    pub jwt_jwks_max_stale_secs: u64,

    /// The least time fetched keys are kept before the scheduled refetch, seconds (1 to 86400),
    /// whatever the provider's Cache-Control asks (`no-cache`, `max-age=0`): the provider is
    /// asked at most this often on schedule. A new `kid` is fetched sooner (at most every 10 s).
    #[arg(long, env = "JWT_JWKS_MIN_FRESH_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub jwt_jwks_min_fresh_secs: u64,

    /// CA certificates (PEM) to trust for the identity provider's HTTPS besides the system's
    /// (a provider behind a private CA). The system's store also honours SSL_CERT_FILE.
    #[arg(long, env = "JWT_JWKS_CA_FILE")]
    pub jwt_jwks_ca_file: Option<std::path::PathBuf>,

    /// The `aud` tokens must carry.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "taskboard")]
    pub jwt_audience: String,

    /// The `iss` tokens must carry; unset = not checked.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Clock skew allowed on `exp` and `nbf`, seconds.
    #[arg(long, env = "JWT_LEEWAY_SECS", default_value_t = 30)]
    pub jwt_leeway_secs: u64,

    /// The token this gateway presents to the task service (the task service's SERVICE_TOKEN).
    #[arg(long, env = "SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<String>,

    /// A file holding SERVICE_TOKEN, instead of the variable.
    #[arg(long, env = "SERVICE_TOKEN_FILE")]
    pub service_token_file: Option<std::path::PathBuf>,

    /// Task service address, host:port (or an http:// URL); a comma list of replicas spreads the
    /// calls over them and leaves out one that is down.
    #[arg(long, env = "TASK_SERVICE_ADDR", default_value = DEFAULT_TASK_SERVICE_ADDR)]
    pub task_service_addr: String,

    /// Deadline of every gRPC call to the task service.
    #[arg(long, env = "GRPC_TIMEOUT_MS", default_value_t = 5000)]
    pub grpc_timeout_ms: u64,

    /// Consecutive task-service calls without an answer (UNAVAILABLE or past the deadline) after
    /// which the gateway stops calling it for BREAKER_OPEN_MS and answers 503 with Retry-After at
    /// once; then one probe call at a time tries again. 0 turns the breaker off.
    #[arg(long, env = "BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,

    /// How long the breaker stays open before a probe call may try the task service again.
    #[arg(long, env = "BREAKER_OPEN_MS", default_value_t = 2000)]
    pub breaker_open_ms: u64,

    /// Creates in flight to the task service at once, each in a call of its own; creates that
    /// arrive while that many are out wait and go together, as one CreateTasks call, when one
    /// returns (so under load one gRPC call serves many creates, and an idle gateway adds no
    /// delay). 0: every create its own call, however many.
    #[arg(long, env = "CREATE_CALLS", default_value_t = DEFAULT_CREATE_CALLS)]
    pub create_calls: usize,

    /// Most creates in one CreateTasks call (1 to 200).
    #[arg(long, env = "CREATE_BATCH_MAX", default_value_t = DEFAULT_CREATE_BATCH_MAX)]
    pub create_batch_max: usize,

    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS_URL)]
    pub nats_url: String,

    /// First token of the event subjects (`board.<prefix>.<id>.<kind>`).
    #[arg(long, env = "NATS_SUBJECT_PREFIX", default_value = "tasks")]
    pub nats_subject_prefix: String,

    /// `board`: subscribe to a board's events (and presence) only while a WebSocket client here
    /// watches it, so each gateway receives only its own boards' events; an all-boards client adds
    /// one subscription to every board. `wildcard`: everything under the prefix, always (in front
    /// of a task service that publishes only the original's `<prefix>.<kind>`, such as the Go
    /// original or one from before per-board subjects).
    #[arg(long, env = "NATS_SUBSCRIBE", default_value = "board", value_parser = ["board", "wildcard"])]
    pub nats_subscribe: String,

    /// How long a board's subscription is kept after its last client here left (a page that
    /// reloads or reconnects does not make the gateway unsubscribe and subscribe again).
    #[arg(long, env = "NATS_UNSUBSCRIBE_LINGER_MS", default_value_t = 5000)]
    pub nats_unsubscribe_linger_ms: u64,

    /// Other browser origins allowed to call the API and open /ws, comma-separated (the page's
    /// own origin always is). Unset: none with AUTH=on, any (`*`, as the original) with AUTH=off.
    #[arg(long, env = "CORS_ORIGINS", default_value = "")]
    pub cors_origins: String,

    /// Events queued per WebSocket connection before it counts as too slow (closed with 1013).
    #[arg(long, env = "WS_QUEUE", default_value_t = DEFAULT_WS_QUEUE)]
    pub ws_queue: usize,

    /// How long the fan-out of one event may spend writing frames to idle connections' sockets
    /// itself (one wake-up per event instead of one per connection) before it hands the rest to
    /// the connections' own tasks, which then run on every core. 0 always hands over.
    #[arg(long, env = "WS_DIRECT_BUDGET_US", default_value_t = DEFAULT_WS_DIRECT_BUDGET_US)]
    pub ws_direct_budget_us: u64,

    /// WebSocket compression (permessage-deflate, RFC 7692, without context takeover): offered
    /// to clients that ask (browsers do). Each event is compressed once, whatever the number of
    /// clients that negotiated it; events smaller than WS_DEFLATE_MIN_BYTES go out plain.
    #[arg(long, env = "WS_DEFLATE", default_value = "on", value_parser = ["on", "off"])]
    pub ws_deflate: String,

    /// Smallest event payload (bytes) worth compressing.
    #[arg(long, env = "WS_DEFLATE_MIN_BYTES", default_value_t = DEFAULT_WS_DEFLATE_MIN_BYTES)]
    pub ws_deflate_min_bytes: usize,

    /// Interval between server pings; a client that has not answered the previous ping by the
    /// next one is dropped.
    #[arg(long, env = "WS_PING_INTERVAL_MS", default_value_t = 30_000)]
    pub ws_ping_interval_ms: u64,

    /// A write that cannot complete in this time drops the connection.
    #[arg(long, env = "WS_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub ws_write_timeout_ms: u64,

    /// Presence (who is viewing a board, over the WebSocket): how long a gateway's announcement of
    /// its viewers holds; each gateway repeats its own every third of this, so the viewers of a
    /// gateway that died vanish within it. 0 turns presence off.
    #[arg(long, env = "PRESENCE_TTL_MS", default_value_t = 15_000)]
    pub presence_ttl_ms: u64,

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

    /// Replay page reads (resumes with `since`) in flight at once; more resumers wait their turn.
    /// Each page is at most 100 events and 256 KiB, so a resumer that stops reading holds at most
    /// one page.
    #[arg(long, env = "MAX_REPLAYS", default_value_t = 32)]
    pub max_replays: usize,

    /// Rate limit per client address: API calls and WebSocket attempts per second (0 = off). The
    /// service role is exempt. Over it: 429 with Retry-After.
    #[arg(long, env = "RATE_ADDRESS_PER_SEC", default_value_t = 100)]
    pub rate_address_per_sec: u32,

    /// Burst allowed above RATE_ADDRESS_PER_SEC (the bucket size).
    #[arg(long, env = "RATE_ADDRESS_BURST", default_value_t = 500)]
    pub rate_address_burst: u32,

    /// Rate limit per user on creates, updates and deletes, per second (0 = off).
    #[arg(long, env = "RATE_USER_WRITES_PER_SEC", default_value_t = 20)]
    pub rate_user_writes_per_sec: u32,

    /// Burst allowed above RATE_USER_WRITES_PER_SEC.
    #[arg(long, env = "RATE_USER_WRITES_BURST", default_value_t = 100)]
    pub rate_user_writes_burst: u32,

    /// Rate limit per user on WebSocket connects and resumes, per second (0 = off).
    #[arg(long, env = "RATE_USER_CONNECTS_PER_SEC", default_value_t = 2)]
    pub rate_user_connects_per_sec: u32,

    /// Burst allowed above RATE_USER_CONNECTS_PER_SEC.
    #[arg(long, env = "RATE_USER_CONNECTS_BURST", default_value_t = 30)]
    pub rate_user_connects_burst: u32,

    /// On SIGTERM, how long in-flight requests get to finish before connections are dropped.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 25)]
    pub shutdown_grace_secs: u64,
}

impl Config {
    /// Config for tests and embedding: the defaults with the given task service and NATS, with
    /// AUTH=off and no rate limits (set `auth`, a key, `service_token` and the `rate_*` fields to
    /// test them). Reads no environment variable.
    pub fn for_addrs(task_service_addr: &str, nats_url: &str) -> Self {
        Config {
            http_port: DEFAULT_HTTP_PORT,
            bind_addr: "127.0.0.1".into(),
            metrics_port: DEFAULT_METRICS_PORT,
            metrics_bind_addr: "127.0.0.1".into(),
            auth: "off".into(),
            jwt_secret: None,
            jwt_secret_file: None,
            jwt_public_key_file: None,
            jwt_jwks_file: None,
            jwt_jwks_url: None,
            jwt_jwks_max_stale_secs: 86_400,
            jwt_jwks_min_fresh_secs: 30,
            jwt_jwks_ca_file: None,
            jwt_audience: "taskboard".into(),
            jwt_issuer: None,
            jwt_leeway_secs: 30,
            service_token: None,
            service_token_file: None,
            task_service_addr: task_service_addr.to_owned(),
            grpc_timeout_ms: 5000,
            breaker_failures: 5,
            breaker_open_ms: 2000,
            create_calls: DEFAULT_CREATE_CALLS,
            create_batch_max: DEFAULT_CREATE_BATCH_MAX,
            nats_url: nats_url.to_owned(),
            nats_subject_prefix: "tasks".into(),
            nats_subscribe: "board".into(),
            nats_unsubscribe_linger_ms: 5000,
            cors_origins: String::new(),
            ws_queue: DEFAULT_WS_QUEUE,
            ws_direct_budget_us: DEFAULT_WS_DIRECT_BUDGET_US,
            ws_deflate: "on".into(),
            ws_deflate_min_bytes: DEFAULT_WS_DEFLATE_MIN_BYTES,
            ws_ping_interval_ms: 30_000,
            ws_write_timeout_ms: 10_000,
            ws_send_buffer: None,
            event_check_interval_ms: 2000,
            presence_ttl_ms: 15_000,
            body_timeout_ms: 15_000,
            max_connections: 0,
            max_websockets: 0,
            max_replays: 32,
            rate_address_per_sec: 0,
            rate_address_burst: 0,
            rate_user_writes_per_sec: 0,
            rate_user_writes_burst: 0,
            rate_user_connects_per_sec: 0,
            rate_user_connects_burst: 0,
            shutdown_grace_secs: 25,
        }
    }

    /// The task service endpoint(s) as URIs, comma-separated.
    pub fn task_service_uri(&self) -> String {
        self.task_service_addr
            .split(',')
            .map(str::trim)
            .map(|a| {
                if a.contains("://") {
                    a.to_owned()
                } else {
                    format!("http://{a}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
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
        if !(1..=MOST_CREATES_PER_CALL).contains(&self.create_batch_max) {
            return Err(crate::Error::Config(format!(
                "CREATE_BATCH_MAX must be 1 to {MOST_CREATES_PER_CALL}, got {}",
                self.create_batch_max
            )));
        }
        if self.ws_ping_interval_ms == 0 {
            return Err(crate::Error::Config(
                "WS_PING_INTERVAL_MS must be at least 1".into(),
            ));
        }
        for uri in self.task_service_uri().split(',') {
            uri.parse::<http::Uri>().map_err(|e| {
                crate::Error::Config(format!("invalid TASK_SERVICE_ADDR {uri:?}: {e}"))
            })?;
        }
        self.verifier()?;
        self.service_token()?;
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
        let mut c = Config::for_addrs("http://tasks:1", "nats://n");
        assert_eq!(c.task_service_uri(), "http://tasks:1");
        c.task_service_addr = "tasks-0:50051, http://tasks-1:50051".into();
        assert_eq!(
            c.task_service_uri(),
            "http://tasks-0:50051,http://tasks-1:50051"
        );
        assert!(c.validate().is_ok());
    }

    #[test]
    fn zero_queue_is_rejected() {
        let mut c = Config::for_addrs("tasks:50051", "nats://n");
        c.ws_queue = 0;
        assert!(c.validate().unwrap_err().to_string().contains("WS_QUEUE"));
    }
}
