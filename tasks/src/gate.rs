//! Fail fast while the database is down: calls answer UNAVAILABLE at once instead of waiting for
//! a pooled connection until the caller's deadline. The health probe (on its own connection, so a
//! busy pool is never mistaken for a dead database) opens and closes the gate; a call that meets
//! UNAVAILABLE wakes the probe at once instead of waiting for its next round.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;
use tonic::{Code, Status};

/// Shared "is the database reachable" flag (cheap to clone).
#[derive(Clone, Debug)]
pub struct DbGate {
    up: Arc<AtomicBool>,
    suspect: Arc<Notify>,
}

impl Default for DbGate {
    fn default() -> Self {
        // Optimistic until the first probe says otherwise.
        DbGate {
            up: Arc::new(AtomicBool::new(true)),
            suspect: Arc::new(Notify::new()),
        }
    }
}

impl DbGate {
    /// `Ok` while the database is believed reachable.
    ///
    /// # Errors
    /// UNAVAILABLE while it is known to be down.
    pub fn check(&self) -> Result<(), Status> {
        if self.up.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(Status::unavailable("database unavailable"))
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records what the health probe found; returns whether that changed the state.
    pub fn set(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::Relaxed) != up
    }

    /// Passes a call's result through; an UNAVAILABLE one wakes the probe.
    pub fn observe<T>(&self, r: Result<T, Status>) -> Result<T, Status> {
        if r.as_ref().is_err_and(|s| s.code() == Code::Unavailable) {
            self.suspect.notify_one();
        }
        r
    }

    /// Resolves when a call has met UNAVAILABLE since the last time (the probe waits on it).
    pub async fn suspected(&self) {
        self.suspect.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unavailable_result_wakes_the_probe_which_closes_and_reopens_the_gate() {
        let g = DbGate::default();
        assert!(g.check().is_ok());
        let _ = g.observe::<()>(Err(Status::not_found("x")));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), g.suspected())
                .await
                .is_err(),
            "other errors do not wake the probe"
        );
        let _ = g.observe::<()>(Err(Status::unavailable("database unavailable")));
        tokio::time::timeout(std::time::Duration::from_secs(1), g.suspected())
            .await
            .expect("the probe is woken");
        assert!(g.set(false));
        assert_eq!(g.check().unwrap_err().code(), Code::Unavailable);
        assert!(g.set(true));
        assert!(g.check().is_ok());
    }
}
