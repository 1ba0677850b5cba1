//! NATS intake: reads the subscriptions of the boards watched here (`follow`: made on a board's
//! first subscriber, confirmed, then the board brought to its head), takes routing data from the
//! headers (the payload is never parsed, except for header-less events of the Go original's task
//! service), drops duplicates, fills short gaps from the task service, and hands events to the hub
//! in per-board seq order. It also makes sure nothing committed stays lost: after every
//! (re)connect, and periodically, it compares the watched boards' heads in the log with what it
//! has seen (`heads`).
mod follow;
mod heads;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use taskboard_proto::nats::{RoundTrip, HEADER_COMMITTED_AT_US};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::fanout::delivery::Delivery;
use crate::fanout::hub::Hub;
use crate::fanout::interest::{Interest, Source};
use crate::fanout::presence::Presence;
use crate::fanout::routing::{board_of_payload, route};
use crate::upstream::client::TasksClient;

/// Above this many remembered boards, boards nobody watches are forgotten (a later event of such
/// a board is then taken as is, and subscribers' own seq checks still catch any gap).
const MAX_TRACKED_BOARDS: usize = 100_000;
/// Events fetched per ListEvents call when filling a gap.
const FILL_PAGE: i32 = 1000;
/// Boards per BoardHeads call (the task service's limit).
const HEADS_CHUNK: usize = 1000;
/// How long the server may take to confirm the subscription.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

/// The intake task's settings.
#[derive(Clone, Debug)]
pub struct IntakeSettings {
    /// Gaps up to this many events are fetched once here for every subscriber; longer ones (a
    /// backlog after an outage) are left to each session, which reads the log at its own pace
    /// instead of having the backlog pushed through its bounded queue.
    pub inline_fill: i64,
    /// How often the watched boards' heads are compared with what arrived. An event lost on the
    /// way is delivered within two of these (a head must be behind on two checks in a row, so
    /// events still in flight are not fetched twice).
    pub check_every: Duration,
}

/// The intake task's state.
pub struct Intake {
    pub hub: Arc<Hub>,
    pub tasks: TasksClient,
    settings: IntakeSettings,
    /// Highest seq handed to the hub, per board.
    last: HashMap<i64, i64>,
    /// Heads seen behind on the previous periodic check.
    behind: HashMap<i64, i64>,
    /// Takes in other gateways' presence announcements, when presence is on.
    presence: Option<Arc<Presence>>,
}

impl Intake {
    pub fn new(hub: Arc<Hub>, tasks: TasksClient, settings: IntakeSettings) -> Self {
        Intake {
            hub,
            tasks,
            settings,
            last: HashMap::new(),
            behind: HashMap::new(),
            presence: None,
        }
    }

    /// Hands presence announcements heard on the boards' subscriptions to `presence`.
    pub fn with_presence(mut self, presence: Option<Arc<Presence>>) -> Self {
        self.presence = presence;
        self
    }

