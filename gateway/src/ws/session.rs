//! One WebSocket connection: replays from `since`, then forwards live events in per-board seq
//! order (never twice, gaps fetched from the task service), pings, and closes with a code that
//! says why (1001 shutdown or ping timeout, 1013 too slow or replay unavailable).
//!
//! Events arrive as complete pre-built frames shared by every recipient; the session writes them to
//! its socket as they are, several at once with one vectored write when more are queued. What the
//! client sends (pongs, pings, close) is read by `inbound`, whose buffer is empty while it is silent.
use std::collections::HashMap;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use futures_util::StreamExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};
use tokio_stream::StreamMap;
use tokio_util::sync::CancellationToken;

use super::inbound::{self, Kind, ReadError};
use super::Subscription;
use crate::hub::{text_frame, Delivery, Hub};
use crate::tasks_client::TasksClient;

/// Largest message accepted from a client (clients have nothing to say but pongs and close).
const MAX_INBOUND: usize = 4096;
/// Events per ListEvents call during replay.
const REPLAY_PAGE: i32 = 1000;
/// How long a close handshake may take before the socket is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Most queued events written with one vectored write (the kernel's IOV_MAX is 1024; 64 frames
/// of a few hundred bytes already fill a socket buffer's worth).
const MAX_BATCH: usize = 64;

/// Timing settings of every session.
#[derive(Clone, Copy, Debug)]
pub struct SessionSettings {
    pub ping_interval: Duration,
    pub write_timeout: Duration,
}

/// A connection, subscribed and waiting for its upgrade to complete.
pub struct Session {
    ctx: Ctx,
    feed: Feed,
}

/// What a running session reads from.
struct Ctx {
    hub: Arc<Hub>,
    tasks: TasksClient,
    settings: SessionSettings,
    sub: Subscription,
    shutdown: CancellationToken,
    peer: SocketAddr,
}

/// Why a session ended (logged; the close code already told the client).
#[derive(Debug)]
enum End {
    ClientClosed(u16),
    Shutdown,
    SlowConsumer,
    PingTimeout,
    ReplayUnavailable,
    WriteTimeout,
    Io(String),
}

impl End {
    /// The `reason` label of `taskboard_ws_disconnects_total`.
    fn label(&self) -> &'static str {
        match self {
            End::ClientClosed(_) => "client_closed",
            End::Shutdown => "shutdown",
            End::SlowConsumer => "slow_consumer",
            End::PingTimeout => "ping_timeout",
            End::ReplayUnavailable => "replay_unavailable",
            End::WriteTimeout => "write_timeout",
            End::Io(_) => "error",
        }
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::ClientClosed(code) => write!(f, "client closed ({code})"),
            End::Shutdown => f.write_str("server shutting down (1001)"),
            End::SlowConsumer => f.write_str("slow consumer (1013)"),
            End::PingTimeout => f.write_str("ping timeout (1001)"),
            End::ReplayUnavailable => f.write_str("replay unavailable (1013)"),
            End::WriteTimeout => f.write_str("write timed out"),
            End::Io(e) => write!(f, "connection error: {e}"),
        }
    }
}

/// Whether a close code may be sent back (1005, 1006 and 1015 are only ever reported locally).
fn sendable(code: u16) -> u16 {
    match code {
        1000..=1003 | 1007..=1014 | 3000..=4999 => code,
        _ => 1000,
    }
}

/// The live feed of a session: one receiver (one board, or all boards) or several boards merged.
enum Feed {
    One(broadcast::Receiver<Delivery>),
    Many(StreamMap<i64, BroadcastStream<Delivery>>),
}

enum FeedError {
    Lagged,
    Closed,
}

impl Feed {
    fn new(hub: &Hub, boards: &[i64]) -> Feed {
        match boards {
            [] => Feed::One(hub.subscribe(None)),
            [b] => Feed::One(hub.subscribe(Some(*b))),
            many => Feed::Many(
                many.iter()
                    .map(|b| (*b, BroadcastStream::new(hub.subscribe(Some(*b)))))
                    .collect(),
            ),
        }
    }

    async fn recv(&mut self) -> Result<Delivery, FeedError> {
        match self {
            Feed::One(rx) => rx.recv().await.map_err(|e| match e {
                broadcast::error::RecvError::Lagged(_) => FeedError::Lagged,
                broadcast::error::RecvError::Closed => FeedError::Closed,
            }),
            Feed::Many(m) => match m.next().await {
                Some((_, Ok(d))) => Ok(d),
                Some((_, Err(BroadcastStreamRecvError::Lagged(_)))) => Err(FeedError::Lagged),
                None => Err(FeedError::Closed),
            },
        }
    }

