//! Test support shared by the integration tests of both services: a fresh database per test on
//! the real PostgreSQL, the real NATS, and the task service spawned on port 0.
//!
//! `TASKBOARD_TEST_PG` (an admin URL, default `postgres://postgres@127.0.0.1:5432/postgres`) and
//! `TASKBOARD_TEST_NATS` (default `nats://127.0.0.1:4222`) say where they are; `scripts/test.sh`
//! sets both, starting private servers when the usual ones are not reachable.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Config, Error};

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
