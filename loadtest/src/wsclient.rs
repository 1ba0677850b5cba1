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
    let req = req.body(Empty::<Bytes>::new())?;
    let (ws, _) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream)
        .await
        .map_err(|e| anyhow!("WebSocket handshake with {addr}{path}: {e}"))?;
    Ok(ws)
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
