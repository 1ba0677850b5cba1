//! Taskboard task service: `task.v1` over gRPC, PostgreSQL storage with a transactional outbox,
//! and a relay that publishes committed events to NATS.

pub mod access;
pub mod config;
pub mod db;
mod error;
pub mod gate;
mod incoming;
pub mod outbox;
pub mod service;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod validate;
pub mod writer;

use std::future::Future;
use std::time::Duration;

use taskboard_proto::v1::task_service_server::TaskServiceServer;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::interceptor::InterceptedService;

pub use config::Config;
pub use error::Error;

/// Committed batches waiting for the relay to publish them; beyond this they wait for its scan.
const COMMITTED_QUEUE: usize = 1024;
/// How long start-up keeps retrying an unreachable database before giving up.
const DB_STARTUP_PATIENCE: Duration = Duration::from_secs(30);
/// How often the health service re-checks the database while it answers (one empty query on the
/// probe's own connection).
const HEALTH_PROBE_EVERY: Duration = Duration::from_secs(1);
/// How often it re-checks while the database is down (calls fail fast meanwhile, so recovery
/// should be noticed soon).
const HEALTH_PROBE_WHILE_DOWN: Duration = Duration::from_millis(250);
/// How long one probe may take before the database counts as unreachable.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs the task service on `listener` until `shutdown` resolves, then drains within the grace
/// period.
///
/// # Errors
/// Bad configuration, a database that stays unreachable at start-up, a failed migration, or a
/// transport failure.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    run_with_metrics(config, listener, None, shutdown).await
}

