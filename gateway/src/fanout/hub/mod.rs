//! The fan-out hub: the subscribers ([`Outlet`]s) of each watched board (plus those that watch
//! every board), forgotten when the last one leaves; each event is one shared `Bytes`. Per board
//! it also knows the latest seq it has seen, which is where a new subscriber without `since`
//! starts.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use std::time::Duration;

use bytes::Bytes;

use crate::fanout::access::Change;
use crate::fanout::budget::DirectBudget;
use crate::fanout::delivery::{Delivery, Kind};
use crate::fanout::outlet::Outlet;
use crate::ws::deflate::Compressor;

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
    /// Boards (`None`: every board) that gained their first subscriber or lost their last since
    /// the intake last looked.
    changed: HashSet<Option<i64>>,
}

/// How often (in recipients) a publish looks at the clock to see whether its direct-write budget
/// is spent.
const BUDGET_CHECK_EVERY: usize = 16;
/// The hub. Cheap operations under a short std mutex; no I/O ever happens while it is held.
pub struct Hub {
    pub metrics: crate::metrics::WsMetrics,
    inner: Mutex<Inner>,
    /// Per-subscriber queue bound: a subscriber further behind than this is closed with 1013.
    capacity: usize,
    /// How long one publish may spend writing frames to parked sessions' sockets itself before
    /// it queues the rest for their sessions (zero: always queue).
    budget: DirectBudget,
    clients: AtomicUsize,
    /// Woken when `changed` gains an entry.
    changes: tokio::sync::Notify,
    /// Whether the server has confirmed this gateway's subscription to every board (set by the
    /// intake): an all-boards client is answered once it has, so it misses nothing after.
    all_live: tokio::sync::watch::Sender<bool>,
    /// permessage-deflate (WS_DEFLATE=on): the compressor every event's compressed frame is
    /// built with, once per event, and the smallest payload worth compressing.
    deflate: Option<(Mutex<Compressor>, usize)>,
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
                changed: HashSet::new(),
            }),
            capacity: capacity.max(1),
            budget: DirectBudget::new(budget),
            clients: AtomicUsize::new(0),
            changes: tokio::sync::Notify::new(),
            all_live: tokio::sync::watch::channel(false).0,
            deflate: None,
        }
    }

    /// Offers permessage-deflate to clients and compresses events of at least `min_bytes` for
    /// those that accept it.
    #[must_use]
    pub fn with_deflate(mut self, min_bytes: usize) -> Self {
        self.deflate = Some((Mutex::new(Compressor::default()), min_bytes));
        self
    }

    /// Whether clients are offered compression.
    pub fn deflates(&self) -> bool {
        self.deflate.is_some()
    }

    /// The compressed frame of `payload` (one message on its own), when compression is on and
    /// it is worth it.
    pub fn deflated(&self, payload: &[u8]) -> Option<Bytes> {
        let (c, min) = self.deflate.as_ref()?;
        if payload.len() < *min {
            return None;
        }
        let f = c.lock().unwrap_or_else(|p| p.into_inner()).frame(payload);
        if f.is_some() {
            self.metrics.frames_deflated.increment(1);
        }
        f
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new outlet of `user`'s socket with this hub's queue bound, not yet subscribed.
    pub fn outlet(&self, deflate: bool, user: Option<i64>) -> Arc<Outlet> {
        Outlet::for_user(self.capacity, deflate && self.deflates(), user)
    }

    /// Subscribes a new outlet to one board, or to every board with `None`.
    pub fn subscribe(&self, board: Option<i64>) -> Arc<Outlet> {
        let o = self.outlet(false, None);
        self.add(&o, board.as_slice());
        o
    }

    /// Subscribes `outlet` to `boards` (every board when empty), and says the latest seq the hub
    /// knows of each at that instant: every event after it reaches the outlet. Undo with
    /// [`Hub::remove`].
    pub fn add(&self, outlet: &Arc<Outlet>, boards: &[i64]) -> Vec<(i64, Option<i64>)> {
        let mut inner = self.lock();
        let before = inner.changed.len();
        if boards.is_empty() {
            if inner.all.is_empty() {
                inner.changed.insert(None);
            }
            Arc::make_mut(&mut inner.all).push(outlet.clone());
            self.signal(inner, before);
            return Vec::new();
        }
        let mut fresh = Vec::new();
        let known = boards
            .iter()
            .map(|&b| {
                let entry = inner.boards.entry(b).or_insert_with(|| {
                    fresh.push(b);
                    Board {
                        subs: Arc::new(Vec::new()),
                        seq: None,
                    }
                });
                Arc::make_mut(&mut entry.subs).push(outlet.clone());
                (b, entry.seq)
            })
            .collect();
        inner.changed.extend(fresh.into_iter().map(Some));
        self.metrics.boards.set(inner.boards.len() as f64);
        self.signal(inner, before);
        known
    }

    /// Wakes the intake if `changed` grew since it held `before` entries.
    fn signal(&self, inner: std::sync::MutexGuard<'_, Inner>, before: usize) {
        let grew = inner.changed.len() > before;
        drop(inner);
        if grew {
            self.changes.notify_one();
        }
    }

    /// Waits until a board has gained its first subscriber or lost its last (at once if one has
    /// since the last [`Hub::take_changes`]).
    pub async fn changed(&self) {
        self.changes.notified().await;
    }

    /// The boards (`None`: every board) whose first subscriber arrived or last one left since the
    /// last call, each with whether it is watched now.
    pub fn take_changes(&self) -> Vec<(Option<i64>, bool)> {
        let mut inner = self.lock();
        let changed = std::mem::take(&mut inner.changed);
        changed
            .into_iter()
            .map(|k| {
                let watched = match k {
                    Some(b) => inner.boards.contains_key(&b),
                    None => !inner.all.is_empty(),
                };
                (k, watched)
            })
            .collect()
    }

    /// Unsubscribes `outlet` from `boards` (every board when empty); a board nobody watches any
    /// more is forgotten.
    pub fn remove(&self, outlet: &Arc<Outlet>, boards: &[i64]) {
        let mut inner = self.lock();
        let before = inner.changed.len();
        if boards.is_empty() {
            Arc::make_mut(&mut inner.all).retain(|o| !Arc::ptr_eq(o, outlet));
            if inner.all.is_empty() {
                inner.changed.insert(None);
            }
            self.signal(inner, before);
            return;
        }
        for b in boards {
            if let Some(e) = inner.boards.get_mut(b) {
                Arc::make_mut(&mut e.subs).retain(|o| !Arc::ptr_eq(o, outlet));
                if e.subs.is_empty() {
                    inner.boards.remove(b);
                    inner.changed.insert(Some(*b));
                }
            }
        }
        self.metrics.boards.set(inner.boards.len() as f64);
        self.signal(inner, before);
    }

    /// Applies an access change of `board`, published just before: the outlets it reaches leave
    /// the board (nothing later is offered to them) and their sessions close once they have
    /// written what came before. Returns how many it reached.
    pub fn revoke(&self, board: i64, change: &Change) -> usize {
        let reached: Vec<Arc<Outlet>> = {
            let mut inner = self.lock();
            let before = inner.changed.len();
            let Some(e) = inner.boards.get_mut(&board) else {
                return 0;
            };
            let (reached, kept): (Vec<_>, Vec<_>) = e
                .subs
                .iter()
                .cloned()
                .partition(|o| change.reaches(o.user()));
            if reached.is_empty() {
                return 0;
            }
            e.subs = Arc::new(kept);
            if e.subs.is_empty() {
                inner.boards.remove(&board);
                inner.changed.insert(Some(board));
            }
            self.metrics.boards.set(inner.boards.len() as f64);
            self.signal(inner, before);
            reached
        };
        let why = change.close(board);
        for o in &reached {
            o.revoke(why.clone());
        }
        reached.len()
    }

    /// The intake has (or no longer has) a confirmed subscription to every board.
    pub fn set_all_boards_live(&self, live: bool) {
        self.all_live.send_replace(live);
    }

    /// Waits up to `within` until the subscription to every board is confirmed; whether it is.
    pub async fn all_boards_live(&self, within: Duration) -> bool {
        let mut rx = self.all_live.subscribe();
        let live = tokio::time::timeout(within, rx.wait_for(|live| *live))
            .await
            .is_ok_and(|r| r.is_ok());
        live
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
    pub fn publish(&self, mut d: Delivery) -> usize {
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
        let mut outlets = subs.iter().flat_map(|s| s.iter()).chain(all.iter());
        if d.kind != Kind::Head && d.deflated.is_none() && outlets.any(|o| o.deflate()) {
            // Once per event, whatever the number of recipients that negotiated compression.
            d.deflated = self.deflated(crate::ws::frame::payload(&d.frame));
        }
        if let Some(t) = &d.timing {
            // Set before any recipient can finish.
            t.expect(n);
        }
        let allowed = self.budget.allowance();
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
            self.budget.spend(spent);
        }
        n
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

    /// Whether `board` has a subscriber of its own.
    pub fn is_watched_board(&self, board: i64) -> bool {
        self.lock().boards.contains_key(&board)
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
mod tests;
