//! The fan-out hub: one bounded broadcast channel per board with subscribers (plus one for clients
//! that watch every board), freed when its last subscriber leaves. It holds senders, never
//! sockets; each event is one shared `Bytes`. Per board it also knows the latest seq it has seen,
//! which is where a new subscriber without `since` starts.
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::broadcast;

/// One event as delivered: routing data from the NATS headers and the complete WebSocket text
/// frame (header and browser JSON), built once and shared (a clone is a reference-count bump) by
/// every recipient, which writes it to its socket as is.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub board_id: i64,
    /// The event's per-board seq; 0 for an unsequenced event.
    pub seq: i64,
    pub kind: Kind,
    pub frame: Bytes,
    /// For live events: when it arrived and how many recipients have yet to write it.
    pub timing: Option<Arc<Timing>>,
}

/// What a delivery is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An event with its seq.
    Event,
    /// An event without seq (published by the Go original's task service, which sets no
    /// headers): written as it comes, never deduplicated and never counted in the board's seq.
    Unsequenced,
    /// No frame: "the board's log has reached `seq`". The gateway found events missing (after a
    /// NATS outage, say) and tells subscribers to read them from the log themselves, at their own
    /// pace, instead of pushing a backlog through their bounded queues.
    Head,
}

impl AsRef<[u8]> for Delivery {
    fn as_ref(&self) -> &[u8] {
        &self.frame
    }
}

/// Per-event bookkeeping for the fan-out and end-to-end histograms: one allocation per event,
/// one atomic decrement per delivery; the recipient that writes it last records both.
#[derive(Debug)]
pub struct Timing {
    received: Instant,
    /// Commit time in the task service (µs since the epoch), from the NATS headers.
    committed_us: Option<i64>,
    remaining: AtomicUsize,
}

impl Delivery {
    /// Builds the frame around `payload` (the one copy of an event the gateway makes).
    pub fn new(board_id: i64, seq: i64, payload: &[u8]) -> Self {
        Delivery {
            board_id,
            seq,
            kind: Kind::Event,
            frame: crate::ws::frame::text_frame(payload),
            timing: None,
        }
    }

    /// An event without seq (see [`Kind::Unsequenced`]).
    pub fn unsequenced(board_id: i64, payload: &[u8]) -> Self {
        Delivery {
            board_id,
            seq: 0,
            kind: Kind::Unsequenced,
            frame: crate::ws::frame::text_frame(payload),
            timing: None,
        }
    }

    /// A marker: the board's log has reached `seq` (see [`Kind::Head`]).
    pub fn head(board_id: i64, seq: i64) -> Self {
        Delivery {
            board_id,
            seq,
            kind: Kind::Head,
            frame: Bytes::new(),
            timing: None,
        }
    }

    /// A live event just received from NATS, timed from now.
    pub fn live(board_id: i64, seq: i64, payload: &[u8], committed_us: Option<i64>) -> Self {
        Delivery {
            timing: Some(Arc::new(Timing {
                received: Instant::now(),
                committed_us,
                remaining: AtomicUsize::new(0),
            })),
            ..Delivery::new(board_id, seq, payload)
        }
    }

    /// Called by each recipient once it has written (or skipped) this event.
    pub fn done(&self, m: &crate::metrics::WsMetrics) {
        if let Some(t) = &self.timing {
            if t.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                m.fanout.record(t.received.elapsed().as_secs_f64());
                if let Some(c) = t.committed_us {
                    let now = chrono::Utc::now().timestamp_micros();
                    m.end_to_end.record(((now - c) as f64 / 1e6).max(0.0));
                }
            }
        }
    }
}

/// One watched board.
struct Board {
    tx: broadcast::Sender<Delivery>,
    /// The latest seq published on this board's channel, or the board's head as a subscriber
    /// fetched it from the task service; `None` until either is known.
    seq: Option<i64>,
}

/// The hub. Cheap operations under a short std mutex; no I/O ever happens while it is held.
pub struct Hub {
    pub metrics: crate::metrics::WsMetrics,
    boards: Mutex<HashMap<i64, Board>>,
    all: broadcast::Sender<Delivery>,
    /// Per-subscriber queue bound: a receiver further behind than this sees `Lagged` and its
    /// connection is closed with 1013.
    capacity: usize,
    clients: AtomicUsize,
}

