//! Test support shared by the integration tests of both services: a fresh database per test on
//! the real PostgreSQL, the real NATS, and the task service spawned on port 0.
//!
//! `TASKBOARD_TEST_PG` (an admin URL, default `postgres://postgres@127.0.0.1:5432/postgres`) and
//! `TASKBOARD_TEST_NATS` (default `nats://127.0.0.1:4222`) say where they are; `scripts/test.sh`
//! sets both, starting private servers when the usual ones are not reachable.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Config, Error};

mod nats;
mod postgres;
mod proxy;

pub use nats::{NatsCluster, PrivateNats};
pub use postgres::PostgresPair;
pub use proxy::TcpProxy;

/// Service logs for tests, captured per test by the harness and shown when a test fails:
/// warnings and errors by default, `TEST_LOG=<filter>` (e.g. `TEST_LOG=debug`) for more. Safe to
/// call from every test; only the first call installs it.
pub fn init_test_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    });
}

/// Admin URL of the test PostgreSQL server.
pub fn pg_admin_url() -> String {
    std::env::var("TASKBOARD_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// URL of the test NATS server.
pub fn nats_url() -> String {
    std::env::var("TASKBOARD_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A name no other test (in this or a parallel process) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates an empty database named `tb_t_…` and returns its URL.
///
/// # Panics
/// The test server is unreachable (the message says how to point the tests at one).
pub async fn fresh_database() -> String {
    let admin = pg_admin_url();
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot reach test PostgreSQL at {admin} ({e}); run scripts/test.sh or set TASKBOARD_TEST_PG")
        });
    let driver = tokio::spawn(conn);
    let name = unique("tb_t");
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    drop(client);
    let _ = driver.await;
    let mut cfg: tokio_postgres::Config = admin.parse().expect("admin URL");
    cfg.dbname(&name);
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let user = cfg.get_user().unwrap_or("postgres").to_owned();
    format!("postgres://{user}@{host}:{port}/{name}")
}

/// A task service running in this process.
pub struct TasksHandle {
    pub addr: SocketAddr,
    /// The admin listener serving `/metrics`.
    pub metrics_addr: SocketAddr,
    pub database_url: String,
    pub subject_prefix: String,
    stop: Option<oneshot::Sender<()>>,
    pub join: JoinHandle<Result<(), Error>>,
}

impl TasksHandle {
    /// The `host:port` a gateway should use.
    pub fn grpc_addr(&self) -> String {
        self.addr.to_string()
    }

    /// Sends the shutdown signal and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), Error> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.join.await.expect("task service panicked")
    }
}

/// A config for a fresh database, the test NATS and a unique subject prefix (so parallel tests
/// never see each other's events).
pub async fn test_config() -> Config {
    let mut c = Config::for_urls(&fresh_database().await, &nats_url());
    c.nats_subject_prefix = unique("tbt");
    c.relay_poll_interval_ms = 200;
    c.shutdown_grace_secs = 5;
    c
}

/// Runs the task service with `config` on a port-0 listener.
pub async fn spawn_tasks(config: Config) -> TasksHandle {
    init_test_logging();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_addr = admin.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let database_url = config.database_url.clone().unwrap_or_default();
    let subject_prefix = config.nats_subject_prefix.clone();
    let join = tokio::spawn(crate::run_with_metrics(
        config,
        listener,
        Some(admin),
        async {
            let _ = rx.await;
        },
    ));
    TasksHandle {
        addr,
        metrics_addr,
        database_url,
        subject_prefix,
        stop: Some(tx),
        join,
    }
}

/// Polls until `f` holds, for at most `within`; returns whether it did (for tests that wait on an
/// outcome instead of sleeping).
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound and released at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The `host:port` of a URL such as `nats://127.0.0.1:4222` or `postgres://u@h:5432/db`.
pub fn socket_addr_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hostport = rest.split(['/', '?']).next().unwrap_or(rest);
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport
        .parse()
        .unwrap_or_else(|e| panic!("{url}: not host:port ({e})"))
}
