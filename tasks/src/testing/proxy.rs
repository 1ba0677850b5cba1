//! A TCP proxy that cuts or stalls one service's link to a real server.
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A TCP proxy in front of a real server, so a test can cut one service's link without touching
/// the server others use: `cut()` drops every connection and refuses new ones (they are accepted
/// and closed at once, as by a dead peer) until `restore()`; `hold()` keeps the connections but
/// forwards nothing either way (a stalled link) until `release()`.
pub struct TcpProxy {
    pub addr: SocketAddr,
    open: Arc<watch::Sender<bool>>,
    held: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

/// Copies `r` to `w`, never while `held`.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut held: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if held.wait_for(|h| !*h).await.is_err() {
            return;
        }
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Read just before a hold: still held back.
        if held.wait_for(|h| !*h).await.is_err() || w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl TcpProxy {
    /// Listens on a free port and forwards to `target`.
    ///
    /// # Panics
    /// No port can be bound.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(watch::channel(true).0);
        let held = Arc::new(watch::channel(false).0);
        let (state, hold) = (open.clone(), held.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*state.borrow() {
                    continue; // dropped: closed at once
                }
                let mut cut = state.subscribe();
                let (up, down) = (hold.subscribe(), hold.subscribe());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        () = pump(cr, sw, up) => {}
                        () = pump(sr, cw, down) => {}
                        _ = cut.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        TcpProxy {
            addr,
            open,
            held,
            task,
        }
    }

    /// Forwards nothing (either way) until [`TcpProxy::release`]; connections stay open.
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Forwards again what was held back, and what follows.
    pub fn release(&self) {
        self.held.send_replace(false);
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Proxies again.
    pub fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
