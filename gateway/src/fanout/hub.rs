//! The fan-out hub: the subscribers ([`Outlet`]s) of each watched board (plus those that watch
//! every board), forgotten when the last one leaves; each event is one shared `Bytes`. Per board
//! it also knows the latest seq it has seen, which is where a new subscriber without `since`
//! starts.
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use std::time::Duration;

use crate::fanout::delivery::{Delivery, Kind};
use crate::fanout::outlet::Outlet;

/// One watched board.
struct Board {
    /// Its subscribers; copied on change, so a publisher works on a snapshot outside the lock.
    subs: Arc<Vec<Arc<Outlet>>>,
    /// The latest seq published to this board's subscribers, or the board's head as a subscriber
    /// fetched it from the task service; `None` until either is known.
    seq: Option<i64>,
}

struct Inner {
    boards: HashMap<i64, Board>,
    /// Subscribers of every board.
    all: Arc<Vec<Arc<Outlet>>>,
}

/// How often (in recipients) a publish looks at the clock to see whether its direct-write budget
/// is spent.
const BUDGET_CHECK_EVERY: usize = 16;
/// The direct-write budget refills at 1/DIRECT_SHARE of wall-clock time: sparse events are
/// written to every idle socket by the publisher, while a flood leaves most of the writing to
/// the sessions (on every core, several queued frames per write) instead of serialising it in
/// the one task that reads NATS.
const DIRECT_SHARE: u32 = 4;

/// Time the publisher may still spend writing to sockets itself.
struct Budget {
    left: Duration,
    at: Instant,
}

/// The hub. Cheap operations under a short std mutex; no I/O ever happens while it is held.
pub struct Hub {
    pub metrics: crate::metrics::WsMetrics,
    inner: Mutex<Inner>,
    /// Per-subscriber queue bound: a subscriber further behind than this is closed with 1013.
    capacity: usize,
    /// How long one publish may spend writing frames to parked sessions' sockets itself before
    /// it queues the rest for their sessions (zero: always queue); also the bucket size of
    /// `budget`.
    direct_budget: Duration,
    budget: Mutex<Budget>,
    clients: AtomicUsize,
}

impl Hub {
    pub fn new(capacity: usize) -> Self {
        Self::with_direct_budget(capacity, Duration::ZERO)
    }

