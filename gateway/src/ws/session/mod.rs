//! One WebSocket connection: starts each board at `since` (replayed first) or at the board's head
//! when it subscribed, then forwards live events in per-board seq order (never twice, gaps fetched
//! from the task service), pings, and closes with a code that says why (1001 shutdown or ping
//! timeout, 1013 too slow or replay unavailable, with a resume hint the server accepts).
//!
//! Events arrive as complete pre-built frames shared by every recipient; the session writes them to
//! its socket as they are, several at once with one vectored write when more are queued. What the
//! client sends (pongs, pings, close) is read by `inbound`, whose buffer is empty while it is silent.
mod deliver;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::close::{close_of, resume_hint, sendable, End};
use super::feed::Feed;
use super::inbound::{self, Kind, ReadError};
use super::outbound::Writer;
use super::reauth::{self, Outcome, Reauth};
use super::socket;
use super::Subscription;
use crate::fanout::delivery::Delivery;
use crate::fanout::hub::Hub;
use crate::fanout::outlet::Stop;
use crate::upstream::client::TasksClient;
use taskboard_telemetry::Slotted;

/// Largest message accepted from a client: what clients say is pongs, close and token refreshes
/// (`{"type":"auth","token":…}`; identity providers' tokens with many claims reach several KiB).
const MAX_INBOUND: usize = 16 * 1024;
/// How long the upgrade waits for the heads of new boards (where a subscriber without `since`
/// starts) before it goes ahead without them.
const HEADS_DEADLINE: Duration = Duration::from_secs(1);
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
    /// Where each board starts: the client's `since`, or the board's head when it subscribed.
    start: HashMap<i64, i64>,
}

/// What a running session reads from.
struct Ctx {
    hub: Arc<Hub>,
    settings: SessionSettings,
    sub: Subscription,
    shutdown: CancellationToken,
    peer: SocketAddr,
    /// When the client's token expires (the session is closed with 1008 then).
    expires_at: Option<tokio::time::Instant>,
    /// Replay page reads, shared and bounded (MAX_REPLAYS).
    replays: Arc<crate::fanout::replay::ReplayReads>,
    /// The client negotiated permessage-deflate.
    deflate: bool,
    /// The user on the other end (`None`: AUTH=off, or the service role).
    user: Option<i64>,
    /// How a token sent in-band is checked (`None`: AUTH=off); the session takes it.
    reauth: Option<Reauth>,
}

/// What woke a running session.
enum Woke {
    End(End),
    /// Something may have been queued.
    Queued,
    Read(Result<inbound::Inbound, ReadError>),
    Ping,
}

/// Who is on the other end: their address, when their token expires, and whether they
/// negotiated compression.
pub struct Client {
    pub peer: SocketAddr,
    /// The session is closed with 1008 at this instant.
    pub expires_at: Option<tokio::time::Instant>,
    /// permessage-deflate was negotiated (see `ws::deflate`).
    pub deflate: bool,
    /// The user (`None`: AUTH=off, or the service role): access changes naming them close the
    /// session.
    pub user: Option<i64>,
    /// Checks a fresh token the client sends in-band (`None`: AUTH=off).
    pub reauth: Option<Reauth>,
}

impl Session {
    /// Subscribes to the hub at once, before the upgrade is answered, and fixes where each board
    /// starts: a client that has its 101 never misses an event committed after it, whatever the
    /// timing of the gateway's own NATS subscription (a later event with a higher seq shows the
    /// gap, which is then read from the log). Anything older comes from `since`.
    pub async fn subscribe(
        hub: Arc<Hub>,
        tasks: TasksClient,
        settings: SessionSettings,
        sub: Subscription,
        shutdown: CancellationToken,
        client: Client,
        replays: Arc<crate::fanout::replay::ReplayReads>,
    ) -> Session {
        let Client {
            peer,
            expires_at,
            deflate,
            user,
            reauth,
        } = client;
        let (feed, known) = Feed::new(&hub, &sub.boards, deflate, user);
        // Every board: answered once the gateway's subscription to every board is confirmed, so
        // nothing committed after the 101 is missed (there is no per-board head to catch up from).
        if sub.boards.is_empty() && !hub.all_boards_live(HEADS_DEADLINE).await {
            tracing::warn!(peer.addr = %peer, "the subscription to every board is not confirmed yet; events until it is are not delivered");
        }
        let mut start: HashMap<i64, i64> = sub.since.iter().map(|(b, s)| (*b, *s)).collect();
        let mut unknown = Vec::new();
        for (b, seq) in known {
            if start.contains_key(&b) {
                continue;
            }
            match seq {
                Some(s) => {
                    start.insert(b, s);
                }
                None => unknown.push(b),
            }
        }
        if !unknown.is_empty() {
            // The hub has seen nothing of these boards yet: ask the log where they stand.
            match tokio::time::timeout(HEADS_DEADLINE, tasks.board_heads(unknown.clone(), None))
                .await
            {
                Ok(Ok(heads)) => {
                    for b in unknown {
                        let head = heads.get(&b).copied().unwrap_or(0);
                        hub.note_head(b, head);
                        start.insert(b, head);
                    }
                }
                Ok(Err(s)) => {
                    tracing::warn!(peer.addr = %peer, boards = ?unknown, status = %s, "board heads unavailable; these boards start at their first live event")
                }
                Err(_) => {
                    tracing::warn!(peer.addr = %peer, boards = ?unknown, "board heads timed out; these boards start at their first live event")
                }
            }
        }
        Session {
            start,
            ctx: Ctx {
                hub,
                settings,
                sub,
                shutdown,
                peer,
                expires_at,
                replays,
                deflate,
                user,
                reauth,
            },
            feed,
        }
    }