    /// Runs until shutdown, on the subscriptions of `interest`. Sets `subscribed` once the server
    /// has answered a round trip (any fixed subscription is then in place). `reconnected` fires
    /// whenever the NATS connection is (re)established: what was committed meanwhile is fetched
    /// for every watched board.
    pub async fn run(
        mut self,
        nats: async_nats::Client,
        interest: Interest,
        subscribed: Arc<AtomicBool>,
        mut reconnected: mpsc::Receiver<()>,
        shutdown: CancellationToken,
    ) {
        let rt = tokio::select! {
            rt = confirm(&nats) => rt,
            _ = shutdown.cancelled() => return,
        };
        subscribed.store(true, Ordering::Release);
        if interest.is_wildcard() {
            tracing::info!("✅ Hub subscribed to task events (confirmed by the server)");
        } else {
            tracing::info!(
                "✅ Hub connected to NATS (confirmed by the server); subscribing per watched board"
            );
        }
        if interest.is_wildcard() {
            self.hub.set_all_boards_live(true);
        }
        let mut follow = follow::Follow::new(interest, nats, rt);
        // Boards watched before the connection was confirmed.
        self.follow_changes(&mut follow).await;
        let mut check = tokio::time::interval(self.settings.check_every);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        let hub = self.hub.clone();
        loop {
            tokio::select! {
                step = follow.next(&hub) => match step {
                    follow::Step::Message(Source::Events, m) => self.on_message(m).await,
                    follow::Step::Message(Source::Presence, m) => {
                        if let Some(p) = &self.presence {
                            p.heard_payload(&m.payload);
                        }
                    }
                    follow::Step::Changed => self.follow_changes(&mut follow).await,
                    follow::Step::Confirmed(boards) => self.confirmed(boards).await,
                    follow::Step::Sweep => self.sweep(&mut follow),
                },
                Some(()) = reconnected.recv() => self.catch_up(heads::Check::Reconnect).await,
                _ = check.tick() => {
                    // A change whose wake-up was lost would wait here at most a check.
                    self.follow_changes(&mut follow).await;
                    self.catch_up(heads::Check::Periodic).await;
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn on_message(&mut self, m: async_nats::Message) {
        self.hub.metrics.nats_received.increment(1);
        let committed_us = m
            .headers
            .as_ref()
            .and_then(|h| h.get(HEADER_COMMITTED_AT_US))
            .and_then(|v| v.as_str().parse::<i64>().ok());
        if let Some(us) = committed_us {
            let now = chrono::Utc::now().timestamp_micros();
            crate::metrics::event_lag((now - us) as f64 / 1e6);
        }
        let Some(r) = route(m.headers.as_ref()) else {
            // The Go original's task service: no headers, the board in the payload.
            return match board_of_payload(&m.payload) {
                Some(board) => {
                    metrics::counter!("taskboard_nats_unsequenced_total").increment(1);
                    let n = self.hub.publish(Delivery::unsequenced(board, &m.payload));
                    tracing::info!(
                        "📨 Received NATS event on {} (no seq), broadcasting to {} clients",
                        m.subject,
                        n
                    );
                }
                None => {
                    metrics::counter!("taskboard_nats_dropped_total").increment(1);
                    tracing::warn!(subject = %m.subject, "dropping NATS message with neither Taskboard headers nor a board_id");
                }
            };
        };
        // With tracing on, the fan-out (and its log line) continues the trace of the request
        // that committed the event.
        let span = taskboard_telemetry::otel::enabled().then(|| {
            let span = tracing::info_span!(
                "fanout",
                board = r.board_id,
                seq = r.seq,
                trace_id = tracing::field::Empty
            );
            if let Some(tp) = m
                .headers
                .as_ref()
                .and_then(|h| h.get(taskboard_telemetry::otel::TRACEPARENT))
            {
                taskboard_telemetry::otel::continue_from_traceparent(&span, tp.as_str());
                if let Some(id) = taskboard_telemetry::otel::trace_id(&span) {
                    span.record("trace_id", id);
                }
            }
            span
        });
        let accepted = self.accept(r.board_id, r.seq, m.payload, committed_us);
        let n = match &span {
            Some(s) => tracing::Instrument::instrument(accepted, s.clone()).await,
            None => accepted.await,
        };
        if let Some(n) = n {
            let log = || {
                tracing::info!(
                    "📨 Received NATS event on {}, broadcasting to {} clients",
                    m.subject,
                    n
                );
            };
            match &span {
                Some(s) => s.in_scope(log),
                None => log(),
            }
        }
    }

    /// The latest seq of `board` known here or by the hub (a subscriber may have fetched it).
    fn expected(&self, board: i64) -> Option<i64> {
        match (self.last.get(&board).copied(), self.hub.known(board)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Delivers one event in order; returns the number of receivers, or `None` for a duplicate.
    pub async fn accept(
        &mut self,
        board: i64,
        seq: i64,
        payload: bytes::Bytes,
        committed_us: Option<i64>,
    ) -> Option<usize> {
        match self.expected(board) {
            Some(last) if seq <= last => {
                tracing::debug!(board, seq, last, "duplicate event dropped");
                return None;
            }
            Some(last) if seq > last + 1 && self.hub.is_watched(board) => {
                if seq - 1 - last <= self.settings.inline_fill {
                    tracing::info!(
                        board,
                        from = last + 1,
                        to = seq - 1,
                        "gap in events; fetching"
                    );
                    self.fill(board, last, seq - 1).await;
                } else {
                    // Each subscriber sees the gap by seq and reads it from the log itself.
                    tracing::info!(
                        board,
                        from = last + 1,
                        to = seq - 1,
                        "long gap in events; subscribers read it from the log"
                    );
                }
            }
            _ => {}
        }
        self.remember(board, seq);
        Some(self.publish(Delivery::live(board, seq, &payload, committed_us), &payload))
    }

    /// Publishes `d` (whose browser JSON is `payload`), then applies the access change it makes,
    /// if any: whom it reaches got the event itself and nothing after it.
    pub(super) fn publish(&self, d: Delivery, payload: &[u8]) -> usize {
        let board = d.board_id;
        let n = self.hub.publish(d);
        if let Some(change) = crate::fanout::access::of(payload) {
            let closed = self.hub.revoke(board, &change);
            tracing::info!(
                board,
                ?change,
                sockets = closed,
                "access change applied to open sockets"
            );
            crate::metrics::access_change();
        }
        n
    }

    fn remember(&mut self, board: i64, seq: i64) {
        if self.last.len() >= MAX_TRACKED_BOARDS && !self.last.contains_key(&board) {
            let hub = &self.hub;
            self.last.retain(|b, _| hub.is_watched(*b));
        }
        self.last.insert(board, seq);
    }
}

/// Waits until the server has answered a round trip on the connection (so it has every
/// subscription made before this call), retrying while NATS is unreachable; returns the round
/// trip for later confirmations.
async fn confirm(nats: &async_nats::Client) -> RoundTrip {
    let mut delay = Duration::from_millis(50);
    loop {
        match RoundTrip::new(nats).await {
            Ok(mut rt) => match rt.confirm(nats, CONFIRM_TIMEOUT).await {
                Ok(true) => return rt,
                Ok(false) => tracing::warn!("NATS has not answered a round trip yet"),
                Err(e) => tracing::warn!(error = %e, "NATS round trip failed"),
            },
            Err(e) => tracing::warn!(error = %e, "NATS round trip failed"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intake() -> Intake {
        // A client for an address nothing listens on: gap fills fail fast, like a task service
        // that is down.
        let tasks = TasksClient::new(
            "http://127.0.0.1:1",
            std::time::Duration::from_millis(200),
            None,
        )
        .expect("client");
        Intake::new(
            Arc::new(Hub::new(16)),
            tasks,
            IntakeSettings {
                inline_fill: 8,
                check_every: Duration::from_secs(60),
            },
        )
    }

    #[test]
    fn a_header_less_event_is_routed_by_its_payload() {
        let original = br#"{"type":"created","task_id":7,"board_id":3,"title":"t","completed":null,"timestamp":1795801831}"#;
        assert_eq!(board_of_payload(original), Some(3));
        assert_eq!(board_of_payload(br#"{"type":"created"}"#), None);
        assert_eq!(board_of_payload(br#"{"board_id":0}"#), None);
        assert_eq!(board_of_payload(b"not json"), None);
    }

    #[tokio::test]
    async fn a_board_head_noted_by_a_subscriber_is_where_the_intake_starts() {
        let mut i = intake();
        let rx = i.hub.subscribe(Some(1));
        i.hub.note_head(1, 5);
        assert_eq!(
            i.accept(1, 5, "old".into(), None).await,
            None,
            "already known"
        );
        assert_eq!(i.accept(1, 6, "new".into(), None).await, Some(1));
        assert_eq!(rx.try_recv().unwrap().unwrap().seq, 6);
    }

    #[tokio::test]
    async fn duplicates_are_dropped_and_order_kept() {
        let mut i = intake();
        let rx = i.hub.subscribe(Some(1));
        assert_eq!(i.accept(1, 1, "a".into(), None).await, Some(1));
        assert_eq!(i.accept(1, 1, "a".into(), None).await, None);
        assert_eq!(i.accept(1, 2, "b".into(), None).await, Some(1));
        assert_eq!(rx.try_recv().unwrap().unwrap().seq, 1);
        assert_eq!(rx.try_recv().unwrap().unwrap().seq, 2);
        assert!(rx.try_recv().unwrap().is_none());
    }

    #[tokio::test]
    async fn an_unfillable_gap_still_delivers_the_live_event() {
        let mut i = intake();
        let rx = i.hub.subscribe(Some(1));
        i.accept(1, 1, "a".into(), None).await;
        assert_eq!(i.accept(1, 5, "e".into(), None).await, Some(1));
        assert_eq!(rx.try_recv().unwrap().unwrap().seq, 1);
        assert_eq!(rx.try_recv().unwrap().unwrap().seq, 5);
    }
}
