//! The outbox relay: publishes committed events to NATS in per-board seq order and moves the
//! outbox cursor past them once the server has confirmed them. Every replica publishes what its
//! own writer just committed (no database hop on the latency path); the leader (one at a time
//! across replicas, a session advisory lock) is the safety net that publishes whatever stays
//! behind the cursor past a short grace (a replica died between commit and publish, NATS was
//! down). Every replica LISTENs so its WatchTasks streams wake as soon as an event commits.
use std::time::{Duration, Instant};

use async_nats::connection::State;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use taskboard_proto::nats::{
    self as contract, RoundTrip, HEADER_BOARD, HEADER_COMMITTED_AT_US, HEADER_MSG_ID, HEADER_SEQ,
    HEADER_TASK,
};

use crate::db::{self, EventRow, Pool};
use crate::Error;

/// Advisory-lock key of relay leadership ("taskrly" in ASCII).
const LEADER_LOCK: i64 = 0x0074_6173_6b72_6c79;
/// Events published per round trip of the safety net: large enough to amortise the confirmation
/// and the cursor update, small enough that one board's backlog does not hold the others back.
const BATCH: i64 = 256;
/// Committed batches of this replica's writer taken per publish round.
const COMMITTED_PER_ROUND: usize = 64;
/// How soon events this replica could not publish (NATS not connected yet, or not confirming) are
/// tried again.
const RETRY_DELAY: Duration = Duration::from_millis(100);
/// Most such events held for retrying; beyond that they are left to the scan.
const RETRY_MAX: usize = 10_000;
/// How long events may stay behind the cursor before the safety net publishes them (the
/// committing replica publishes within milliseconds; this only covers failures).
const GRACE: Duration = Duration::from_secs(2);
/// How long the server may take to confirm a batch before it is retried (it stays unpublished
/// meanwhile; duplicates are dropped by seq downstream).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a leader prunes events past retention.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Wait before reopening a failed LISTEN session.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// The relay and its settings.
pub struct Relay {
    pub pool: Pool,
    pub pg: tokio_postgres::Config,
    pub nats: async_nats::Client,
    pub subject_prefix: String,
    /// Also publish each event on the Go original's subject (NATS_LEGACY_SUBJECTS=on).
    pub legacy_subjects: bool,
    pub poll: Duration,
    pub retention: Duration,
    /// Bumped on every NOTIFY: WatchTasks streams wait on it.
    pub wake: watch::Sender<u64>,
    /// What this replica's writer committed, in commit order.
    pub committed: mpsc::Receiver<Vec<EventRow>>,
    pub shutdown: CancellationToken,
}

