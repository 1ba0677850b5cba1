//! The fan-out hub: one bounded broadcast channel per board with subscribers (plus one for clients
//! that watch every board). It holds senders, never sockets; each event is one shared `Bytes`.
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
    pub seq: i64,
    pub frame: Bytes,
    /// For live events: when it arrived and how many recipients have yet to write it.
    pub timing: Option<Arc<Timing>>,
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
            frame: text_frame(payload),
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

/// A final, unmasked WebSocket text frame (server to client) carrying `payload`.
pub fn text_frame(payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut f = Vec::with_capacity(len + 10);
    f.push(0x81); // FIN + text
    if len < 126 {
        f.push(len as u8);
    } else if len <= u16::MAX as usize {
        f.push(126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f.extend_from_slice(payload);
    Bytes::from(f)
}

/// The hub. Cheap operations under a short std mutex; no I/O ever happens while it is held.
pub struct Hub {
    pub metrics: crate::metrics::WsMetrics,
    boards: Mutex<HashMap<i64, broadcast::Sender<Delivery>>>,
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

    /// Subscribes to one board, or to every board with `None`.
    pub fn subscribe(&self, board: Option<i64>) -> broadcast::Receiver<Delivery> {
        match board {
            None => self.all.subscribe(),
            Some(b) => {
                let mut boards = self.boards.lock().unwrap_or_else(|p| p.into_inner());
                boards
                    .entry(b)
                    .or_insert_with(|| broadcast::channel(self.capacity).0)
                    .subscribe()
            }
        }
    }

    /// Hands `d` to every subscriber of its board and every all-boards subscriber; returns how
    /// many receivers it reached. A board whose subscribers are all gone is forgotten.
    pub fn publish(&self, d: Delivery) -> usize {
        let mut n = 0;
        {
            let mut boards = self.boards.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = &d.timing {
                // Set before sending, so no recipient can finish first.
                let board_rx = boards.get(&d.board_id).map_or(0, |tx| tx.receiver_count());
                t.remaining
                    .store(board_rx + self.all.receiver_count(), Ordering::Release);
            }
            if let Some(tx) = boards.get(&d.board_id) {
                match tx.send(d.clone()) {
                    Ok(k) => n += k,
                    Err(_) => {
                        boards.remove(&d.board_id);
                    }
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
        let boards = self.boards.lock().unwrap_or_else(|p| p.into_inner());
        boards
            .iter()
            .filter(|(_, tx)| tx.receiver_count() > 0)
            .map(|(b, _)| *b)
            .collect()
    }

    /// Whether anyone would receive an event of `board`.
    pub fn is_watched(&self, board: i64) -> bool {
        if self.all.receiver_count() > 0 {
            return true;
        }
        let boards = self.boards.lock().unwrap_or_else(|p| p.into_inner());
        boards.get(&board).is_some_and(|tx| tx.receiver_count() > 0)
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
    fn frames_have_the_right_length_encoding() {
        assert_eq!(&text_frame(b"hi")[..], b"\x81\x02hi");
        let mid = text_frame(&[b'a'; 300]);
        assert_eq!(&mid[..4], &[0x81, 126, 1, 44]);
        assert_eq!(mid.len(), 304);
        let big = text_frame(&vec![b'a'; 70_000]);
        assert_eq!(big[1], 127);
        assert_eq!(u64::from_be_bytes(big[2..10].try_into().unwrap()), 70_000);
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
        let t = x.timing.clone().unwrap();
        assert_eq!(t.remaining.load(Ordering::Acquire), 3);
        x.done(&hub.metrics);
        y.done(&hub.metrics);
        assert_eq!(t.remaining.load(Ordering::Acquire), 1);
        z.done(&hub.metrics);
        assert_eq!(t.remaining.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_board_without_subscribers_is_forgotten() {
        let hub = Hub::new(2);
        let rx = hub.subscribe(Some(7));
        assert_eq!(hub.watched_boards(), vec![7]);
        drop(rx);
        assert_eq!(hub.publish(d(7, 1)), 0);
        assert!(hub.watched_boards().is_empty());
        assert!(!hub.is_watched(7));
    }
}
