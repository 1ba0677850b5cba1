//! permessage-deflate on the wire, from a client written here from RFC 7692 (the test WebSocket
//! client does not speak it): negotiation, compressed frames that inflate to exactly what a plain
//! client gets, the replay path, WS_DEFLATE=off, and the inflate bound on what clients send.
use std::net::SocketAddr;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// A raw WebSocket client that offers compression.
struct Raw {
    io: TcpStream,
    buf: Vec<u8>,
    /// The 101's `Sec-WebSocket-Extensions`, if any.
    extensions: Option<String>,
}

/// One server frame: FIN+RSV+opcode byte and the payload as sent.
struct Frame {
    first: u8,
    payload: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr, query: &str) -> Raw {
        let mut io = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /ws?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Extensions: {OFFER}\r\n\r\n"
        );
        io.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, io.read(&mut chunk))
                .await
                .expect("101 in time")
                .unwrap();
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let extensions = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-extensions"))
            })
            .map(|(_, v)| v.trim().to_owned());
        buf.drain(..end);
        Raw {
            io,
            buf,
            extensions,
        }
    }

    async fn frame(&mut self) -> Frame {
        loop {
            if self.buf.len() >= 2 {
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let f = Frame {
                        first: self.buf[0],
                        payload: self.buf[at..at + len].to_vec(),
                    };
                    self.buf.drain(..at + len);
                    return f;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.io.read(&mut chunk))
                .await
                .expect("a frame in time")
                .unwrap();
            assert!(n > 0, "the server closed the socket");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next event frame (presence frames skipped), and whether it came compressed.
    async fn event(&mut self) -> (Value, bool) {
        loop {
            let f = self.frame().await;
            assert_eq!(f.first & 0x0f, 0x1, "a text frame, got {:#x}", f.first);
            let compressed = f.first & 0x40 != 0;
            let text = if compressed {
                inflate(&f.payload)
            } else {
                f.payload
            };
            let v: Value = serde_json::from_slice(&text).unwrap();
            if v["type"] != "presence" {
                return (v, compressed);
            }
        }
    }

    /// Sends a masked frame with `first` as its first byte.
    async fn send(&mut self, first: u8, payload: &[u8]) {
        let mask = [7u8, 1, 9, 3];
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.io.write_all(&f).await.unwrap();
    }
}

/// What a client does with a compressed message: append the tail, inflate on its own.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut data = payload.to_vec();
    data.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 16);
    Decompress::new(false)
        .decompress_vec(&data, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    Compress::new(Compression::best(), false)
        .compress_vec(data, &mut out, FlushCompress::Sync)
        .unwrap();
    out.truncate(out.len() - 4);
    out
}

const TITLE: &str = "Write the release notes for the compression change, then tell everyone";

#[tokio::test]
async fn a_client_that_offers_deflate_gets_compressed_frames_of_the_same_events() {
    let app = spawn_app().await;
    let mut zipped = Raw::connect(app.addr, "board_id=71").await;
    assert_eq!(
        zipped.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let mut plain = app.ws("board_id=71").await;
    for i in 0..3 {
        app.create(71, &format!("{TITLE} {i}")).await;
    }
    let tiny = app.create(71, "x").await["id"].as_i64().unwrap();
    app.delete(tiny).await;
    let want = plain.events(5).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(zipped.event().await);
    }
    let (events, compressed): (Vec<Value>, Vec<bool>) = got.into_iter().unzip();
    assert_eq!(events, want, "the same events, in the same order");
    assert_eq!(
        &compressed[..3],
        [true, true, true],
        "the long ones compressed"
    );

    // A resume reads the log: those frames are compressed too.
    let mut resumed = Raw::connect(app.addr, "board_id=71&since=1").await;
    for w in &want[1..3] {
        assert_eq!(&resumed.event().await, &(w.clone(), true));
    }
}

#[tokio::test]
async fn with_ws_deflate_off_the_offer_is_declined_and_frames_are_plain() {
    let app = spawn_app_with(|_| {}, |g| g.ws_deflate = "off".into()).await;
    let mut raw = Raw::connect(app.addr, "board_id=72").await;
    assert_eq!(raw.extensions, None);
    app.create(72, TITLE).await;
    let (e, compressed) = raw.event().await;
    assert_eq!(e["title"], TITLE);
    assert!(!compressed);
}

#[tokio::test]
async fn a_compressed_frame_that_inflates_past_the_limit_closes_with_1009() {
    let app = spawn_app().await;
    let mut raw = Raw::connect(app.addr, "board_id=73").await;
    // A compressed text message within the limit is read and the connection stays up.
    raw.send(0xC1, &deflate(br#"{"type":"hello"}"#)).await;
    app.create(73, TITLE).await;
    assert_eq!(raw.event().await.0["title"], TITLE);
    // About a kilobyte that inflates to 1 MiB.
    let bomb = deflate(&vec![b' '; 1 << 20]);
    assert!(bomb.len() < 1100, "{}", bomb.len());
    raw.send(0xC1, &bomb).await;
    let close = raw.frame().await;
    assert_eq!(close.first & 0x0f, 0x8, "a close frame");
    assert_eq!(
        u16::from_be_bytes([close.payload[0], close.payload[1]]),
        1009
    );
    let reason = String::from_utf8_lossy(&close.payload[2..]).into_owned();
    assert!(reason.contains("too big"), "{reason}");
}