impl Relay {
    /// Runs until shutdown, reopening its database session whenever it fails.
    pub async fn run(mut self) {
        loop {
            match self.session().await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay session failed; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(RECONNECT_DELAY) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// One LISTEN session: tries for leadership each round, publishes while leader.
    async fn session(&mut self) -> Result<(), Error> {
        let (client, mut conn) = db::connect(&self.pg).await?;
        let wake = self.wake.clone();
        // The connection must be polled for the client's queries to complete, so it gets its own
        // task; it ends when `client` is dropped at the end of this session.
        let mut driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(_)) => {
                        wake.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        client.batch_execute("LISTEN taskboard_events").await?;
        // Notifications sent while this session was down are lost: watch streams re-read once.
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
        let mut confirm = RoundTrip::new(&self.nats)
            .await
            .map_err(|e| Error::Nats(format!("subscribe to the relay's inbox: {e}")))?;
        let mut leader = false;
        let mut last_prune: Option<Instant> = None;
        let mut next_scan = tokio::time::Instant::now();
        let mut committed = Vec::with_capacity(COMMITTED_PER_ROUND);
        // False once the writer is gone (shutting down): only the scan is left.
        let mut writer = true;
        // What this replica committed but could not publish yet, oldest first.
        let mut retry: Vec<EventRow> = Vec::new();
        let mut retry_at = tokio::time::Instant::now();
        let result = loop {
            tokio::select! {
                n = self.committed.recv_many(&mut committed, COMMITTED_PER_ROUND), if writer => {
                    writer = n > 0;
                    // Older events waiting for a retry go first: each board stays in seq order.
                    let mut events = std::mem::take(&mut retry);
                    events.extend(committed.drain(..).flatten());
                    if !self.publish(&mut confirm, &events).await? {
                        retry = hold_for_retry(events);
                        retry_at = tokio::time::Instant::now() + RETRY_DELAY;
                    }
                }
                _ = tokio::time::sleep_until(retry_at), if !retry.is_empty() => {
                    let events = std::mem::take(&mut retry);
                    if !self.publish(&mut confirm, &events).await? {
                        retry = hold_for_retry(events);
                        retry_at = tokio::time::Instant::now() + RETRY_DELAY;
                    }
                }
                // Scan anyway every `poll` so nothing waits forever (a replica that died after
                // committing, NATS coming back, leadership becoming free).
                _ = tokio::time::sleep_until(next_scan) => {
                    if !leader {
                        leader = client
                            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                            .await?
                            .get(0);
                        if leader {
                            tracing::info!("outbox relay: this replica is the leader");
                        }
                        metrics::gauge!("taskboard_relay_leader").set(if leader { 1.0 } else { 0.0 });
                    }
                    if leader {
                        self.publish_behind(&mut confirm).await?;
                        metrics::gauge!("taskboard_outbox_pending")
                            .set(db::pending(&self.pool).await? as f64);
                        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                            let n = db::prune(&self.pool, self.retention).await?;
                            if n > 0 {
                                tracing::info!(pruned = n, "pruned events past retention");
                            }
                            db::prune_keys(&self.pool).await?;
                            last_prune = Some(Instant::now());
                        }
                    }
                    next_scan = tokio::time::Instant::now() + self.poll;
                }
                _ = self.shutdown.cancelled() => break Ok(()),
                r = &mut driver => {
                    break Err(match r {
                        Ok(Err(e)) => Error::Db(e),
                        _ => Error::Nats("listen session ended".into()),
                    });
                }
            }
        };
        driver.abort();
        metrics::gauge!("taskboard_relay_leader").set(0.0);
        result
    }

    /// The safety net: publishes what stayed behind the cursor past the grace, until nothing is
    /// left or NATS does not confirm.
    async fn publish_behind(&self, confirm: &mut RoundTrip) -> Result<(), Error> {
        loop {
            let batch = db::behind(&self.pool, BATCH, GRACE).await?;
            if batch.is_empty() {
                return Ok(());
            }
            tracing::info!(
                events = batch.len(),
                "outbox relay: publishing events left behind (a replica stopped before \
                 publishing, or NATS was unreachable)"
            );
            if !self.publish(confirm, &batch).await? || (batch.len() as i64) < BATCH {
                return Ok(());
            }
        }
    }

    /// Publishes `events` (each board's in seq order), waits for the server to confirm them, then
    /// moves the cursor past them. Returns whether they were confirmed; unconfirmed events stay
    /// behind the cursor for the safety net (duplicates are dropped by seq downstream).
    async fn publish(&self, confirm: &mut RoundTrip, events: &[EventRow]) -> Result<bool, Error> {
        if events.is_empty() {
            return Ok(true);
        }
        if self.nats.connection_state() != State::Connected {
            tracing::debug!("outbox relay: NATS not connected; events wait in the outbox");
            return Ok(false);
        }
        for ev in events {
            let h = headers(ev);
            if self.legacy_subjects {
                self.nats
                    .publish_with_headers(
                        contract::legacy_subject(&self.subject_prefix, &ev.kind),
                        h.clone(),
                        ev.payload.clone(),
                    )
                    .await
                    .map_err(|e| Error::Nats(e.to_string()))?;
            }
            self.nats
                .publish_with_headers(self.subject(ev), h, ev.payload.clone())
                .await
                .map_err(|e| Error::Nats(e.to_string()))?;
        }
        // A flush only means the bytes left this process (a stopped server takes them into its
        // socket buffer and loses them); the cursor moves only once the server has processed
        // them.
        let confirmed = confirm
            .confirm(&self.nats, CONFIRM_TIMEOUT)
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        if !confirmed {
            tracing::warn!(
                events = events.len(),
                "outbox relay: NATS did not confirm in time; the relay's scan publishes them again"
            );
            return Ok(false);
        }
        db::advance(&self.pool, events).await?;
        let now = chrono::Utc::now();
        metrics::counter!("taskboard_outbox_published_total").increment(events.len() as u64);
        for ev in events {
            let lag = (now - ev.committed_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
            metrics::histogram!("taskboard_outbox_publish_lag_seconds").record(lag.max(0.0));
            // `00-<trace id>-<span id>-<flags>`: the trace id of the request that made it.
            let trace_id = ev.trace.as_deref().and_then(|t| t.get(3..35));
            tracing::info!(
                trace_id,
                "📤 Published event: {} (task_id={}, board_id={}, seq={})",
                self.subject(ev),
                ev.task_id,
                ev.board_id,
                ev.seq
            );
        }
        Ok(true)
    }

    fn subject(&self, ev: &EventRow) -> String {
        contract::board_subject(&self.subject_prefix, ev.board_id, &ev.kind)
    }
}

/// Keeps `events` for the next retry, unless there are too many: then the scan publishes them
/// (they are committed, so nothing is lost either way).
fn hold_for_retry(events: Vec<EventRow>) -> Vec<EventRow> {
    if events.len() > RETRY_MAX {
        tracing::warn!(
            events = events.len(),
            "outbox relay: too many unpublished events to hold; the scan publishes them"
        );
        return Vec::new();
    }
    events
}

/// NATS headers of an event: routing data for the gateway, so it never parses the payload.
fn headers(ev: &EventRow) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert(HEADER_BOARD, ev.board_id.to_string().as_str());
    h.insert(HEADER_SEQ, ev.seq.to_string().as_str());
    h.insert(HEADER_TASK, ev.task_id.to_string().as_str());
    h.insert(
        HEADER_COMMITTED_AT_US,
        ev.committed_at.timestamp_micros().to_string().as_str(),
    );
    h.insert(
        HEADER_MSG_ID,
        format!("{}-{}", ev.board_id, ev.seq).as_str(),
    );
    if let Some(t) = &ev.trace {
        h.insert(taskboard_telemetry::otel::TRACEPARENT, t.as_str());
    }
    h
}
