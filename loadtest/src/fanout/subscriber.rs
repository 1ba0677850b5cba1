//! One subscriber of a fan-out run: connects (gateway `/ws` or nats-server's WebSocket), reads
//! frames and accounts for each event it was owed.
use std::net::SocketAddr;

use anyhow::{bail, Result};
use fastwebsockets::{Frame, OpCode, Payload};

use crate::accounting::Tracker;
use crate::natsproto::{self, Op};
use crate::wsclient;

use super::{Shared, Target};

/// Connects one subscriber and reads until told to stop.
#[allow(clippy::too_many_arguments)]
pub(super) async fn subscribe(
    shared: &Shared,
    t: &mut Tracker,
    addr: SocketAddr,
    target: Target,
    board: i64,
    source: std::net::Ipv4Addr,
    prefix: &str,
    shard: usize,
    on_ready: impl FnOnce(),
) -> Result<()> {
    let auth = match target {
        Target::Gateway => shared.auth.as_deref(),
        _ => None,
    };
    let mut on_ready = Some(on_ready);
    loop {
        // A subscriber the gateway closed as too slow resumes from the last seq it has, as the
        // board page does; the frames it then gets are checked like any others.
        let path = match target {
            Target::Gateway if t.resumed > 0 => {
                format!("/ws?board_id={board}&since={}", t.last(board))
            }
            Target::Gateway => format!("/ws?board_id={board}"),
            Target::Original => "/ws".to_owned(),
            Target::NatsWs => "/".to_owned(),
        };
        let deflate = shared.deflate && target == Target::Gateway;
        let (mut ws, accepted) = wsclient::connect_with(addr, &path, source, auth, deflate).await?;
        if deflate && !accepted {
            bail!("the gateway declined permessage-deflate (WS_DEFLATE=off?)");
        }
        if deflate {
            if let Some(ready) = on_ready.take() {
                ready();
            }
            let mut raw = wsclient::Inflating::new(ws);
            match read_inflating(shared, t, &mut raw, board, shard).await? {
                Ended::Closed(1013) if !*shared.stop.borrow() => {
                    t.resumed += 1;
                    continue;
                }
                _ => return Ok(()),
            }
        }
        if target == Target::NatsWs {
            nats_subscribe(&mut ws, &format!("{prefix}.{board}")).await?;
        }
        if let Some(ready) = on_ready.take() {
            ready();
        }
        match read(shared, t, &mut ws, target, board, shard).await? {
            Ended::Stopped => return Ok(()),
            Ended::Closed(1013) if target == Target::Gateway && !*shared.stop.borrow() => {
                t.resumed += 1;
            }
            Ended::Closed(_) => return Ok(()),
        }
    }
}

/// How a subscriber's connection ended.
enum Ended {
    /// The run is over.
    Stopped,
    /// The server closed it with this code (0: none given).
    Closed(u16),
}

/// Subscribes to `subject` over nats-server's WebSocket and waits for the PONG that confirms it.
async fn nats_subscribe(ws: &mut wsclient::Ws, subject: &str) -> Result<()> {
    let hello = natsproto::hello(subject);
    ws.write_frame(Frame::binary(Payload::Owned(hello))).await?;
    loop {
        let f = ws.read_frame().await?;
        if let Ok(s) = std::str::from_utf8(&f.payload) {
            if s.contains("PONG") {
                return Ok(());
            }
            if s.contains("-ERR") {
                bail!("nats-server: {s}");
            }
        }
    }
}

/// [`read`] for a subscriber that negotiated permessage-deflate.
async fn read_inflating(
    shared: &Shared,
    t: &mut Tracker,
    raw: &mut wsclient::Inflating,
    board: i64,
    shard: usize,
) -> Result<Ended> {
    let mut stop = shared.stop.clone();
    loop {
        let before = raw.wire;
        let (op, payload) = tokio::select! {
            biased;
            _ = stop.changed() => return Ok(Ended::Stopped),
            f = raw.next() => f?,
        };
        match op {
            0x8 => {
                let code = payload
                    .get(..2)
                    .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                return Ok(Ended::Closed(code));
            }
            0x1 | 0x2 => {
                shared
                    .wire
                    .fetch_add(raw.wire - before, std::sync::atomic::Ordering::Relaxed);
                shared.on_frame(t, shard, board, Target::Gateway, &payload);
            }
            _ => {}
        }
    }
}

/// Reads frames until the run stops or the server closes the connection.
async fn read(
    shared: &Shared,
    t: &mut Tracker,
    ws: &mut wsclient::Ws,
    target: Target,
    board: i64,
    shard: usize,
) -> Result<Ended> {
    let mut stop = shared.stop.clone();
    let mut nats = natsproto::Parser::default();
    loop {
        let frame = tokio::select! {
            biased;
            _ = stop.changed() => return Ok(Ended::Stopped),
            f = ws.read_frame() => f?,
        };
        match frame.opcode {
            OpCode::Close => {
                let code = frame
                    .payload
                    .get(..2)
                    .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                return Ok(Ended::Closed(code));
            }
            OpCode::Text | OpCode::Binary if target == Target::NatsWs => {
                nats.push(&frame.payload);
                let mut pongs = 0;
                while let Some(op) = nats.next_op() {
                    match op {
                        Op::Msg(p) => shared.on_frame(t, shard, board, target, &p),
                        Op::Ping => pongs += 1,
                        Op::Err(e) => bail!("nats-server: {e}"),
                        Op::Other => {}
                    }
                }
                for _ in 0..pongs {
                    ws.write_frame(Frame::binary(Payload::Borrowed(b"PONG\r\n")))
                        .await?;
                }
            }
            OpCode::Text | OpCode::Binary => {
                shared.wire.fetch_add(
                    wsclient::wire_len(frame.payload.len()) as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                shared.on_frame(t, shard, board, target, &frame.payload)
            }
            _ => {}
        }
    }
}