    /// A hub whose publishes write to parked sessions' sockets themselves for up to `budget`.
    pub fn with_direct_budget(capacity: usize, budget: Duration) -> Self {
        Hub {
            metrics: crate::metrics::WsMetrics::new(),
            inner: Mutex::new(Inner {
                boards: HashMap::new(),
                all: Arc::new(Vec::new()),
            }),
            capacity: capacity.max(1),
            direct_budget: budget,
            budget: Mutex::new(Budget {
                left: budget,
                at: Instant::now(),
            }),
            clients: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new outlet with this hub's queue bound, not yet subscribed.
    pub fn outlet(&self) -> Arc<Outlet> {
        Outlet::new(self.capacity)
    }

    /// Subscribes a new outlet to one board, or to every board with `None`.
    pub fn subscribe(&self, board: Option<i64>) -> Arc<Outlet> {
        let o = self.outlet();
        self.add(&o, board.as_slice());
        o
    }

    /// Subscribes `outlet` to `boards` (every board when empty), and says the latest seq the hub
    /// knows of each at that instant: every event after it reaches the outlet. Undo with
    /// [`Hub::remove`].
    pub fn add(&self, outlet: &Arc<Outlet>, boards: &[i64]) -> Vec<(i64, Option<i64>)> {
        let mut inner = self.lock();
        if boards.is_empty() {
            Arc::make_mut(&mut inner.all).push(outlet.clone());
            return Vec::new();
        }
        let known = boards
            .iter()
            .map(|&b| {
                let entry = inner.boards.entry(b).or_insert_with(|| Board {
                    subs: Arc::new(Vec::new()),
                    seq: None,
                });
                Arc::make_mut(&mut entry.subs).push(outlet.clone());
                (b, entry.seq)
            })
            .collect();
        self.metrics.boards.set(inner.boards.len() as f64);
        known
    }

    /// Unsubscribes `outlet` from `boards` (every board when empty); a board nobody watches any
    /// more is forgotten.
    pub fn remove(&self, outlet: &Arc<Outlet>, boards: &[i64]) {
        let mut inner = self.lock();
        if boards.is_empty() {
            Arc::make_mut(&mut inner.all).retain(|o| !Arc::ptr_eq(o, outlet));
            return;
        }
        for b in boards {
            if let Some(e) = inner.boards.get_mut(b) {
                Arc::make_mut(&mut e.subs).retain(|o| !Arc::ptr_eq(o, outlet));
                if e.subs.is_empty() {
                    inner.boards.remove(b);
                }
            }
        }
        self.metrics.boards.set(inner.boards.len() as f64);
    }

    /// Records a board head fetched from the task service (never moves the known seq back).
    pub fn note_head(&self, board: i64, head: i64) {
        if let Some(e) = self.lock().boards.get_mut(&board) {
            e.seq = Some(e.seq.map_or(head, |s| s.max(head)));
        }
    }

    /// The latest seq known for a watched board.
    pub fn known(&self, board: i64) -> Option<i64> {
        self.lock().boards.get(&board).and_then(|e| e.seq)
    }

    /// How many boards are watched.
    pub fn board_count(&self) -> usize {
        self.lock().boards.len()
    }

    /// Hands `d` to every subscriber of its board and every all-boards subscriber; returns how
    /// many it reached. Within the direct-write budget, frames go straight to the sockets of
    /// parked sessions (see [`Outlet::offer`]); past it, to their queues.
    pub fn publish(&self, d: Delivery) -> usize {
        let (subs, all) = {
            let mut inner = self.lock();
            let all = inner.all.clone();
            let subs = inner.boards.get_mut(&d.board_id).map(|e| {
                if d.kind != Kind::Unsequenced {
                    e.seq = Some(e.seq.map_or(d.seq, |s| s.max(d.seq)));
                }
                e.subs.clone()
            });
            (subs, all)
        };
        let n = subs.as_ref().map_or(0, |s| s.len()) + all.len();
        if let Some(t) = &d.timing {
            // Set before any recipient can finish.
            t.expect(n);
        }
        let allowed = self.allowance();
        let mut direct = !allowed.is_zero();
        let started = Instant::now();
        let mut spent = Duration::ZERO;
        let outlets = subs.iter().flat_map(|s| s.iter()).chain(all.iter());
        for (i, o) in outlets.enumerate() {
            if direct && i % BUDGET_CHECK_EVERY == BUDGET_CHECK_EVERY - 1 {
                spent = started.elapsed();
                direct = spent < allowed;
            }
            o.offer(&d, direct, started, &self.metrics);
        }
        if direct {
            spent = started.elapsed();
        }
        if !allowed.is_zero() {
            self.spend(spent);
        }
        n
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What this publish may spend writing to sockets itself: the bucket, refilled at
    /// 1/DIRECT_SHARE of the time since the last publish, up to `direct_budget`.
    fn allowance(&self) -> Duration {
        if self.direct_budget.is_zero() {
            return Duration::ZERO;
        }
        let mut b = self.budget();
        let now = Instant::now();
        b.left = (b.left + (now - b.at) / DIRECT_SHARE).min(self.direct_budget);
        b.at = now;
        b.left
    }

    fn spend(&self, spent: Duration) {
        let mut b = self.budget();
        b.left = b.left.saturating_sub(spent);
    }

    /// Boards that currently have at least one subscriber.
    pub fn watched_boards(&self) -> Vec<i64> {
        self.lock().boards.keys().copied().collect()
    }

    /// Whether anyone subscribes to every board.
    pub fn has_all_boards_subscribers(&self) -> bool {
        !self.lock().all.is_empty()
    }

    /// Whether anyone would receive an event of `board`.
    pub fn is_watched(&self, board: i64) -> bool {
        let inner = self.lock();
        !inner.all.is_empty() || inner.boards.contains_key(&board)
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
    use crate::fanout::outlet::Lagged;

    fn d(board: i64, seq: i64) -> Delivery {
        Delivery::new(board, seq, format!("{{\"seq\":{seq}}}").as_bytes())
    }

    #[test]
    fn board_subscribers_get_only_their_board() {
        let hub = Hub::new(8);
        let one = hub.subscribe(Some(1));
        let two = hub.subscribe(Some(2));
        assert_eq!(hub.publish(d(1, 1)), 1);
        assert_eq!(one.try_recv().unwrap().unwrap().seq, 1);
        assert!(two.try_recv().unwrap().is_none());
    }

    #[test]
    fn all_boards_subscribers_get_everything() {
        let hub = Hub::new(8);
        let all = hub.subscribe(None);
        hub.publish(d(1, 1));
        hub.publish(d(2, 1));
        assert_eq!(all.try_recv().unwrap().unwrap().board_id, 1);
        assert_eq!(all.try_recv().unwrap().unwrap().board_id, 2);
    }

    #[test]
    fn every_recipient_shares_one_buffer() {
        let hub = Hub::new(8);
        let a = hub.subscribe(Some(1));
        let b = hub.subscribe(Some(1));
        hub.publish(d(1, 1));
        let (x, y) = (
            a.try_recv().unwrap().unwrap(),
            b.try_recv().unwrap().unwrap(),
        );
        assert_eq!(x.frame.as_ptr(), y.frame.as_ptr());
    }

    #[test]
    fn a_receiver_past_capacity_sees_lagged() {
        let hub = Hub::new(2);
        let slow = hub.subscribe(Some(1));
        for s in 1..=2 {
            hub.publish(d(1, s));
        }
        assert_eq!(slow.try_recv().unwrap().unwrap().seq, 1, "within the bound");
        for s in 3..=5 {
            hub.publish(d(1, s));
        }
        assert!(matches!(slow.try_recv(), Err(Lagged)));
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
            let a = hub.subscribe(Some(1));
            let b = hub.subscribe(Some(1));
            let all = hub.subscribe(None);
            hub.publish(Delivery::live(1, 1, b"{}", None));
            let (x, y, z) = (
                a.try_recv().unwrap().unwrap(),
                b.try_recv().unwrap().unwrap(),
                all.try_recv().unwrap().unwrap(),
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
    fn the_direct_write_budget_is_a_share_of_the_time_that_passes() {
        let budget = Duration::from_millis(2);
        let hub = Hub::with_direct_budget(8, budget);
        assert_eq!(hub.allowance(), budget, "full at start");
        hub.spend(budget);
        assert!(hub.allowance() < budget, "spent");
        std::thread::sleep(Duration::from_millis(4));
        assert!(
            hub.allowance() >= Duration::from_millis(1),
            "a quarter of 4 ms came back"
        );
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(hub.allowance(), budget, "never more than one event's worth");
        assert_eq!(Hub::new(8).allowance(), Duration::ZERO, "off");
    }

    #[test]
    fn a_board_channel_is_freed_when_its_last_subscriber_leaves() {
        let hub = Hub::new(2);
        let a = hub.subscribe(Some(7));
        let b = hub.subscribe(Some(7));
        assert_eq!(hub.board_count(), 1);
        hub.remove(&a, &[7]);
        assert_eq!(hub.board_count(), 1, "one subscriber is left");
        assert_eq!(hub.publish(d(7, 1)), 1);
        assert!(a.try_recv().unwrap().is_none(), "removed");
        hub.remove(&b, &[7]);
        assert_eq!(hub.board_count(), 0);
        assert!(hub.watched_boards().is_empty());
    }

    #[test]
    fn a_new_subscriber_learns_the_latest_seq_under_the_same_lock() {
        let hub = Hub::new(8);
        let first = hub.outlet();
        assert_eq!(hub.add(&first, &[3]), [(3, None)], "nothing known yet");
        hub.note_head(3, 5);
        hub.publish(d(3, 6));
        hub.note_head(3, 4);
        let second = hub.outlet();
        assert_eq!(hub.add(&second, &[3]), [(3, Some(6))], "never moves back");
        hub.publish(d(3, 7));
        assert_eq!(second.try_recv().unwrap().unwrap().seq, 7);
        hub.publish(Delivery::unsequenced(3, b"{}"));
        assert_eq!(hub.known(3), Some(7), "unsequenced events do not count");
    }
}