    /// An event that is already queued, without waiting (`None` when there is none, or when the
    /// receiver lagged: the next `recv` reports that).
    fn try_recv(&mut self) -> Option<Delivery> {
        match self {
            Feed::One(rx) => rx.try_recv().ok(),
            Feed::Many(m) => match futures_util::FutureExt::now_or_never(m.next()) {
                Some(Some((_, Ok(d)))) => Some(d),
                _ => None,
            },
        }
    }
}

impl Session {
    /// Subscribes to the hub at once, before the upgrade is answered: a client that has its 101
    /// never misses an event published after it. Anything older comes from `since`.
    pub fn subscribe(
        hub: Arc<Hub>,
        tasks: TasksClient,
        settings: SessionSettings,
        sub: Subscription,
        shutdown: CancellationToken,
        peer: SocketAddr,
    ) -> Session {
        let feed = Feed::new(&hub, &sub.boards);
        Session {
            ctx: Ctx {
                hub,
                tasks,
                settings,
                sub,
                shutdown,
                peer,
            },
            feed,
        }
    }

    /// Runs the session on the upgraded socket until it ends.
    pub async fn run(self, ws: WebSocket<TokioIo<Upgraded>>) {
        let Session { ctx, feed } = self;
        let total = ctx.hub.client_connected();
        tracing::info!(peer.addr = %ctx.peer, boards = ?ctx.sub.boards, "➕ Client connected. Total clients: {total}");
        let upgraded = ws.into_inner().into_inner();
        // The plain TCP socket splits without a lock (bytes hyper read past the request, if any,
        // are read first); anything else (never, with hyper's server over TCP) goes through
        // tokio's generic split.
        let end = match upgraded.downcast::<TokioIo<TcpStream>>() {
            // An empty read_buf still pins hyper's whole read buffer: drop it.
            Ok(parts) if parts.read_buf.is_empty() => {
                let (r, w) = parts.io.into_inner().into_split();
                ctx.serve(r, w, feed).await
            }
            Ok(parts) => {
                let (r, w) = parts.io.into_inner().into_split();
                let r = std::io::Cursor::new(parts.read_buf).chain(r);
                ctx.serve(r, w, feed).await
            }
            Err(upgraded) => {
                let (r, w) = tokio::io::split(TokioIo::new(upgraded));
                ctx.serve(r, w, feed).await
            }
        };
        crate::metrics::disconnect(end.label());
        if matches!(end, End::SlowConsumer) {
            ctx.hub.metrics.slow_consumers.increment(1);
        }
        let total = ctx.hub.client_disconnected();
        tracing::info!(peer.addr = %ctx.peer, reason = %end, "➖ Client disconnected. Total clients: {total}");
    }
}

/// The writing side: raw frames to the socket, with a deadline on every write.
struct Writer<W> {
    io: W,
    timeout: Duration,
    /// Scratch space for control frames.
    scratch: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    async fn bytes(&mut self, b: &[u8]) -> Result<(), End> {
        match tokio::time::timeout(self.timeout, self.io.write_all(b)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::Io(e.to_string())),
            Err(_) => Err(End::WriteTimeout),
        }
    }

    /// Writes several frames with as few syscalls as the socket allows.
    async fn frames<F: AsRef<[u8]>>(&mut self, frames: &[F]) -> Result<(), End> {
        let write_all = async {
            let mut first = 0; // first frame not completely written
            let mut offset = 0; // bytes of it already written
            while first < frames.len() {
                let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() - first);
                slices.push(IoSlice::new(&frames[first].as_ref()[offset..]));
                slices.extend(frames[first + 1..].iter().map(|f| IoSlice::new(f.as_ref())));
                let mut n = self.io.write_vectored(&slices).await?;
                if n == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
                }
                while first < frames.len() && n > 0 {
                    let left = frames[first].as_ref().len() - offset;
                    if n >= left {
                        n -= left;
                        first += 1;
                        offset = 0;
                    } else {
                        offset += n;
                        n = 0;
                    }
                }
            }
            Ok::<(), std::io::Error>(())
        };
        match tokio::time::timeout(self.timeout, write_all).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::Io(e.to_string())),
            Err(_) => Err(End::WriteTimeout),
        }
    }

    async fn control(&mut self, mut frame: Frame<'_>) -> Result<(), End> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let r = self.bytes(frame.write(&mut scratch)).await;
        self.scratch = scratch;
        r
    }
}

impl Ctx {
    async fn serve<R, W>(&self, r: R, w: W, mut feed: Feed) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut rd = inbound::Reader::new(r, MAX_INBOUND);
        let mut wr = Writer {
            io: w,
            timeout: self.settings.write_timeout,
            scratch: Vec::new(),
        };

        // The feed was subscribed before the replay, so nothing committed in between is missed;
        // live events the replay already covered are skipped by seq.
        let mut last: HashMap<i64, i64> = HashMap::new();