impl Hub {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Hub {
            metrics: crate::metrics::WsMetrics::new(),
            boards: Mutex::new(HashMap::new()),
            all: broadcast::channel(capacity).0,
            capacity,
            clients: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Board>> {
        self.boards.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to one board, or to every board with `None`.
    pub fn subscribe(&self, board: Option<i64>) -> broadcast::Receiver<Delivery> {
        self.subscribe_with_seq(board).0
    }

    /// Subscribes, and says the latest seq the hub knows of the board at that instant: every event
    /// after it reaches the new receiver. Release with [`Hub::release`] once the receiver is gone.
    pub fn subscribe_with_seq(
        &self,
        board: Option<i64>,
    ) -> (broadcast::Receiver<Delivery>, Option<i64>) {
        match board {
            None => (self.all.subscribe(), None),
            Some(b) => {
                let mut boards = self.lock();
                let entry = boards.entry(b).or_insert_with(|| Board {
                    tx: broadcast::channel(self.capacity).0,
                    seq: None,
                });
                let r = (entry.tx.subscribe(), entry.seq);
                self.metrics.boards.set(boards.len() as f64);
                r
            }
        }
    }

    /// Records a board head fetched from the task service (never moves the known seq back).
    pub fn note_head(&self, board: i64, head: i64) {
        if let Some(e) = self.lock().get_mut(&board) {
            e.seq = Some(e.seq.map_or(head, |s| s.max(head)));
        }
    }

    /// The latest seq known for a watched board.
    pub fn known(&self, board: i64) -> Option<i64> {
        self.lock().get(&board).and_then(|e| e.seq)
    }

    /// Frees the channels of `boards` that no receiver uses any more (call after dropping them).
    pub fn release(&self, boards: &[i64]) {
        let mut map = self.lock();
        for b in boards {
            if map.get(b).is_some_and(|e| e.tx.receiver_count() == 0) {
                map.remove(b);
            }
        }
        self.metrics.boards.set(map.len() as f64);
    }

    /// How many per-board channels are held.
    pub fn board_count(&self) -> usize {
        self.lock().len()
    }

    /// Hands `d` to every subscriber of its board and every all-boards subscriber; returns how
    /// many receivers it reached.
    pub fn publish(&self, d: Delivery) -> usize {
        let mut n = 0;
        {
            let mut boards = self.lock();
            if let Some(t) = &d.timing {
                // Set before sending, so no recipient can finish first.
                let board_rx = boards.get(&d.board_id).map_or(0, |e| e.tx.receiver_count());
                t.remaining
                    .store(board_rx + self.all.receiver_count(), Ordering::Release);
            }
            if let Some(e) = boards.get_mut(&d.board_id) {
                if d.kind != Kind::Unsequenced {
                    e.seq = Some(e.seq.map_or(d.seq, |s| s.max(d.seq)));
                }
                if let Ok(k) = e.tx.send(d.clone()) {
                    n += k;
                }
            }
        }
        if let Ok(k) = self.all.send(d) {
            n += k;
        }
        n
    }

    /// Boards that currently have at least one subscriber.
    pub fn watched_boards(&self) -> Vec<i64> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.tx.receiver_count() > 0)
            .map(|(b, _)| *b)
            .collect()
    }

    /// Whether anyone subscribes to every board.
    pub fn has_all_boards_subscribers(&self) -> bool {
        self.all.receiver_count() > 0
    }

    /// Whether anyone would receive an event of `board`.
    pub fn is_watched(&self, board: i64) -> bool {
        if self.all.receiver_count() > 0 {
            return true;
        }
        self.lock()
            .get(&board)
            .is_some_and(|e| e.tx.receiver_count() > 0)
    }

    /// Counts a connected client; returns the new total.
    pub fn client_connected(&self) -> usize {
        self.metrics.connections.increment(1.0);
        self.metrics.connects.increment(1);
        self.clients.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a disconnected client; returns the new total.
    pub fn client_disconnected(&self) -> usize {
        self.metrics.connections.decrement(1.0);
        self.clients.fetch_sub(1, Ordering::Relaxed) - 1
    }

    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};