/// [`run`], also serving Prometheus metrics at `/metrics` on `metrics` (the admin listener).
///
/// # Errors
/// As [`run`].
pub async fn run_with_metrics(
    config: Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let pg = config.pg_config()?;
    let service_token = config.service_token()?;
    if service_token.is_none() {
        tracing::warn!(
            "AUTH=off: anyone who can reach the gRPC port may read and change every board \
             (development only)"
        );
    }
    let access = access::Access::new(service_token.as_deref());
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    if let Some(admin) = metrics_listener {
        let handle = taskboard_telemetry::prometheus();
        taskboard_telemetry::build_info("tasks");
        describe_metrics();
        tracing::info!(addr = %admin.local_addr()?, "metrics at /metrics");
        tracker.spawn(taskboard_telemetry::serve_metrics(
            admin,
            handle,
            token.clone().cancelled_owned(),
        ));
    }
    if let Err(e) = migrate_with_retry(&pg).await {
        token.cancel();
        return Err(e);
    }
    let pool = db::pool(
        pg.clone(),
        config.db_pool_size,
        Duration::from_millis(config.db_acquire_timeout_ms),
    );
    let nats = connect_nats(&config.nats_url).await?;

    let (wake_tx, wake_rx) = watch::channel(0u64);
    let (committed_tx, committed_rx) = tokio::sync::mpsc::channel(COMMITTED_QUEUE);
    let writer = writer::Writer::spawn(
        pool.clone(),
        committed_tx.clone(),
        config.write_batch_max,
        &tracker,
    );
    let poll = Duration::from_millis(config.relay_poll_interval_ms.max(10));

    tracker.spawn(
        outbox::Relay {
            pool: pool.clone(),
            pg: pg.clone(),
            nats: nats.clone(),
            subject_prefix: config.nats_subject_prefix.clone(),
            legacy_subjects: config.nats_legacy_subjects == "on",
            poll,
            retention: Duration::from_secs(config.event_retention_secs),
            wake: wake_tx,
            committed: committed_rx,
            shutdown: token.clone(),
        }
        .run(),
    );

    let gate = gate::DbGate::default();
    let svc = service::Service {
        pool: pool.clone(),
        writer,
        committed: committed_tx,
        wake: wake_rx,
        shutdown: token.clone(),
        tracker: tracker.clone(),
        gate: gate.clone(),
    };

    let (health, health_svc) = tonic_health::server::health_reporter();
    tracker.spawn(probe_health(
        health.clone(),
        pool.clone(),
        pg.clone(),
        gate,
        token.clone(),
    ));

    // Both reflection versions: grpcurl and Python's grpcio-reflection still speak v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(taskboard_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;

    let addr = listener.local_addr()?;
    tracing::info!(%addr, "task service listening (gRPC)");

    // The signal cancels long-lived streams at once (so graceful shutdown is not held up by them)
    // and starts the grace clock.
    let started = std::sync::Arc::new(Notify::new());
    let on_signal = {
        let token = token.clone();
        let started = started.clone();
        let health = health.clone();
        async move {
            shutdown.await;
            tracing::info!("shutdown: no longer accepting; finishing in-flight calls");
            health
                .set_not_serving::<TaskServiceServer<service::Service>>()
                .await;
            token.cancel();
            started.notify_one();
        }
    };
    let keepalive =
        (config.grpc_keepalive_secs > 0).then(|| Duration::from_secs(config.grpc_keepalive_secs));
    let serve = tonic::transport::Server::builder()
        // With tracing on, each call is a span continuing the caller's trace (`traceparent`).
        .trace_fn(|req| {
            if !taskboard_telemetry::otel::enabled() {
                return tracing::Span::none();
            }
            let span = tracing::info_span!(
                "grpc",
                rpc = %req.uri().path(),
                trace_id = tracing::field::Empty
            );
            taskboard_telemetry::otel::continue_from(&span, req.headers());
            if let Some(id) = taskboard_telemetry::otel::trace_id(&span) {
                span.record("trace_id", id);
            }
            span
        })
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(config.max_streams_per_connection.max(1))
        .tcp_nodelay(true)
        // Every call counted and timed by method and code, whatever the RPC.
        .layer(taskboard_telemetry::GrpcMetricsLayer::new(
            taskboard_telemetry::Side::Server,
            taskboard_proto::method_of,
        ))
        // Health stays open (probes carry no token); everything else needs the service token.
        .add_service(health_svc)
        .add_service(InterceptedService::new(reflection_v1, access.clone()))
        .add_service(InterceptedService::new(reflection_v1alpha, access.clone()))
        .add_service(InterceptedService::new(
            TaskServiceServer::new(svc)
                .max_decoding_message_size(taskboard_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(taskboard_proto::MAX_MESSAGE_BYTES),
            access,
        ))
        .serve_with_incoming_shutdown(
            incoming::guarded(
                listener,
                max_connections(config.max_connections),
                Duration::from_millis(config.handshake_timeout_ms.max(1)),
                &tracker,
                token.clone(),
            ),
            on_signal,
        );

    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let result = tokio::select! {
        r = serve => r.map_err(Error::from),
        _ = async { started.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "shutdown grace period over; dropping remaining calls");
            Ok(())
        }
    };
    token.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("background tasks did not stop within the grace period");
    }
    if let Err(e) = tokio::time::timeout(Duration::from_secs(2), nats.flush()).await {
        tracing::warn!(error = %e, "NATS flush at shutdown timed out");
    }
    tracing::info!("task service stopped");
    result
}

async fn migrate_with_retry(pg: &tokio_postgres::Config) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + DB_STARTUP_PATIENCE;
    let mut delay = Duration::from_millis(100);
    loop {
        match db::migrate(pg).await {
            Ok(()) => return Ok(()),
            Err(e @ (Error::Migration { .. } | Error::MigrationEdited { .. })) => return Err(e),
            Err(e) if tokio::time::Instant::now() + delay > deadline => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, ?delay, "database not ready; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Connects to NATS in the background (start-up does not wait for it) and reconnects forever.
///
/// # Errors
/// The URL does not parse.
pub async fn connect_nats(urls: &str) -> Result<async_nats::Client, Error> {
    taskboard_proto::nats::connect("taskboard-tasks", urls, |ev| async move {
        tracing::info!(event = %ev, "NATS event");
    })
    .await
    .map_err(|e| match e {
        taskboard_proto::nats::ConnectError::BadUrl(m) => {
            Error::Config(format!("invalid NATS_URL {m}"))
        }
        other => Error::Nats(other.to_string()),
    })
}

/// The gRPC connection cap: as configured, or the descriptor limit less a reserve of 512.
fn max_connections(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok())
        })
        .map_or(10_000, |n| n.saturating_sub(512))
        .max(64)
}

