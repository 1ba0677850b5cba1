//! The accept loop: HTTP/1.1 connections with upgrades, header-read timeout, and graceful
//! shutdown (stop accepting, let in-flight requests finish, then stop WebSocket sessions).
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use taskboard_telemetry::Slotted;
use tokio::io::AsyncWriteExt;

use crate::edge::routes;
use crate::AppState;

/// The answer to a socket over the cap: written without hyper, then the socket is closed.
const OVER_CAPACITY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Content-Length: 84\r\nRetry-After: 5\r\nConnection: close\r\n\r\n\
{\"error\":\"Too many connections\",\"message\":\"retry later\",\"code\":\"resource_exhausted\"}";
/// How long a rejected socket may take to accept the 503.
const REJECT_WRITE: Duration = Duration::from_secs(1);

/// The original's read timeout, applied to request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest request head (request line and headers) accepted: far more than any browser or SDK
/// sends, far less than what would let a client pin memory (hyper answers 431 beyond it).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Pause after an accept error (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Accepts until `shutdown` resolves, then waits for open HTTP exchanges until the drain
/// deadline (`grace` after the signal), which it returns: the whole drain, WebSocket sessions
/// included, shares that one deadline.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> tokio::time::Instant {
    // Connections are tracked so shutdown can wait for their in-flight exchanges.
    let conns = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Some(slot) = state.limits.socket() else {
            crate::metrics::rejected("socket");
            conns.spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(REJECT_WRITE, stream.write_all(OVER_CAPACITY)).await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        if let Some(n) = state.config.ws_send_buffer {
            if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(n) {
                tracing::warn!(error = %e, "setting SO_SNDBUF failed");
            }
        }
        let st = state.clone();
        let svc = service_fn(move |req| {
            let st = st.clone();
            async move { Ok::<_, std::convert::Infallible>(routes::handle(st, req, peer).await) }
        });
        let conn = http
            .serve_connection(TokioIo::new(Slotted { io: stream, slot }), svc)
            .with_upgrades();
        let stop = stop.clone();
        conns.spawn(async move {
            tokio::pin!(conn);
            let r = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    // Finish the request in flight (if any), then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                tracing::debug!(peer.addr = %peer, error = %e, "connection error");
            }
        });
    }
    let deadline = tokio::time::Instant::now() + grace;
    drop(listener);
    tracing::info!(
        ?grace,
        "shutdown: no longer accepting; finishing in-flight requests"
    );
    // WebSocket sessions are told to close at once (1001); plain HTTP exchanges get the grace.
    state.shutdown.cancel();
    stop.cancel();
    conns.close();
    if tokio::time::timeout_at(deadline, conns.wait())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "grace period over with HTTP connections still open");
    }
    deadline
}