        if !self.sub.since.is_empty() {
            self.hub.metrics.resumes.increment(1);
        }
        for (&board, &since) in &self.sub.since {
            last.insert(board, since);
            let replayed = tokio::select! {
                r = Box::pin(self.replay(&mut wr, board, &mut last)) => r,
                _ = self.shutdown.cancelled() => Err(End::Shutdown),
            };
            if let Err(end) = replayed {
                return self.close_for(&mut wr, &mut rd, end, &last).await;
            }
        }

        let mut ping = tokio::time::interval(self.settings.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut awaiting_pong = false;
        let mut batch: Vec<Delivery> = Vec::new();
        // Registered once, not on every wake-up of the loop (that showed up in profiles).
        let cancelled = self.shutdown.cancelled();
        tokio::pin!(cancelled);

        loop {
            let end = tokio::select! {
                biased;
                _ = &mut cancelled => End::Shutdown,
                // Events first: when one is queued the loop goes straight to writing, without
                // polling the socket's read side on every wake-up. The reader and the ping timer
                // run as soon as the queue is empty (a busy connection is alive by definition).
                d = feed.recv() => match d {
                    Ok(d) => match self.deliver(&mut wr, &mut feed, d, &mut last, &mut batch).await {
                        Ok(()) => continue,
                        Err(e) => e,
                    },
                    Err(FeedError::Lagged) => End::SlowConsumer,
                    Err(FeedError::Closed) => End::Shutdown,
                },
                // Cancel-safe: a partly read frame stays in the reader's buffer.
                f = rd.next() => match f {
                    Ok(f) => match f.kind {
                        Kind::Close => {
                            let (code, reason) = close_of(&f.payload);
                            tracing::debug!(peer.addr = %self.peer, code, %reason, "client sent close");
                            // Answer the client's close with the same code, then stop.
                            let _ = wr.control(Frame::close(sendable(code), b"")).await;
                            return End::ClientClosed(code);
                        }
                        Kind::Ping => match wr.control(Frame::pong(Payload::Owned(f.payload))).await {
                            Ok(()) => continue,
                            Err(e) => e,
                        },
                        Kind::Pong => { awaiting_pong = false; continue; }
                        Kind::Data => continue,
                    },
                    Err(ReadError::Protocol { close_code, reason }) => {
                        let _ = wr.control(Frame::close(close_code, reason.as_bytes())).await;
                        return End::Io(format!("client broke the protocol: {reason}"));
                    }
                    Err(e) => return End::Io(format!("{e:?}")),
                },
                _ = ping.tick() => {
                    if awaiting_pong {
                        End::PingTimeout
                    } else {
                        awaiting_pong = true;
                        match wr.control(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b""))).await {
                            Ok(()) => continue,
                            Err(e) => e,
                        }
                    }
                }
            };
            return self.close_for(&mut wr, &mut rd, end, &last).await;
        }
    }

    /// Sends the close frame `end` calls for, then waits (briefly) for the client's answer so the
    /// frame is not lost to a reset.
    async fn close_for<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        wr: &mut Writer<W>,
        rd: &mut inbound::Reader<R>,
        end: End,
        last: &HashMap<i64, i64>,
    ) -> End {
        let (code, reason) = match &end {
            End::Shutdown => (1001, "server shutting down".to_owned()),
            End::PingTimeout => (1001, "ping timeout".to_owned()),
            End::SlowConsumer => (1013, resume_hint("slow consumer", last)),
            End::ReplayUnavailable => (1013, "replay unavailable; retry later".to_owned()),
            // The socket cannot take a close frame (or the client is gone).
            End::WriteTimeout | End::Io(_) | End::ClientClosed(_) => return end,
        };
        let mut close = Vec::new();
        let bytes = Frame::close(code, reason.as_bytes()).write(&mut close);
        if tokio::time::timeout(CLOSE_WAIT, wr.io.write_all(bytes))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            // Until the client's close (or EOF, or an error) arrives.
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                while let Ok(f) = rd.next().await {
                    if f.kind == Kind::Close {
                        break;
                    }
                }
            })
            .await;
        }
        end
    }

    /// Writes a live event, and whatever else is already queued, unless already sent; fetches a
    /// gap first.
    async fn deliver<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut Writer<W>,
        feed: &mut Feed,
        first: Delivery,
        last: &mut HashMap<i64, i64>,
        batch: &mut Vec<Delivery>,
    ) -> Result<(), End> {
        let m = &self.hub.metrics;
        batch.clear();
        let mut next = Some(first);
        while let Some(d) = next.take() {
            match last.get(&d.board_id).copied() {
                Some(l) if d.seq <= l => d.done(m),
                Some(l) if d.seq > l + 1 => {
                    // A gap: write what is batched, fetch the gap, then carry on.
                    self.flush(wr, batch).await?;
                    // Boxed: the gRPC call's state is large and only needed on this rare path,
                    // so it does not belong in every idle connection's task.
                    Box::pin(self.replay(wr, d.board_id, last)).await?;
                    if last.get(&d.board_id).is_none_or(|l| d.seq > *l) {
                        last.insert(d.board_id, d.seq);
                        batch.push(d);
                    } else {
                        d.done(m);
                    }
                }
                _ => {
                    last.insert(d.board_id, d.seq);
                    batch.push(d);
                }
            }
            if batch.len() < MAX_BATCH {
                next = feed.try_recv();
            }
        }
        self.flush(wr, batch).await
    }

    /// Writes the batched events with one vectored write, then counts them.
    async fn flush<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut Writer<W>,
        batch: &mut Vec<Delivery>,
    ) -> Result<(), End> {
        if batch.is_empty() {
            return Ok(());
        }
        wr.frames(batch).await?;
        let m = &self.hub.metrics;
        m.frames_sent.increment(batch.len() as u64);
        m.bytes_sent
            .increment(batch.iter().map(|d| d.frame.len() as u64).sum());
        for d in batch.drain(..) {
            d.done(m);
        }
        Ok(())
    }

    /// Sends the board's events after `last[board]` from the task service, until it has no more.
    /// A `reset` (events pruned) is passed on as `{"type":"reset",...}`.
    async fn replay<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut Writer<W>,
        board: i64,
        last: &mut HashMap<i64, i64>,
    ) -> Result<(), End> {
        loop {
            let after = last.get(&board).copied().unwrap_or(0);
            let page = self
                .tasks
                .list_events(board, after, REPLAY_PAGE)
                .await
                .map_err(|s| {
                    tracing::warn!(board, status = %s, "replay failed");
                    End::ReplayUnavailable
                })?;
            if page.reset {
                let reset = format!(
                    r#"{{"type":"reset","board_id":{board},"seq":{}}}"#,
                    page.head_seq
                );
                wr.bytes(&text_frame(reset.as_bytes())).await?;
                last.insert(board, page.head_seq);
                return Ok(());
            }
            let n = page.events.len();
            let frames: Vec<Bytes> = page.events.iter().map(|e| text_frame(&e.payload)).collect();
            wr.frames(&frames).await?;
            let m = &self.hub.metrics;
            m.events_replayed.increment(frames.len() as u64);
            m.frames_sent.increment(frames.len() as u64);
            m.bytes_sent
                .increment(frames.iter().map(|f| f.len() as u64).sum());
            if let Some(e) = page.events.last() {
                last.insert(board, e.seq);
            }
            if n < REPLAY_PAGE as usize {
                return Ok(());
            }
        }
    }
}

