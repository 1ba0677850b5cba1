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

/// The `kind` of the event that says "events were pruned: reload the board, then follow from
/// `seq`" (ListEvents' `reset`, WatchEvents' reset event, the WebSocket frame).
pub const KIND_RESET: &str = "reset";

/// The browser JSON of a reset: `{"type":"reset","board_id":B,"seq":HEAD}`.
pub fn reset_payload(board_id: i64, head: i64) -> String {
    format!(r#"{{"type":"{KIND_RESET}","board_id":{board_id},"seq":{head}}}"#)
}

/// Why [`connect`] failed.
#[derive(Debug)]
pub enum ConnectError {
    /// `NATS_URL` does not parse.
    BadUrl(String),
    Connect(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::BadUrl(m) => write!(f, "invalid NATS_URL {m}"),
            ConnectError::Connect(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Connects to the comma-separated `urls` in the background (start-up never waits for NATS) and
/// reconnects forever with a capped backoff; `on_event` hears every connection event.
///
/// # Errors
/// A URL does not parse.
pub async fn connect<F, Fut>(
    name: &str,
    urls: &str,
    on_event: F,
) -> Result<async_nats::Client, ConnectError>
where
    F: Fn(async_nats::Event) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    let addrs = urls
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConnectError::BadUrl(format!("{urls:?}: {e}")))?;
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis(100u64 << attempt.min(4)).min(Duration::from_secs(2))
        })
        .event_callback(on_event)
        .connect(addrs)
        .await
        .map_err(|e| ConnectError::Connect(e.to_string()))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_payload_is_the_documented_json() {
        assert_eq!(
            reset_payload(3, 17),
            r#"{"type":"reset","board_id":3,"seq":17}"#
        );
    }
}