    /// Runs the session on the upgraded socket until it ends.
    pub async fn run(self, ws: WebSocket<TokioIo<Upgraded>>) {
        let Session {
            mut ctx,
            feed,
            start,
        } = self;
        let reauth = ctx.reauth.take();
        let total = ctx.hub.client_connected();
        tracing::info!(peer.addr = %ctx.peer, boards = ?ctx.sub.boards, "➕ Client connected. Total clients: {total}");
        let upgraded = ws.into_inner().into_inner();
        // The plain TCP socket is shared with the hub, which writes to it directly while the
        // session is parked (bytes hyper read past the request, if any, are read first);
        // anything else (never, with hyper's server over TCP) goes through tokio's generic split
        // and gets every event through the session.
        let end = match upgraded.downcast::<TokioIo<Slotted>>() {
            // An empty read_buf still pins hyper's whole read buffer (8 KiB): drop it now, not
            // when the arm ends (a field left in `parts` lives as long as the session). The
            // socket's slot (`_slot`) is held until the session ends.
            Ok(parts) if parts.read_buf.is_empty() => {
                let hyper::upgrade::Parts { io, read_buf, .. } = parts;
                drop(read_buf);
                let Slotted { io, slot: _slot } = io.into_inner();
                let (r, w, shared) = socket::share(io);
                feed.attach(shared);
                ctx.serve(r, w, feed, start, reauth).await
            }
            Ok(parts) => {
                let Slotted { io, slot: _slot } = parts.io.into_inner();
                let (r, w, shared) = socket::share(io);
                feed.attach(shared);
                let r = std::io::Cursor::new(parts.read_buf).chain(r);
                ctx.serve(r, w, feed, start, reauth).await
            }
            Err(upgraded) => {
                let (r, w) = tokio::io::split(TokioIo::new(upgraded));
                ctx.serve(r, w, feed, start, reauth).await
            }
        };
        crate::metrics::disconnect(end.label());
        let total = ctx.hub.client_disconnected();
        tracing::info!(peer.addr = %ctx.peer, reason = %end, "➖ Client disconnected. Total clients: {total}");
    }
}

impl Ctx {
    async fn serve<R, W>(
        &self,
        r: R,
        w: W,
        feed: Feed,
        start: HashMap<i64, i64>,
        mut reauth: Option<Reauth>,
    ) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut rd = inbound::Reader::new(r, MAX_INBOUND, self.deflate);
        let mut wr = Writer::new(w, self.settings.write_timeout);
        wr.deflate = self.deflate;

        // The feed was subscribed before the replay, so nothing committed in between is missed;
        // live events the replay already covered are skipped by seq. Boards without `since`
        // start at their head as of the subscription.
        let mut last = start;

