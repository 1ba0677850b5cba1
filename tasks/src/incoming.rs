//! The gRPC server's incoming connections, guarded: at most `max` open at once (more are closed
//! at accept), and a connection that sends nothing within the handshake deadline is closed
//! before tonic ever sees it, so idle sockets cannot pile up until new clients (health checks
//! included) find no descriptor left.
use std::sync::Arc;
use std::time::Duration;

use taskboard_telemetry::Slotted;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections handed to tonic but not yet taken (it takes them as fast as it can).
const HANDOFF: usize = 64;
/// Pause after an accept error (out of descriptors, say) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Accepts on `listener` (on a task owned by `tracker`, stopped by `stop`) and yields the
/// connections that pass the cap and send their first byte within `handshake`.
pub fn guarded(
    listener: TcpListener,
    max: usize,
    handshake: Duration,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> ReceiverStream<std::io::Result<Slotted>> {
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
                    let _ = tx.send(Ok(Slotted { io: stream, slot })).await;
                } else {
                    metrics::counter!("taskboard_grpc_connections_rejected_total", "reason" => "silent")
                        .increment(1);
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
