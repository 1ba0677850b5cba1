//! One subscriber's end of the fan-out: its bounded queue and, while its session is parked with
//! nothing to write, its socket, to which the publisher writes the board's next frame itself
//! (no task wake-up per event and subscriber); the session takes over whenever a frame would not
//! go out whole at once, or anything else than the next event in seq order comes.
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::fanout::access::Revoked;
use crate::fanout::delivery::{step, Delivery, Kind, Step};
use crate::metrics::WsMetrics;

/// A subscriber that was offered an event less than this long ago gets the next one through its
/// session: a connection with events coming this fast is better served by its own task, which
/// writes everything queued with one `writev`, than by a syscall per frame from the publisher.
pub const MIN_GAP: Duration = Duration::from_millis(20);

/// The subscriber fell more than its queue's bound behind.
#[derive(Debug, PartialEq, Eq)]
pub struct Lagged;

/// Why a session is to stop taking deliveries.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// Its queue overflowed: closed as too slow.
    Lagged,
    /// An access change reached it (everything delivered before the change has been taken).
    Revoked(Revoked),
}

/// The rest of a frame a direct write left half-sent, and the delivery it belongs to.
pub type Rest = (Bytes, Delivery);

/// How [`Outlet::offer`] handed a delivery on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    /// Written to the socket by the publisher (whole, or begun and left to the session).
    Direct,
    /// Queued for the session, which was woken.
    Queued,
    /// Nothing to do (already sent, or the subscriber is being closed as too slow).
    Dropped,
}

/// One subscriber, shared by the hub's board lists and its session.
pub struct Outlet {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
    /// Its socket negotiated permessage-deflate: it gets events' compressed frames.
    deflate: bool,
    /// The user whose socket it is (`None`: AUTH=off, or the service role), for access changes.
    user: Option<i64>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Delivery>,
    lagged: bool,
    /// An access change reached it: nothing more is offered, and the session closes once it has
    /// written what came before.
    revoked: Option<Revoked>,
    /// The connection's socket, once its session runs on plain TCP.
    sock: Option<Arc<TcpStream>>,
    /// While the session is parked with nothing to write: its last seq per board, moved here so
    /// that the publisher can write the next events itself and keep it current.
    parked: Option<HashMap<i64, i64>>,
    /// What the session must write before anything else.
    rest: Option<Rest>,
    /// When the last event was offered (see [`MIN_GAP`]).
    offered_at: Option<Instant>,
}

impl Outlet {
    /// An outlet whose queue holds at most `capacity` deliveries.
    pub fn new(capacity: usize) -> Arc<Self> {
        Self::with_deflate(capacity, false)
    }

    /// An outlet whose socket gets compressed frames (`deflate`) or plain ones.
    pub fn with_deflate(capacity: usize, deflate: bool) -> Arc<Self> {
        Self::for_user(capacity, deflate, None)
    }

    /// An outlet of `user`'s socket (access changes naming them reach it).
    pub fn for_user(capacity: usize, deflate: bool, user: Option<i64>) -> Arc<Self> {
        Arc::new(Outlet {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
            deflate,
            user,
        })
    }

    /// The user whose socket it is.
    pub fn user(&self) -> Option<i64> {
        self.user
    }

    /// Stops offering it anything (`why` closes the session once what came before is written).
    pub fn revoke(&self, why: Revoked) {
        let mut s = self.lock();
        if s.revoked.is_none() {
            s.revoked = Some(why);
        }
        drop(s);
        self.notify.notify_one();
    }

