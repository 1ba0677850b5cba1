//! Taskboard gateway: the REST API over the task service's gRPC, and a WebSocket fan-out of task
//! events received from NATS.

pub mod auth;
pub mod config;
pub mod edge;
mod error;
pub mod fanout;
pub mod metrics;
mod response;
pub mod upstream;
pub mod ws;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
use edge::{cors, limits, server};
pub use error::{ApiError, Error};
use fanout::{hub, intake, interest, presence, replay};
use upstream::{breaker, client, gather};

/// Everything a request handler needs.
pub struct AppState {
    pub config: Config,
    pub tasks: client::TasksClient,
    /// Creates, gathered into CreateTasks calls (`CREATE_CALLS`).
    pub creates: gather::Creates,
    pub hub: Arc<hub::Hub>,
    pub nats: async_nats::Client,
    pub cors: cors::Cors,
    pub session: ws::SessionSettings,
    /// Cancelled on shutdown: WebSocket sessions close with 1001.
    pub shutdown: CancellationToken,
    /// Owns every WebSocket session and background task.
    pub tracker: TaskTracker,
    /// Set once NATS has answered a round trip (any fixed subscription is then in place;
    /// `/ready` waits for it).
    pub subscribed: Arc<AtomicBool>,
    /// Caps on open sockets and WebSockets.
    pub limits: limits::Limits,
    /// Token verification; `None` with AUTH=off.
    pub auth: Option<Arc<auth::Verifier>>,
    /// String subjects' user ids (asked of the task service, cached).
    pub subjects: Arc<auth::subjects::Subjects>,
    /// Per-address and per-user rate limits.
    pub rate: auth::ratelimit::RateLimits,
    /// Replay page reads: shared between resumers, at most MAX_REPLAYS in flight.
    pub replays: Arc<replay::ReplayReads>,
    /// Who is viewing each board; `None` with PRESENCE_TTL_MS=0.
    pub presence: Option<Arc<presence::Presence>>,
}

impl AppState {
    /// Deadline for a whole request body.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.config.body_timeout_ms.max(1))
    }
}

