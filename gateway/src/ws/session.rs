//! One WebSocket connection: replays from `since`, then forwards live events in per-board seq
//! order (never twice, gaps fetched from the task service), pings, and closes with a code that
//! says why (1001 shutdown or ping timeout, 1013 too slow or replay unavailable).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{
    Frame, OpCode, Payload, WebSocket, WebSocketError, WebSocketRead, WebSocketWrite,
};
use futures_util::StreamExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};
use tokio_stream::StreamMap;
use tokio_util::sync::CancellationToken;

use super::Subscription;
use crate::hub::{Delivery, Hub};
use crate::tasks_client::TasksClient;

type Io = TokioIo<Upgraded>;
type Writer = WebSocketWrite<WriteHalf<Io>>;
type Reader = WebSocketRead<ReadHalf<Io>>;

/// Largest message accepted from a client (clients have nothing to say but pongs and close).
const MAX_INBOUND: usize = 4096;
/// Events per ListEvents call during replay.
const REPLAY_PAGE: i32 = 1000;
/// How long a close handshake may take before the socket is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

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
    Io(WebSocketError),
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

/// What the reader passes to the writer.
enum Control {
    Ping(Vec<u8>),
    Pong,
}

/// How the reader stopped.
enum ReadEnd {
    Close(u16, String),
    Error(WebSocketError),
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
    pub async fn run(self, ws: WebSocket<Io>) {
        let Session { ctx, feed } = self;
        let total = ctx.hub.client_connected();
        tracing::info!(peer.addr = %ctx.peer, boards = ?ctx.sub.boards, "➕ Client connected. Total clients: {total}");
        let end = ctx.serve(ws, feed).await;
        let total = ctx.hub.client_disconnected();
        tracing::info!(peer.addr = %ctx.peer, reason = %end, "➖ Client disconnected. Total clients: {total}");
    }
}

