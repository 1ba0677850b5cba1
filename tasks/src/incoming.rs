//! The gRPC server's incoming connections, guarded: at most `max` open at once (more are closed
//! at accept), and a connection that sends nothing within the handshake deadline is closed
//! before tonic ever sees it, so idle sockets cannot pile up until new clients (health checks
//! included) find no descriptor left.
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Connections handed to tonic but not yet taken (it takes them as fast as it can).
const HANDOFF: usize = 64;
/// Pause after an accept error (out of descriptors, say) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A gRPC client socket and its slot (released when tonic drops the connection).
pub struct Guarded {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Accepts on `listener` (on a task owned by `tracker`, stopped by `stop`) and yields the
/// connections that pass the cap and send their first byte within `handshake`.
pub fn guarded(
    listener: TcpListener,
    max: usize,
    handshake: Duration,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> ReceiverStream<std::io::Result<Guarded>> {
    let (tx, rx) = mpsc::channel(HANDOFF);
    let slots = Arc::new(Semaphore::new(max.max(1)));
    let waiting = tracker.clone();
    tracker.spawn(async move {
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics::counter!("taskboard_grpc_connections_rejected_total", "reason" => "cap")
                    .increment(1);
                continue; // dropped: closed at once
            };
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            let stop = stop.clone();
            waiting.spawn(async move {
                let mut first = [0u8; 1];
                let spoke = tokio::select! {
                    r = tokio::time::timeout(handshake, stream.peek(&mut first)) => {
                        matches!(r, Ok(Ok(n)) if n > 0)
                    }
                    _ = stop.cancelled() => false,
                };
                if spoke {
                    let _ = tx.send(Ok(Guarded { io: stream, _slot: slot })).await;
                } else {
                    metrics::counter!("taskboard_grpc_connections_rejected_total", "reason" => "silent")
                        .increment(1);
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
