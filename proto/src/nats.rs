//! The NATS half of the contract between the task service (publisher) and the gateway
//! (subscriber): header names, subjects, and a round trip that proves the server has processed
//! what a connection sent.
use std::time::Duration;

use futures_util::StreamExt;

/// Board id of the event (decimal).
pub const HEADER_BOARD: &str = "Taskboard-Board";
/// Per-board sequence number of the event (decimal, from 1).
pub const HEADER_SEQ: &str = "Taskboard-Seq";
/// Id of the task the event is about.
pub const HEADER_TASK: &str = "Taskboard-Task";
/// Commit time in µs since the epoch (for the lag histograms).
pub const HEADER_COMMITTED_AT_US: &str = "Taskboard-Committed-At-Us";
/// JetStream's de-duplication id: `<board>-<seq>`.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";

/// The subject of an event of `kind` (`created`, `updated`, `deleted`) under `prefix`.
pub fn subject(prefix: &str, kind: &str) -> String {
    format!("{prefix}.{kind}")
}

/// What the gateway subscribes to: every event under `prefix`.
pub fn wildcard(prefix: &str) -> String {
    format!("{prefix}.>")
}

/// Proof that the server has processed everything a connection sent before: a marker published
/// to the connection's own inbox comes back only after the server has handled every earlier
/// message of the connection (NATS keeps one connection's messages in order). `flush()` is no such
/// proof: it returns once the bytes left this process, which a stopped server still accepts.
pub struct RoundTrip {
    inbox: async_nats::Subject,
    sub: async_nats::Subscriber,
    sent: u64,
}

impl RoundTrip {
    /// Subscribes to a fresh inbox.
    ///
    /// # Errors
    /// The client is closed.
    pub async fn new(nats: &async_nats::Client) -> Result<RoundTrip, async_nats::SubscribeError> {
        let inbox = async_nats::Subject::from(nats.new_inbox());
        let sub = nats.subscribe(inbox.clone()).await?;
        Ok(RoundTrip {
            inbox,
            sub,
            sent: 0,
        })
    }

    /// `Ok(true)` once the server has echoed a fresh marker, `Ok(false)` when it has not within
    /// `timeout`.
    ///
    /// # Errors
    /// The marker could not be queued (the client is closed).
    pub async fn confirm(
        &mut self,
        nats: &async_nats::Client,
        timeout: Duration,
    ) -> Result<bool, async_nats::PublishError> {
        self.sent += 1;
        let marker = self.sent.to_string();
        nats.publish(self.inbox.clone(), marker.clone().into())
            .await?;
        let echoed = async {
            while let Some(m) = self.sub.next().await {
                // Markers of earlier, timed-out rounds may still arrive: wait for this one.
                if m.payload == marker.as_bytes() {
                    return true;
                }
            }
            false
        };
        Ok(tokio::time::timeout(timeout, echoed).await.unwrap_or(false))
    }
}
