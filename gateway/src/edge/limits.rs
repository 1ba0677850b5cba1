//! Caps on client sockets, so a flood of cheap connections cannot take the process to its
//! descriptor limit: every socket (HTTP or WebSocket) holds a slot; WebSockets also hold one of
//! their own, fewer, so REST and health checks are still answered when WebSockets are at their cap.
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept free for everything else (NATS, gRPC, logs, accept itself).
const FD_RESERVE: usize = 512;
/// Sockets kept for REST and health checks when WebSockets are at their cap.
const REST_HEADROOM: usize = 256;

/// The caps and their slots.
pub struct Limits {
    sockets: Arc<Semaphore>,
    websockets: Arc<Semaphore>,
    pub max_sockets: usize,
    pub max_websockets: usize,
}

/// The soft RLIMIT_NOFILE of this process (from /proc; `None` where it cannot be read).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

impl Limits {
    /// `0` means automatic: sockets = the descriptor limit less a reserve; WebSockets = sockets
    /// less headroom for REST.
    pub fn new(max_sockets: usize, max_websockets: usize) -> Limits {
        let max_sockets = if max_sockets > 0 {
            max_sockets
        } else {
            open_files_limit()
                .map_or(10_000, |n| n.saturating_sub(FD_RESERVE))
                .max(64)
        };
        let max_websockets = if max_websockets > 0 {
            max_websockets.min(max_sockets)
        } else {
            max_sockets.saturating_sub(REST_HEADROOM).max(1)
        };
        Limits {
            sockets: Arc::new(Semaphore::new(max_sockets)),
            websockets: Arc::new(Semaphore::new(max_websockets)),
            max_sockets,
            max_websockets,
        }
    }

    /// A socket slot, held as long as the socket is open; `None` at the cap.
    pub fn socket(&self) -> Option<OwnedSemaphorePermit> {
        self.sockets.clone().try_acquire_owned().ok()
    }

    /// A WebSocket slot, held by the session; `None` at the cap.
    pub fn websocket(&self) -> Option<OwnedSemaphorePermit> {
        self.websockets.clone().try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_at_the_cap_and_come_back_when_released() {
        let l = Limits::new(2, 1);
        let a = l.socket().unwrap();
        let _b = l.socket().unwrap();
        assert!(l.socket().is_none());
        drop(a);
        assert!(l.socket().is_some());
        let w = l.websocket().unwrap();
        assert!(l.websocket().is_none());
        drop(w);
        assert!(l.websocket().is_some());
    }

    #[test]
    fn automatic_caps_stay_under_the_descriptor_limit() {
        let l = Limits::new(0, 0);
        if let Some(n) = open_files_limit() {
            assert!(l.max_sockets < n.max(64 + FD_RESERVE));
        }
        assert!(l.max_websockets < l.max_sockets);
    }
}