    fn d(board: i64, seq: i64) -> Delivery {
        Delivery::new(board, seq, format!("{{\"seq\":{seq}}}").as_bytes())
    }

    #[test]
    fn board_subscribers_get_only_their_board() {
        let hub = Hub::new(8);
        let mut one = hub.subscribe(Some(1));
        let mut two = hub.subscribe(Some(2));
        assert_eq!(hub.publish(d(1, 1)), 1);
        assert_eq!(one.try_recv().unwrap().seq, 1);
        assert!(matches!(two.try_recv(), Err(TryRecvError::Empty)));
    }

    #[test]
    fn all_boards_subscribers_get_everything() {
        let hub = Hub::new(8);
        let mut all = hub.subscribe(None);
        hub.publish(d(1, 1));
        hub.publish(d(2, 1));
        assert_eq!(all.try_recv().unwrap().board_id, 1);
        assert_eq!(all.try_recv().unwrap().board_id, 2);
    }

    #[test]
    fn every_recipient_shares_one_buffer() {
        let hub = Hub::new(8);
        let mut a = hub.subscribe(Some(1));
        let mut b = hub.subscribe(Some(1));
        hub.publish(d(1, 1));
        let (x, y) = (a.try_recv().unwrap(), b.try_recv().unwrap());
        assert_eq!(x.frame.as_ptr(), y.frame.as_ptr());
    }

    #[tokio::test]
    async fn a_receiver_past_capacity_sees_lagged() {
        let hub = Hub::new(2);
        let mut slow = hub.subscribe(Some(1));
        for s in 1..=5 {
            hub.publish(d(1, s));
        }
        assert!(matches!(slow.recv().await, Err(RecvError::Lagged(3))));
    }

    #[test]
    fn the_last_recipient_records_the_fan_out_time() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let count = |h: &metrics_exporter_prometheus::PrometheusHandle| {
            h.render()
                .lines()
                .find_map(|l| l.strip_prefix("taskboard_fanout_seconds_count "))
                .map(|v| v.trim().to_owned())
        };
        metrics::with_local_recorder(&recorder, || {
            let hub = Hub::new(8);
            let mut a = hub.subscribe(Some(1));
            let mut b = hub.subscribe(Some(1));
            let mut all = hub.subscribe(None);
            hub.publish(Delivery::live(1, 1, b"{}", None));
            let (x, y, z) = (
                a.try_recv().unwrap(),
                b.try_recv().unwrap(),
                all.try_recv().unwrap(),
            );
            x.done(&hub.metrics);
            y.done(&hub.metrics);
            assert_eq!(
                count(&handle).as_deref().unwrap_or("0"),
                "0",
                "two of three wrote it"
            );
            z.done(&hub.metrics);
            assert_eq!(
                count(&handle).as_deref(),
                Some("1"),
                "the third records it once"
            );
        });
    }

    #[test]
    fn a_board_channel_is_freed_when_its_last_subscriber_leaves() {
        let hub = Hub::new(2);
        let a = hub.subscribe(Some(7));
        let b = hub.subscribe(Some(7));
        assert_eq!(hub.board_count(), 1);
        drop(a);
        hub.release(&[7]);
        assert_eq!(hub.board_count(), 1, "one subscriber is left");
        drop(b);
        hub.release(&[7]);
        assert_eq!(hub.board_count(), 0);
        assert!(hub.watched_boards().is_empty());
    }

    #[test]
    fn a_new_subscriber_learns_the_latest_seq_under_the_same_lock() {
        let hub = Hub::new(8);
        let (_first, seq) = hub.subscribe_with_seq(Some(3));
        assert_eq!(seq, None, "nothing known yet");
        hub.note_head(3, 5);
        hub.publish(d(3, 6));
        hub.note_head(3, 4);
        let (mut second, seq) = hub.subscribe_with_seq(Some(3));
        assert_eq!(seq, Some(6), "never moves back");
        hub.publish(d(3, 7));
        assert_eq!(second.try_recv().unwrap().seq, 7);
        hub.publish(Delivery::unsequenced(3, b"{}"));
        assert_eq!(hub.known(3), Some(7), "unsequenced events do not count");
    }
}