/// Keeps the gRPC health status and the fail-fast gate in step with the database: NOT_SERVING
/// (and calls answered UNAVAILABLE at once) while it is unreachable.
async fn probe_health(
    health: tonic_health::server::HealthReporter,
    pool: db::Pool,
    pg: tokio_postgres::Config,
    gate: gate::DbGate,
    token: CancellationToken,
) {
    let mut serving = None;
    // The probe's own connection (reopened when it fails), so a saturated pool never reads as a
    // dead database.
    let mut conn: Option<tokio_postgres::Client> = None;
    loop {
        let ok = tokio::time::timeout(HEALTH_PROBE_TIMEOUT, async {
            if conn.as_ref().is_none_or(|c| c.is_closed()) {
                let (client, connection) = db::connect(&pg).await.ok()?;
                tokio::spawn(connection);
                conn = Some(client);
            }
            conn.as_ref()?.simple_query("").await.ok()
        })
        .await
        .ok()
        .flatten()
        .is_some();
        if !ok {
            conn = None;
        }
        if gate.set(ok) {
            if ok {
                tracing::info!("database reachable again: serving calls");
            } else {
                tracing::warn!("database unreachable: calls fail fast until it is back");
            }
        }
        let st = pool.state();
        metrics::gauge!("taskboard_db_pool_connections", "state" => "idle")
            .set(f64::from(st.idle_connections));
        metrics::gauge!("taskboard_db_pool_connections", "state" => "in_use")
            .set(f64::from(st.connections - st.idle_connections));
        if serving != Some(ok) {
            if ok {
                health
                    .set_serving::<TaskServiceServer<service::Service>>()
                    .await;
                tracing::info!("health: SERVING");
            } else {
                health
                    .set_not_serving::<TaskServiceServer<service::Service>>()
                    .await;
                tracing::warn!("health: NOT_SERVING (database unreachable)");
            }
            serving = Some(ok);
        }
        let every = if ok {
            HEALTH_PROBE_EVERY
        } else {
            HEALTH_PROBE_WHILE_DOWN
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = gate.suspected() => {}
            _ = token.cancelled() => return,
        }
    }
}

/// Help text and units of the task service's own metrics.
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "taskboard_db_pool_connections",
        "Pooled PostgreSQL connections by state (idle, in_use)"
    );
    describe_histogram!(
        "taskboard_db_pool_wait_seconds",
        Unit::Seconds,
        "Time waiting for a pooled connection"
    );
    describe_gauge!(
        "taskboard_outbox_pending",
        "Committed events not yet published to NATS"
    );
    describe_counter!(
        "taskboard_outbox_published_total",
        "Events published to NATS by the relay"
    );
    describe_histogram!(
        "taskboard_outbox_publish_lag_seconds",
        Unit::Seconds,
        "Commit to publish, per event"
    );
    describe_counter!(
        "taskboard_grpc_connections_rejected_total",
        "gRPC connections closed at accept, by reason (cap: MAX_CONNECTIONS; silent: nothing sent within HANDSHAKE_TIMEOUT_MS)"
    );
    describe_histogram!(
        "taskboard_write_batch_size",
        Unit::Count,
        "Task changes committed together in one transaction (group commit)"
    );
    describe_counter!(
        "taskboard_write_batches_split_total",
        "Batches rolled back because one change failed, then run one change at a time"
    );
    describe_gauge!(
        "taskboard_relay_leader",
        "1 while this replica's relay holds leadership"
    );
}