    /// Whether its socket negotiated permessage-deflate.
    pub fn deflate(&self) -> bool {
        self.deflate
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `d` on at `now`. With `direct`, a parked session's next frame is written to its
    /// socket here, when the socket takes at least part of it at once (the session finishes a
    /// part) and the previous event came at least [`MIN_GAP`] before; anything else is queued and
    /// the session woken. A subscriber whose queue is full is marked lagged. The socket write
    /// happens under this outlet's lock, which only its own session contends.
    pub fn offer(&self, d: &Delivery, direct: bool, now: Instant, m: &WsMetrics) -> Offered {
        let mut guard = self.lock();
        let s = &mut *guard;
        if s.lagged || s.revoked.is_some() {
            d.done(m);
            return Offered::Dropped;
        }
        let sparse = s
            .offered_at
            .is_none_or(|t| now.saturating_duration_since(t) >= MIN_GAP);
        s.offered_at = Some(now);
        if direct && sparse && s.rest.is_none() && s.queue.is_empty() {
            if let (Some(last), Some(sock)) = (s.parked.as_mut(), s.sock.as_ref()) {
                match step(d.kind, d.seq, last.get(&d.board_id).copied()) {
                    Step::Skip => {
                        d.done(m);
                        return Offered::Dropped;
                    }
                    Step::Write => match sock.try_write(d.wire(self.deflate)) {
                        Ok(n) if n > 0 => {
                            if d.kind == Kind::Event {
                                last.insert(d.board_id, d.seq);
                            }
                            m.direct_writes.increment(1);
                            let wire = d.wire(self.deflate);
                            if n == wire.len() {
                                m.frames_sent.increment(1);
                                m.bytes_sent.increment(n as u64);
                                d.done(m);
                                return Offered::Direct;
                            }
                            // The socket's buffer is full: the session sends the rest (under
                            // its write deadline) before anything else.
                            s.rest = Some((wire.slice(n..), d.clone()));
                            drop(guard);
                            self.notify.notify_one();
                            return Offered::Direct;
                        }
                        // Would block (or failed; the session's own write will say how).
                        _ => {}
                    },
                    Step::Fetch => {}
                }
            }
        }
        if s.queue.len() >= self.capacity {
            s.lagged = true;
            for q in s.queue.drain(..) {
                q.done(m);
            }
            d.done(m);
        } else {
            s.queue.push_back(d.clone());
        }
        drop(guard);
        self.notify.notify_one();
        Offered::Queued
    }

    /// Gives the publisher the session's socket for direct writes.
    pub fn attach(&self, sock: Arc<TcpStream>) {
        self.lock().sock = Some(sock);
    }

    /// Takes the socket back (the session is ending): nothing is written to it from here on.
    pub fn detach(&self) {
        let mut s = self.lock();
        s.sock = None;
        s.parked = None;
    }

    /// Takes up to `max` queued deliveries into `into`, and the rest of a half-written frame,
    /// which goes first.
    ///
    /// # Errors
    /// [`Stop::Lagged`] once the queue overflowed: the session is to be closed as too slow;
    /// [`Stop::Revoked`] once an access change reached it and nothing from before is left.
    pub fn take(&self, into: &mut Vec<Delivery>, max: usize) -> Result<Option<Rest>, Stop> {
        let mut s = self.lock();
        if s.lagged {
            return Err(Stop::Lagged);
        }
        if s.queue.is_empty() && s.rest.is_none() {
            if let Some(r) = &s.revoked {
                return Err(Stop::Revoked(r.clone()));
            }
        }
        let n = s.queue.len().min(max);
        into.extend(s.queue.drain(..n));
        Ok(s.rest.take())
    }

    /// Parks the session: `last` moves here, and the publisher may write to the socket until
    /// [`Outlet::unpark`]. Returns false, moving nothing, when something is already waiting.
    pub fn park(&self, last: &mut HashMap<i64, i64>) -> bool {
        let mut s = self.lock();
        if s.lagged || s.revoked.is_some() || s.rest.is_some() || !s.queue.is_empty() {
            return false;
        }
        s.parked = Some(std::mem::take(last));
        true
    }

    /// Ends a park before the session writes anything itself: `last` comes back, with what the
    /// publisher wrote meanwhile. Waits for a direct write in progress.
    pub fn unpark(&self, last: &mut HashMap<i64, i64>) {
        if let Some(l) = self.lock().parked.take() {
            *last = l;
        }
    }

    /// Completes when something was queued (or may have been) since the last call.
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// One queued delivery, without waiting (`Ok(None)` when there is none).
    ///
    /// # Errors
    /// [`Lagged`] once the queue overflowed.
    pub fn try_recv(&self) -> Result<Option<Delivery>, Lagged> {
        let mut s = self.lock();
        if s.lagged {
            return Err(Lagged);
        }
        Ok(s.queue.pop_front())
    }
}

#[cfg(test)]
mod tests;
