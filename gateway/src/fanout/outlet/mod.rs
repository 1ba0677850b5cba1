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

use crate::fanout::delivery::{step, Delivery, Kind, Step};
use crate::metrics::WsMetrics;

/// A subscriber that was offered an event less than this long ago gets the next one through its
/// session: a connection with events coming this fast is better served by its own task, which
/// writes everything queued with one `writev`, than by a syscall per frame from the publisher.
pub const MIN_GAP: Duration = Duration::from_millis(20);

/// The subscriber fell more than its queue's bound behind.
#[derive(Debug, PartialEq, Eq)]
pub struct Lagged;

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
}

#[derive(Default)]
struct State {
    queue: VecDeque<Delivery>,
    lagged: bool,
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
        Arc::new(Outlet {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
            deflate,
        })
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
        if s.lagged {
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
    /// [`Lagged`] once the queue overflowed: the session is to be closed as too slow.
    pub fn take(&self, into: &mut Vec<Delivery>, max: usize) -> Result<Option<Rest>, Lagged> {
        let mut s = self.lock();
        if s.lagged {
            return Err(Lagged);
        }
        let n = s.queue.len().min(max);
        into.extend(s.queue.drain(..n));
        Ok(s.rest.take())
    }

    /// Parks the session: `last` moves here, and the publisher may write to the socket until
    /// [`Outlet::unpark`]. Returns false, moving nothing, when something is already waiting.
    pub fn park(&self, last: &mut HashMap<i64, i64>) -> bool {
        let mut s = self.lock();
        if s.lagged || s.rest.is_some() || !s.queue.is_empty() {
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
mod tests {
    use super::*;

    fn d(board: i64, seq: i64) -> Delivery {
        Delivery::new(board, seq, format!("{{\"seq\":{seq}}}").as_bytes())
    }

    /// Offer times far enough apart for every offer to be a sparse one.
    fn next() -> Instant {
        use std::sync::atomic::{AtomicU64, Ordering};
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        static N: AtomicU64 = AtomicU64::new(0);
        let base = *BASE.get_or_init(Instant::now);
        base + MIN_GAP * (N.fetch_add(1, Ordering::Relaxed) as u32 + 1) * 2
    }

    #[test]
    fn a_full_queue_marks_the_subscriber_lagged_and_frees_it() {
        let m = WsMetrics::new();
        let o = Outlet::new(2);
        assert_eq!(o.offer(&d(1, 1), true, next(), &m), Offered::Queued);
        assert_eq!(o.offer(&d(1, 2), true, next(), &m), Offered::Queued);
        assert_eq!(o.offer(&d(1, 3), true, next(), &m), Offered::Queued);
        assert!(matches!(o.try_recv(), Err(Lagged)));
        assert_eq!(o.offer(&d(1, 4), true, next(), &m), Offered::Dropped);
        assert!(
            o.lock().queue.is_empty(),
            "nothing is kept for a closing session"
        );
    }

    #[test]
    fn a_session_parks_only_with_nothing_waiting_and_gets_its_last_back() {
        let m = WsMetrics::new();
        let o = Outlet::new(8);
        let mut last = HashMap::from([(1, 4)]);
        assert!(o.park(&mut last));
        assert!(last.is_empty(), "moved, not copied");
        // No socket attached: queued, never written here.
        assert_eq!(o.offer(&d(1, 5), true, next(), &m), Offered::Queued);
        o.unpark(&mut last);
        assert_eq!(last, HashMap::from([(1, 4)]));
        assert!(!o.park(&mut last), "an event is waiting");
        assert_eq!(last, HashMap::from([(1, 4)]));
        let mut got = Vec::new();
        assert!(o.take(&mut got, 64).unwrap().is_none());
        assert_eq!(got.iter().map(|d| d.seq).collect::<Vec<_>>(), [5]);
    }

    /// A connected pair: the server side attached to a new outlet, and the client side.
    async fn attached(capacity: usize) -> (Arc<Outlet>, TcpStream, Arc<TcpStream>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let server = Arc::new(l.accept().await.unwrap().0);
        // Writable once the connection is up (try_write relies on the readiness tokio saw).
        server.writable().await.unwrap();
        let o = Outlet::new(capacity);
        o.attach(server.clone());
        (o, client, server)
    }

    async fn read_frames(client: &mut TcpStream, frames: &[&Delivery]) {
        use tokio::io::AsyncReadExt;
        let want: Vec<u8> = frames.iter().flat_map(|d| d.frame.to_vec()).collect();
        let mut got = vec![0u8; want.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn a_parked_session_gets_the_boards_next_event_written_by_the_publisher() {
        let m = WsMetrics::new();
        let (o, mut client, _server) = attached(8).await;
        let mut last = HashMap::from([(1, 4)]);
        assert!(o.park(&mut last));
        let (e5, e6) = (d(1, 5), d(1, 6));
        assert_eq!(o.offer(&e5, true, next(), &m), Offered::Direct);
        assert_eq!(
            o.offer(&e5, true, next(), &m),
            Offered::Dropped,
            "already sent"
        );
        assert_eq!(o.offer(&e6, true, next(), &m), Offered::Direct);
        let other = d(2, 1);
        assert_eq!(
            o.offer(&other, true, next(), &m),
            Offered::Direct,
            "a board without a start"
        );
        read_frames(&mut client, &[&e5, &e6, &other]).await;
        o.unpark(&mut last);
        assert_eq!(
            last,
            HashMap::from([(1, 6), (2, 1)]),
            "what the publisher wrote"
        );
        assert!(
            o.try_recv().unwrap().is_none(),
            "nothing left for the session"
        );
    }

    #[tokio::test]
    async fn a_subscriber_whose_events_come_fast_gets_them_through_its_session() {
        let m = WsMetrics::new();
        let (o, mut client, _server) = attached(8).await;
        let mut last = HashMap::new();
        assert!(o.park(&mut last));
        let t = Instant::now();
        let (e1, e2, e3) = (d(1, 1), d(1, 2), d(1, 3));
        assert_eq!(o.offer(&e1, true, t, &m), Offered::Direct);
        assert_eq!(
            o.offer(&e2, true, t + MIN_GAP / 2, &m),
            Offered::Queued,
            "too soon after the last"
        );
        o.unpark(&mut last);
        let mut got = Vec::new();
        o.take(&mut got, 64).unwrap();
        assert_eq!(got.iter().map(|d| d.seq).collect::<Vec<_>>(), [2]);
        last.insert(1, 2);
        assert!(o.park(&mut last));
        assert_eq!(o.offer(&e3, true, t + MIN_GAP * 2, &m), Offered::Direct);
        read_frames(&mut client, &[&e1, &e3]).await;
    }

    #[tokio::test]
    async fn a_gap_is_left_to_the_session_and_what_follows_it_queues_behind() {
        let m = WsMetrics::new();
        let (o, _client, _server) = attached(8).await;
        let mut last = HashMap::from([(1, 4)]);
        assert!(o.park(&mut last));
        assert_eq!(
            o.offer(&d(1, 7), true, next(), &m),
            Offered::Queued,
            "5 and 6 are missing"
        );
        assert_eq!(
            o.offer(&d(1, 8), true, next(), &m),
            Offered::Queued,
            "in order behind 7"
        );
        assert_eq!(
            o.offer(&Delivery::head(1, 9), true, next(), &m),
            Offered::Queued
        );
        o.unpark(&mut last);
        assert_eq!(last, HashMap::from([(1, 4)]));
        let mut got = Vec::new();
        o.take(&mut got, 64).unwrap();
        assert_eq!(got.iter().map(|d| d.seq).collect::<Vec<_>>(), [7, 8, 9]);
    }

    #[tokio::test]
    async fn nothing_is_written_directly_unless_parked_and_allowed() {
        let m = WsMetrics::new();
        let (o, _client, _server) = attached(8).await;
        assert_eq!(
            o.offer(&d(1, 1), true, next(), &m),
            Offered::Queued,
            "not parked"
        );
        let mut got = Vec::new();
        o.take(&mut got, 64).unwrap();
        let mut last = HashMap::new();
        assert!(o.park(&mut last));
        assert_eq!(
            o.offer(&d(1, 2), false, next(), &m),
            Offered::Queued,
            "over budget"
        );
        let mut last = HashMap::new();
        o.unpark(&mut last);
        o.take(&mut got, 64).unwrap();
        o.detach();
        assert!(o.park(&mut last));
        assert_eq!(
            o.offer(&d(1, 3), true, next(), &m),
            Offered::Queued,
            "detached"
        );
    }

    #[tokio::test]
    async fn a_frame_the_socket_takes_only_part_of_is_finished_by_the_session() {
        let m = WsMetrics::new();
        let (o, mut client, _server) = attached(8).await;
        let mut last = HashMap::new();
        assert!(o.park(&mut last));
        // Far larger than the socket's buffers while the client reads nothing.
        let big = Delivery::new(1, 1, &vec![b'x'; 16 << 20]);
        assert_eq!(o.offer(&big, true, next(), &m), Offered::Direct);
        let after = d(1, 2);
        assert_eq!(
            o.offer(&after, true, next(), &m),
            Offered::Queued,
            "behind the rest"
        );
        assert!(!o.park(&mut last), "the rest is waiting");
        o.unpark(&mut last);
        assert_eq!(
            last,
            HashMap::from([(1, 1)]),
            "a frame begun counts as sent"
        );
        let mut queued = Vec::new();
        let (rest, of) = o.take(&mut queued, 64).unwrap().expect("the rest");
        assert_eq!(of.seq, 1);
        assert!(!rest.is_empty() && rest.len() < big.frame.len());
        assert_eq!(&big.frame[big.frame.len() - rest.len()..], &rest[..]);
        assert_eq!(queued.iter().map(|d| d.seq).collect::<Vec<_>>(), [2]);
        // The client gets the start of the frame now; the session writes `rest` after it.
        use tokio::io::AsyncReadExt;
        let mut start = vec![0u8; big.frame.len() - rest.len()];
        client.read_exact(&mut start).await.unwrap();
        assert_eq!(&start[..], &big.frame[..start.len()]);
    }

    #[tokio::test]
    async fn a_full_socket_leaves_the_event_to_the_session() {
        let m = WsMetrics::new();
        let (o, _client, server) = attached(8).await;
        let chunk = vec![0u8; 1 << 16];
        while server.try_write(&chunk).is_ok() {}
        let mut last = HashMap::new();
        assert!(o.park(&mut last));
        assert_eq!(o.offer(&d(1, 1), true, next(), &m), Offered::Queued);
        o.unpark(&mut last);
        assert!(last.is_empty(), "not sent");
    }
}