/// Runs the gateway on `listener` until `shutdown` resolves, then drains within the grace period.
///
/// # Errors
/// Bad configuration or a NATS URL that does not parse. An unreachable task service or NATS is not
/// an error: the gateway starts and `/ready` reports them.
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
    config.validate()?;
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    // First, so the hub's metric handles register with the recorder.
    if let Some(admin) = metrics_listener {
        let handle = taskboard_telemetry::prometheus();
        taskboard_telemetry::build_info("gateway");
        metrics::describe();
        tracing::info!(addr = %admin.local_addr()?, "metrics at /metrics");
        tracker.spawn(taskboard_telemetry::serve_metrics(
            admin,
            handle,
            token.clone().cancelled_owned(),
        ));
    }
    let verifier = config.verifier()?;
    if let Some((v, r)) = verifier.as_ref().and_then(|v| Some((v, v.remote.clone()?))) {
        // The first keys before the first request; a provider that is down now is retried in
        // the background (tokens get 401 "not loaded yet" meanwhile).
        if let Err(e) = r.fetch(v, "startup").await {
            tracing::error!(error = %e, "the identity provider's keys could not be fetched at start; retrying in the background");
        }
        tracker.spawn(r.run(v.clone(), token.clone()));
    }
    if verifier.is_none() {
        tracing::warn!("AUTH=off: anyone may read and change every board (development only)");
    }
    let cors = cors::Cors::parse(config.cors_spec())?;
    if matches!(cors, cors::Cors::Any) && verifier.is_some() {
        tracing::warn!("CORS_ORIGINS=*: any web page may call the API with a user's token");
    }
    let tasks = client::TasksClient::new(
        &config.task_service_uri(),
        config.grpc_timeout(),
        config.service_token()?.as_deref(),
    )?
    .with_breaker(breaker::Breaker::new(
        config.breaker_failures,
        Duration::from_millis(config.breaker_open_ms.max(1)),
    ));
    let creates = gather::Creates::new(
        tasks.clone(),
        config.create_calls,
        config.create_batch_max,
        tracker.clone(),
    );
    let mut hub = hub::Hub::with_direct_budget(
        config.ws_queue,
        Duration::from_micros(config.ws_direct_budget_us),
    );
    if config.ws_deflate == "on" {
        hub = hub.with_deflate(config.ws_deflate_min_bytes);
    }
    let hub = Arc::new(hub);

    // Reconnects are signalled to the intake, which then fetches what watched boards missed.
    let (reconnected_tx, reconnected_rx) = mpsc::channel(4);
    let nats = connect_nats(&config.nats_url, reconnected_tx).await?;
    let presence = (config.presence_ttl_ms > 0).then(|| {
        presence::Presence::new(
            &config.nats_subject_prefix,
            Duration::from_millis(config.presence_ttl_ms.max(300)),
            hub.clone(),
        )
    });
    let prefix = &config.nats_subject_prefix;
    let interest = if config.nats_subscribe == "wildcard" {
        let i = interest::Interest::wildcard(nats.clone(), prefix, presence.is_some())
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        tracing::info!(
            subject = %taskboard_proto::nats::wildcard(prefix),
            "NATS_SUBSCRIBE=wildcard: subscribing to every event"
        );
        i
    } else {
        tracing::info!(
            subject = %taskboard_proto::nats::board_interest(prefix, 0).replace(".0.", ".<board>."),
            "subscribing to each board's events while a client here watches it"
        );
        interest::Interest::per_board(
            nats.clone(),
            prefix,
            presence.is_some(),
            Duration::from_millis(config.nats_unsubscribe_linger_ms),
        )
    };

    let subscribed = Arc::new(AtomicBool::new(false));
    let intake = intake::Intake::new(
        hub.clone(),
        tasks.clone(),
        intake::IntakeSettings {
            // A quarter of a subscriber's queue: a fill never pushes one near its bound.
            inline_fill: (config.ws_queue / 4).max(1) as i64,
            check_every: Duration::from_millis(config.event_check_interval_ms.max(100)),
        },
    )
    .with_presence(presence.clone());
    tracker.spawn(intake.run(
        nats.clone(),
        interest,
        subscribed.clone(),
        reconnected_rx,
        token.clone(),
    ));
    if let Some(p) = &presence {
        tracker.spawn(p.clone().run(nats.clone(), token.clone()));
    }

    let rate_limits = config.rate_limits();
    let replays = Arc::new(replay::ReplayReads::new(tasks.clone(), config.max_replays));
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let limits = limits::Limits::new(config.max_connections, config.max_websockets);
    tracing::info!(
        max_connections = limits.max_sockets,
        max_websockets = limits.max_websockets,
        "connection caps"
    );
    let subjects = Arc::new(auth::subjects::Subjects::new(tasks.clone()));
    let state = Arc::new(AppState {
        session: ws::SessionSettings {
            ping_interval: Duration::from_millis(config.ws_ping_interval_ms),
            write_timeout: Duration::from_millis(config.ws_write_timeout_ms.max(1)),
        },
        config,
        tasks,
        creates,
        hub,
        nats: nats.clone(),
        cors,
        shutdown: token.clone(),
        tracker: tracker.clone(),
        subscribed,
        limits,
        auth: verifier,
        subjects,
        rate: rate_limits,
        replays,
        presence,
    });
    // Idle buckets are forgotten, so the limiters' memory follows the clients of the last minute.
    tracker.spawn({
        let (state, token) = (state.clone(), token.clone());
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = every.tick() => state.rate.forget_idle(),
                    _ = token.cancelled() => return,
                }
            }
        }
    });

    tracing::info!(addr = %listener.local_addr()?, "gateway listening (HTTP + WebSocket /ws)");
    let deadline = server::serve(state.clone(), listener, shutdown, grace).await;

    token.cancel();
    tracker.close();
    if tokio::time::timeout_at(deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            clients = state.hub.clients(),
            "WebSocket sessions still open after the grace period"
        );
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// Connects to NATS in the background and reconnects forever, telling `reconnected` each time a
/// connection is established.
async fn connect_nats(
    urls: &str,
    reconnected: mpsc::Sender<()>,
) -> Result<async_nats::Client, Error> {
    let connected_before = Arc::new(std::sync::atomic::AtomicBool::new(false));
    taskboard_proto::nats::connect("taskboard-gateway", urls, move |ev| {
        let reconnected = reconnected.clone();
        let connected_before = connected_before.clone();
        async move {
            match ev {
                async_nats::Event::Connected => {
                    tracing::info!("Connected to NATS successfully");
                    let again = connected_before.swap(true, std::sync::atomic::Ordering::Relaxed);
                    metrics::nats_connected(true, again);
                    let _ = reconnected.try_send(());
                }
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS disconnected");
                    metrics::nats_connected(false, false);
                }
                other => tracing::info!(event = %other, "NATS event"),
            }
        }
    })
    .await
    .map_err(|e| match e {
        taskboard_proto::nats::ConnectError::BadUrl(m) => {
            Error::Config(format!("invalid NATS_URL {m}"))
        }
        other => Error::Nats(other.to_string()),
    })
}
