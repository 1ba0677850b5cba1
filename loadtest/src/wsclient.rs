//! WebSocket client connections from chosen loopback source addresses, so tens of thousands of
//! sockets do not exhaust one address's ephemeral ports.
use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use fastwebsockets::WebSocket;
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

pub type Ws = WebSocket<TokioIo<Upgraded>>;

/// Source address number `i` of `k` in 127.0.0.0/8 (127.0.0.1, 127.0.0.2, …); with `k` 0 the
/// unspecified address (the kernel picks the source, for a server that is not on loopback).
pub fn source_ip(i: usize, k: usize) -> Ipv4Addr {
    if k == 0 {
        return Ipv4Addr::UNSPECIFIED;
    }
    let n = i % k.clamp(1, 250 * 250);
    Ipv4Addr::new(127, 0, (n / 250) as u8, (n % 250 + 1) as u8)
}

struct SpawnExecutor;
impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// Opens a TCP connection from `source` to `addr`.
pub async fn tcp(addr: SocketAddr, source: Ipv4Addr) -> Result<tokio::net::TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.bind(SocketAddr::new(source.into(), 0))
        .with_context(|| format!("bind {source}"))?;
    let s = sock
        .connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Opens `ws://addr{path}` from `source`, sending `authorization` when given.
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    source: Ipv4Addr,
    authorization: Option<&str>,
) -> Result<Ws> {
    Ok(connect_with(addr, path, source, authorization, false)
        .await?
        .0)
}

/// [`connect`], offering permessage-deflate when `deflate`; also says whether the server
/// accepted it (its frames may then be compressed: read them with [`Inflating`]).
pub async fn connect_with(
    addr: SocketAddr,
    path: &str,
    source: Ipv4Addr,
    authorization: Option<&str>,
    deflate: bool,
) -> Result<(Ws, bool)> {
    let stream = tcp(addr, source).await?;
    let mut req = hyper::Request::builder()
        .method("GET")
        .uri(format!("http://{addr}{path}"))
        .header("Host", addr.to_string())
        .header("Upgrade", "websocket")
        .header("Connection", "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13");
    if let Some(a) = authorization {
        req = req.header("Authorization", a);
    }
    if deflate {
        req = req.header(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        );
    }
    let req = req.body(Empty::<Bytes>::new())?;
    let (ws, resp) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream)
        .await
        .map_err(|e| anyhow!("WebSocket handshake with {addr}{path}: {e}"))?;
    let accepted = resp
        .headers()
        .get("sec-websocket-extensions")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("permessage-deflate"));
    Ok((ws, accepted))
}

/// Bytes a server frame of `payload` bytes takes on the wire (header included).
pub fn wire_len(payload: usize) -> usize {
    payload
        + match payload {
            0..=125 => 2,
            126..=65535 => 4,
            _ => 10,
        }
}

/// A reader of server frames that inflates permessage-deflate ones (RSV1), each message on its
/// own (the server does not take context over), and answers pings.
pub struct Inflating {
    io: TokioIo<Upgraded>,
    buf: Vec<u8>,
    d: flate2::Decompress,
    /// Bytes of frames read, headers included.
    pub wire: u64,
}

impl Inflating {
    pub fn new(ws: Ws) -> Self {
        Inflating {
            io: ws.into_inner(),
            buf: Vec::new(),
            d: flate2::Decompress::new(false),
            wire: 0,
        }
    }

    /// The next data or close frame: its opcode and (inflated) payload.
    pub async fn next(&mut self) -> Result<(u8, Vec<u8>)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            if let Some((first, payload)) = self.take()? {
                match first & 0x0f {
                    0x9 => {
                        // A pong, masked with a zero mask, echoing the ping.
                        let mut pong = vec![0x8A, 0x80 | payload.len() as u8, 0, 0, 0, 0];
                        pong.extend_from_slice(&payload);
                        self.io.write_all(&pong).await?;
                    }
                    0xA => {}
                    op if first & 0x40 != 0 => return Ok((op, self.inflate(&payload)?)),
                    op => return Ok((op, payload)),
                }
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.io.read(&mut chunk).await?;
            if n == 0 {
                anyhow::bail!("the server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One whole frame from the buffer, if there is one.
    fn take(&mut self) -> Result<Option<(u8, Vec<u8>)>> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        let (len, at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into()?) as usize, 10),
            126 | 127 => return Ok(None),
            n => (n as usize, 2),
        };
        if b.len() < at + len {
            return Ok(None);
        }
        let f = (b[0], b[at..at + len].to_vec());
        self.buf.drain(..at + len);
        self.wire += (at + len) as u64;
        Ok(Some(f))
    }

    fn inflate(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        let mut data = payload.to_vec();
        data.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(payload.len() * 4 + 64);
        loop {
            let (i, o) = (self.d.total_in(), out.len());
            self.d
                .decompress_vec(&data, &mut out, flate2::FlushDecompress::Sync)?;
            data.drain(..(self.d.total_in() - i) as usize);
            // Done when all input is in and the output had room to spare.
            if data.is_empty() && out.len() < out.capacity() {
                break;
            }
            if self.d.total_in() == i && out.len() == o {
                anyhow::bail!("a compressed frame that does not inflate");
            }
            out.reserve(out.capacity().max(1024));
        }
        self.d.reset(false);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_cycle_through_loopback_addresses() {
        assert_eq!(source_ip(0, 4), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_ip(5, 4), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_ip(5, 0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(source_ip(300, 1000), Ipv4Addr::new(127, 0, 1, 51));
    }
}