impl Ctx {
    async fn serve(&self, ws: WebSocket<Io>, mut feed: Feed) -> End {
        let (mut rd, mut wr) = ws.split(tokio::io::split);
        rd.set_auto_close(false);
        rd.set_auto_pong(false);
        rd.set_max_message_size(MAX_INBOUND);

        // The feed was subscribed before the replay, so nothing committed in between is missed;
        // live events the replay already covered are skipped by seq.
        let mut last: HashMap<i64, i64> = HashMap::new();

        let (ctl_tx, mut ctl_rx) = mpsc::channel(4);
        let reader = read_loop(rd, ctl_tx);
        tokio::pin!(reader);

        for (&board, &since) in &self.sub.since {
            last.insert(board, since);
            let replayed = tokio::select! {
                r = self.replay(&mut wr, board, &mut last) => r,
                _ = self.shutdown.cancelled() => Err(End::Shutdown),
            };
            if let Err(end) = replayed {
                return self.close_for(&mut wr, &mut reader, end, &last).await;
            }
        }

        let mut ping = tokio::time::interval(self.settings.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut awaiting_pong = false;

        loop {
            let end = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => End::Shutdown,
                r = &mut reader => {
                    match r {
                        ReadEnd::Close(code, reason) => {
                            tracing::debug!(peer.addr = %self.peer, code, %reason, "client sent close");
                            // Answer the client's close with the same code, then stop.
                            let _ = self.write(&mut wr, Frame::close(sendable(code), b"")).await;
                            return End::ClientClosed(code);
                        }
                        ReadEnd::Error(e) => return End::Io(e),
                    }
                }
                Some(c) = ctl_rx.recv() => match c {
                    Control::Ping(p) => match self.write(&mut wr, Frame::pong(Payload::Owned(p))).await {
                        Ok(()) => continue,
                        Err(e) => e,
                    },
                    Control::Pong => { awaiting_pong = false; continue; }
                },
                d = feed.recv() => match d {
                    Ok(d) => match self.deliver(&mut wr, d, &mut last).await {
                        Ok(()) => continue,
                        Err(e) => e,
                    },
                    Err(FeedError::Lagged) => End::SlowConsumer,
                    Err(FeedError::Closed) => End::Shutdown,
                },
                _ = ping.tick() => {
                    if awaiting_pong {
                        End::PingTimeout
                    } else {
                        awaiting_pong = true;
                        match self.write(&mut wr, Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b""))).await {
                            Ok(()) => continue,
                            Err(e) => e,
                        }
                    }
                }
            };
            return self.close_for(&mut wr, &mut reader, end, &last).await;
        }
    }

    /// Sends the close frame `end` calls for, then waits (briefly) for the client's answer so the
    /// frame is not lost to a reset.
    async fn close_for(
        &self,
        wr: &mut Writer,
        reader: &mut std::pin::Pin<&mut impl std::future::Future<Output = ReadEnd>>,
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
        let frame = Frame::close(code, reason.as_bytes());
        if tokio::time::timeout(CLOSE_WAIT, wr.write_frame(frame))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            let _ = tokio::time::timeout(CLOSE_WAIT, reader.as_mut()).await;
        }
        end
    }

    async fn write(&self, wr: &mut Writer, frame: Frame<'_>) -> Result<(), End> {
        match tokio::time::timeout(self.settings.write_timeout, wr.write_frame(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::Io(e)),
            Err(_) => Err(End::WriteTimeout),
        }
    }

    /// Writes a live event unless it was already sent; fetches a gap first.
    async fn deliver(
        &self,
        wr: &mut Writer,
        d: Delivery,
        last: &mut HashMap<i64, i64>,
    ) -> Result<(), End> {
        match last.get(&d.board_id).copied() {
            Some(l) if d.seq <= l => return Ok(()),
            Some(l) if d.seq > l + 1 => {
                self.replay(wr, d.board_id, last).await?;
                if last.get(&d.board_id).is_some_and(|l| d.seq <= *l) {
                    return Ok(());
                }
            }
            _ => {}
        }
        self.write(wr, Frame::text(Payload::Borrowed(&d.payload)))
            .await?;
        last.insert(d.board_id, d.seq);
        Ok(())
    }

    /// Sends the board's events after `last[board]` from the task service, until it has no more.
    /// A `reset` (events pruned) is passed on as `{"type":"reset",...}`.
    async fn replay(
        &self,
        wr: &mut Writer,
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
                self.write(wr, Frame::text(Payload::Borrowed(reset.as_bytes())))
                    .await?;
                last.insert(board, page.head_seq);
                return Ok(());
            }
            let n = page.events.len();
            for e in page.events {
                self.write(wr, Frame::text(Payload::Borrowed(&e.payload)))
                    .await?;
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
    if let [(b, seq)] = last.iter().collect::<Vec<_>>().as_slice() {
        let _ = b;
        s.push_str(&seq.to_string());
    } else {
        s.push_str("BOARD:SEQ");
    }
    s
}

/// Reads client frames until close or error, passing pings and pongs to the writer.
async fn read_loop(mut rd: Reader, ctl: mpsc::Sender<Control>) -> ReadEnd {
    // auto_pong and auto_close are off, so the library never has a frame of its own to send.
    let mut no_obligations = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
    loop {
        let frame = match rd.read_frame(&mut no_obligations).await {
            Ok(f) => f,
            Err(e) => return ReadEnd::Error(e),
        };
        match frame.opcode {
            OpCode::Close => {
                let p = &frame.payload;
                let code = if p.len() >= 2 {
                    u16::from_be_bytes([p[0], p[1]])
                } else {
                    1000
                };
                let reason = String::from_utf8_lossy(p.get(2..).unwrap_or_default()).into_owned();
                return ReadEnd::Close(code, reason);
            }
            OpCode::Ping => {
                let _ = ctl.send(Control::Ping(frame.payload.to_vec())).await;
            }
            OpCode::Pong => {
                let _ = ctl.send(Control::Pong).await;
            }
            _ => tracing::debug!(len = frame.payload.len(), "ignoring client message"),
        }
    }
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
}
