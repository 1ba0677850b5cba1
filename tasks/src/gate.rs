//! Fail fast while the database is down: calls answer UNAVAILABLE at once instead of waiting for
//! a pooled connection until the caller's deadline. The health probe (on its own connection, so a
//! busy pool is never mistaken for a dead database) opens and closes the gate; a call that meets
//! UNAVAILABLE wakes the probe at once instead of waiting for its next round.
use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tonic::{Code, Status};

/// Shared "is the database reachable" flag (cheap to clone).
#[derive(Clone, Debug)]
pub struct DbGate {
    up: Arc<watch::Sender<bool>>,
    suspect: Arc<Notify>,
}

impl Default for DbGate {
    fn default() -> Self {
        // Optimistic until the first probe says otherwise.
        DbGate {
            up: Arc::new(watch::channel(true).0),
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
        if *self.up.borrow() {
            Ok(())
        } else {
            Err(unavailable())
        }
    }

    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Records what the health probe found; returns whether that changed the state.
    pub fn set(&self, up: bool) -> bool {
        self.up.send_replace(up) != up
    }

    /// Runs a call that needs the database: UNAVAILABLE at once while the gate is closed, and
    /// also as soon as it closes while the call waits (for a pooled connection, say).
    ///
    /// # Errors
    /// The call's own error, or UNAVAILABLE.
    pub async fn run<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        self.check()?;
        let mut up = self.up.subscribe();
        let r = tokio::select! {
            r = call => r,
            _ = up.wait_for(|up| !*up) => Err(unavailable()),
        };
        self.observe(r)
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

fn unavailable() -> Status {
    Status::unavailable("database unavailable")
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

    #[tokio::test]
    async fn a_waiting_call_is_answered_when_the_gate_closes() {
        let g = DbGate::default();
        let closer = g.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            closer.set(false);
        });
        let r = g.run(std::future::pending::<Result<(), Status>>()).await;
        assert_eq!(r.unwrap_err().code(), Code::Unavailable);
    }
}
