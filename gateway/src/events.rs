//! NATS intake: reads `<prefix>.>`, takes routing data from the headers (the payload is never
//! parsed), drops duplicates, fills gaps from the task service, and hands events to the hub in
//! per-board seq order.
use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hub::{Delivery, Hub};
use crate::tasks_client::TasksClient;

/// Above this many remembered boards, boards nobody watches are forgotten (a later event of such
/// a board is then taken as is, and subscribers' own seq checks still catch any gap).
const MAX_TRACKED_BOARDS: usize = 100_000;
/// Events fetched per ListEvents call when filling a gap.
const FILL_PAGE: i32 = 1000;

/// Routing data of an event, from its NATS headers.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    pub board_id: i64,
    pub seq: i64,
}

/// Reads `Taskboard-Board` and `Taskboard-Seq`.
pub fn route(headers: Option<&async_nats::HeaderMap>) -> Option<Route> {
    let h = headers?;
    let num = |k: &str| h.get(k)?.as_str().parse::<i64>().ok().filter(|v| *v > 0);
    Some(Route {
        board_id: num("Taskboard-Board")?,
        seq: num("Taskboard-Seq")?,
    })
}

/// The intake task's state.
pub struct Intake {
    pub hub: Arc<Hub>,
    pub tasks: TasksClient,
    /// Highest seq handed to the hub, per board.
    last: HashMap<i64, i64>,
}

impl Intake {
    pub fn new(hub: Arc<Hub>, tasks: TasksClient) -> Self {
        Intake {
            hub,
            tasks,
            last: HashMap::new(),
        }
    }

    /// Runs until shutdown. `reconnected` fires whenever the NATS connection is (re)established:
    /// events published meanwhile are fetched from the task service for every watched board.
    pub async fn run(
        mut self,
        mut sub: async_nats::Subscriber,
        mut reconnected: mpsc::Receiver<()>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                m = sub.next() => match m {
                    Some(m) => self.on_message(m).await,
                    None => {
                        tracing::error!("NATS subscription ended");
                        return;
                    }
                },
                Some(()) = reconnected.recv() => self.catch_up().await,
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn on_message(&mut self, m: async_nats::Message) {
        self.hub.metrics.nats_received.increment(1);
        let committed_us = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Taskboard-Committed-At-Us"))
            .and_then(|v| v.as_str().parse::<i64>().ok());
        if let Some(us) = committed_us {
            let now = chrono::Utc::now().timestamp_micros();
            crate::metrics::event_lag((now - us) as f64 / 1e6);
        }
        let Some(r) = route(m.headers.as_ref()) else {
            tracing::warn!(subject = %m.subject, "dropping NATS message without valid Taskboard-Board/Taskboard-Seq headers");
            return;
        };
        let n = self
            .accept(r.board_id, r.seq, m.payload, committed_us)
            .await;
        if let Some(n) = n {
            tracing::info!(
                "📨 Received NATS event on {}, broadcasting to {} clients",
                m.subject,
                n
            );
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
        match self.last.get(&board).copied() {
            Some(last) if seq <= last => {
                tracing::debug!(board, seq, last, "duplicate event dropped");
                return None;
            }
            Some(last) if seq > last + 1 && self.hub.is_watched(board) => {
                tracing::info!(
                    board,
                    from = last + 1,
                    to = seq - 1,
                    "gap in events; fetching"
                );
                self.fill(board, last, seq - 1).await;
            }
            _ => {}
        }
        self.remember(board, seq);
        Some(
            self.hub
                .publish(Delivery::live(board, seq, &payload, committed_us)),
        )
    }

    fn remember(&mut self, board: i64, seq: i64) {
        if self.last.len() >= MAX_TRACKED_BOARDS && !self.last.contains_key(&board) {
            let hub = &self.hub;
            self.last.retain(|b, _| hub.is_watched(*b));
        }
        self.last.insert(board, seq);
    }

    /// Publishes the board's events in (after, upto] from the task service. On failure the hub
    /// gets the next live event anyway; subscribers see the gap by seq and fetch it themselves.
    async fn fill(&mut self, board: i64, after: i64, upto: i64) {
        let mut cursor = after;
        while cursor < upto {
            match self.tasks.list_events(board, cursor, FILL_PAGE).await {
                Ok(page) if !page.reset && !page.events.is_empty() => {
                    for e in page.events {
                        if e.seq > upto {
                            return;
                        }
                        cursor = e.seq;
                        self.remember(board, e.seq);
                        self.hub.publish(Delivery::new(board, e.seq, &e.payload));
                    }
                }
                Ok(_) => return,
                Err(s) => {
                    tracing::warn!(board, status = %s, "could not fill event gap");
                    return;
                }
            }
        }
    }

    /// After a NATS reconnect: fetch what every watched board missed.
    async fn catch_up(&mut self) {
        for board in self.hub.watched_boards() {
            if let Some(last) = self.last.get(&board).copied() {
                // Unknown head: fill until the task service has nothing newer.
                self.fill(board, last, i64::MAX).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_reads_board_and_seq_headers() {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Taskboard-Board", "7");
        h.insert("Taskboard-Seq", "42");
        assert_eq!(
            route(Some(&h)),
            Some(Route {
                board_id: 7,
                seq: 42
            })
        );
    }

    #[test]
    fn messages_without_valid_headers_have_no_route() {
        assert_eq!(route(None), None);
        let mut h = async_nats::HeaderMap::new();
        h.insert("Taskboard-Board", "x");
        h.insert("Taskboard-Seq", "1");
        assert_eq!(route(Some(&h)), None);
        let mut h = async_nats::HeaderMap::new();
        h.insert("Taskboard-Board", "-1");
        h.insert("Taskboard-Seq", "1");
        assert_eq!(route(Some(&h)), None);
    }

    fn intake() -> Intake {
        // A client for an address nothing listens on: gap fills fail fast, like a task service
        // that is down.
        let tasks = TasksClient::new("http://127.0.0.1:1", std::time::Duration::from_millis(200))
            .expect("client");
        Intake::new(Arc::new(Hub::new(16)), tasks)
    }

    #[tokio::test]
    async fn duplicates_are_dropped_and_order_kept() {
        let mut i = intake();
        let mut rx = i.hub.subscribe(Some(1));
        assert_eq!(i.accept(1, 1, "a".into(), None).await, Some(1));
        assert_eq!(i.accept(1, 1, "a".into(), None).await, None);
        assert_eq!(i.accept(1, 2, "b".into(), None).await, Some(1));
        assert_eq!(rx.try_recv().unwrap().seq, 1);
        assert_eq!(rx.try_recv().unwrap().seq, 2);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn an_unfillable_gap_still_delivers_the_live_event() {
        let mut i = intake();
        let mut rx = i.hub.subscribe(Some(1));
        i.accept(1, 1, "a".into(), None).await;
        assert_eq!(i.accept(1, 5, "e".into(), None).await, Some(1));
        assert_eq!(rx.try_recv().unwrap().seq, 1);
        assert_eq!(rx.try_recv().unwrap().seq, 5);
    }
}