/// A close reason telling a slow client where to resume (fits the 123-byte limit).
fn resume_hint(what: &str, last: &HashMap<i64, i64>) -> String {
    let mut s = format!("{what}; resume with since=");
    match last.values().collect::<Vec<_>>().as_slice() {
        [seq] => s.push_str(&seq.to_string()),
        _ => s.push_str("BOARD:SEQ"),
    }
    s
}

/// The code and reason of a close frame's payload (1005, "no status", when it has none).
fn close_of(p: &[u8]) -> (u16, String) {
    if p.len() < 2 {
        return (1005, String::new());
    }
    let reason = String::from_utf8_lossy(&p[2..]).into_owned();
    (u16::from_be_bytes([p[0], p[1]]), reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_hint_names_the_seq_for_one_board() {
        let last = HashMap::from([(4, 17)]);
        assert_eq!(
            resume_hint("slow consumer", &last),
            "slow consumer; resume with since=17"
        );
        let many = HashMap::from([(4, 17), (5, 1)]);
        assert!(resume_hint("slow consumer", &many).ends_with("since=BOARD:SEQ"));
    }

    #[test]
    fn only_sendable_close_codes_are_echoed() {
        assert_eq!(sendable(1000), 1000);
        assert_eq!(sendable(4001), 4001);
        assert_eq!(sendable(1005), 1000);
        assert_eq!(sendable(1006), 1000);
    }

    #[tokio::test]
    async fn batched_frames_arrive_whole_and_in_order_through_partial_writes() {
        // A pipe with a tiny buffer forces many partial vectored writes.
        let (a, mut b) = tokio::io::duplex(7);
        let mut wr = Writer {
            io: a,
            timeout: Duration::from_secs(5),
            scratch: Vec::new(),
        };
        let frames: Vec<Bytes> = (0..20)
            .map(|i| text_frame(format!("event number {i}").as_bytes()))
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; expected.len()];
            tokio::io::AsyncReadExt::read_exact(&mut b, &mut got)
                .await
                .unwrap();
            assert_eq!(got, expected);
        });
        wr.frames(&frames).await.map_err(|e| e.to_string()).unwrap();
        reader.await.unwrap();
    }
}