        if !self.sub.since.is_empty() {
            self.hub.metrics.resumes.increment(1);
        }
        for &board in self.sub.since.keys() {
            let replayed = tokio::select! {
                r = Box::pin(self.replay(&mut wr, board, &mut last, false)) => r,
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
        let mut incoming: Vec<Delivery> = Vec::new();
        let mut batch: Vec<Delivery> = Vec::new();
        // Registered once, not on every wake-up of the loop (that showed up in profiles).
        let cancelled = self.shutdown.cancelled();
        tokio::pin!(cancelled);
        let expired = tokio::time::sleep_until(self.expires_at.unwrap_or_else(|| {
            tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86_400)
        }));
        tokio::pin!(expired);

        loop {
            // Parked (nothing waiting), the hub writes the next events itself and keeps `last`;
            // whatever wakes the session ends the park before the session writes anything.
            let parked = feed.park(&mut last);
            let woke = tokio::select! {
                biased;
                _ = &mut cancelled => Woke::End(End::Shutdown),
                _ = &mut expired => Woke::End(End::TokenExpired),
                // Events first: when one is waiting the loop goes straight to writing, without
                // polling the socket's read side on every wake-up. The reader and the ping timer
                // run as soon as nothing is (a busy connection is alive by definition).
                () = std::future::ready(()), if !parked => Woke::Queued,
                () = feed.notified(), if parked => Woke::Queued,
                // Cancel-safe: a partly read frame stays in the reader's buffer.
                f = rd.next() => Woke::Read(f),
                _ = ping.tick() => Woke::Ping,
            };
            feed.unpark(&mut last);
            let end = match woke {
                Woke::End(end) => end,
                Woke::Queued => match feed.take(&mut incoming, MAX_BATCH) {
                    Ok(rest) => {
                        match self
                            .deliver(&mut wr, rest, &mut incoming, &mut last, &mut batch)
                            .await
                        {
                            Ok(()) => continue,
                            Err(e) => e,
                        }
                    }
                    Err(Stop::Lagged) => End::SlowConsumer,
                    Err(Stop::Revoked(why)) => End::Revoked(why),
                },
                Woke::Read(Ok(f)) => match f.kind {
                    Kind::Close => {
                        let (code, reason) = close_of(&f.payload);
                        tracing::debug!(peer.addr = %self.peer, code, %reason, "client sent close");
                        // Answer the client's close with the same code, then stop.
                        let _ = wr.control(Frame::close(sendable(code), b"")).await;
                        return End::ClientClosed(code);
                    }
                    Kind::Ping => match wr.control(Frame::pong(Payload::Owned(f.payload))).await {
                        Ok(()) => continue,
                        Err(e) => e.into(),
                    },
                    Kind::Pong => {
                        awaiting_pong = false;
                        continue;
                    }
                    Kind::Data => continue,
                    Kind::Text => match reauth::handle(
                        reauth.as_mut(),
                        &f.payload,
                        tokio::time::Instant::now(),
                    )
                    .await
                    {
                        Outcome::Ignored => continue,
                        Outcome::Renewed { expires_at, reply } => {
                            expired.as_mut().reset(reauth::deadline(expires_at));
                            match wr.bytes(&reply).await {
                                Ok(()) => continue,
                                Err(e) => e.into(),
                            }
                        }
                        Outcome::Refused(reply) => match wr.bytes(&reply).await {
                            Ok(()) => continue,
                            Err(e) => e.into(),
                        },
                        Outcome::OtherPrincipal(why) => End::OtherPrincipal(why),
                    },
                },
                Woke::Read(Err(ReadError::Protocol { close_code, reason })) => {
                    let _ = wr
                        .control(Frame::close(close_code, reason.as_bytes()))
                        .await;
                    return End::Io(format!("client broke the protocol: {reason}"));
                }
                Woke::Read(Err(e)) => return End::Io(format!("{e:?}")),
                Woke::Ping => {
                    if awaiting_pong {
                        End::PingTimeout
                    } else {
                        awaiting_pong = true;
                        match wr
                            .control(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b"")))
                            .await
                        {
                            Ok(()) => continue,
                            Err(e) => e.into(),
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
            End::SlowConsumer | End::WriteTimeout => {
                // Counted now, whether or not the close frame gets through.
                self.hub.metrics.slow_consumers.increment(1);
                (1013, resume_hint("slow consumer", &self.sub.boards, last))
            }
            End::ReplayUnavailable => (1013, "replay unavailable; retry later".to_owned()),
            End::Revoked(why) if why.resumable => {
                (why.code, resume_hint(&why.reason, &self.sub.boards, last))
            }
            End::Revoked(why) => (why.code, why.reason.clone()),
            End::OtherPrincipal(why) => (1008, (*why).to_owned()),
            End::TokenExpired => (
                1008,
                resume_hint(
                    "token expired; reconnect with a fresh token",
                    &self.sub.boards,
                    last,
                ),
            ),
            // The client is gone (or already closed).
            End::Io(_) | End::ClientClosed(_) => return end,
        };
        // A frame a timed-out write left half-sent is finished first; then the close frame, if
        // the client reads within CLOSE_WAIT.
        let mut frame = Vec::new();
        let frame = Frame::close(code, reason.as_bytes()).write(&mut frame);
        let mut close = std::mem::take(&mut wr.unfinished);
        close.extend_from_slice(frame);
        if tokio::time::timeout(CLOSE_WAIT, wr.io.write_all(&close))
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
}
