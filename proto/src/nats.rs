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
        // A link that goes silent (a partition: no RST, no FIN) is noticed after two unanswered
        // pings, so within ~20 s rather than the default 60 s interval's two minutes.
        .ping_interval(Duration::from_secs(10))
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis(100u64 << attempt.min(4)).min(Duration::from_secs(2))
        })
        .event_callback(on_event)
        .connect(addrs)
        .await
        .map_err(|e| ConnectError::Connect(e.to_string()))
}

// Subjects. Every event goes to its board's subject, `board.<prefix>.<id>.<kind>`, so a gateway
// subscribes only to the boards its WebSocket clients watch (`board_interest`), and one with an
// all-boards client to `all_boards`. The Go original's subjects, `<prefix>.<kind>`
// (`tasks.created`, ...), are published as well with NATS_LEGACY_SUBJECTS=on. The board subjects
// lie outside `<prefix>.>` on purpose: a subscriber of `wildcard` (the Go original's api-gateway,
// or ours with NATS_SUBSCRIBE=wildcard) gets each event once, on its legacy subject, and never a
// second copy it might not deduplicate.

/// The subject of `board`'s events of `kind` (`created`, `updated`, `deleted`, `board_updated`, ...).
pub fn board_subject(prefix: &str, board: i64, kind: &str) -> String {
    format!("board.{prefix}.{board}.{kind}")
}

/// What a gateway subscribes to for one board: each of its events, whatever the kind.
pub fn board_interest(prefix: &str, board: i64) -> String {
    format!("board.{prefix}.{board}.*")
}

/// What a gateway with an all-boards WebSocket client subscribes to: every board's events.
pub fn all_boards(prefix: &str) -> String {
    format!("board.{prefix}.*.*")
}

/// The Go original's subject of an event of `kind`: `<prefix>.<kind>`.
pub fn legacy_subject(prefix: &str, kind: &str) -> String {
    format!("{prefix}.{kind}")
}

/// Everything under `prefix`: the legacy subjects only, not the board subjects
/// (NATS_SUBSCRIBE=wildcard, for a task service that publishes only the legacy subjects, such as
/// the Go original; in front of ours it needs NATS_LEGACY_SUBJECTS=on).
pub fn wildcard(prefix: &str) -> String {
    format!("{prefix}.>")
}

/// The presence announcements of `board`'s viewers on one gateway (`presence.<prefix>.<board>`).
pub fn presence_subject(prefix: &str, board: i64) -> String {
    format!("presence.{prefix}.{board}")
}

/// Every board's presence announcements (NATS_SUBSCRIBE=wildcard).
pub fn presence_wildcard(prefix: &str) -> String {
    format!("presence.{prefix}.*")
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

    /// NATS subject matching: `*` is one token, `>` one or more at the end.
    fn matches(pattern: &str, subject: &str) -> bool {
        let (p, s): (Vec<&str>, Vec<&str>) =
            (pattern.split('.').collect(), subject.split('.').collect());
        for (i, t) in p.iter().enumerate() {
            match *t {
                ">" => return s.len() > i,
                "*" if i < s.len() => {}
                t if s.get(i) == Some(&t) => {}
                _ => return false,
            }
        }
        p.len() == s.len()
    }

    #[test]
    fn each_subscription_gets_exactly_its_subjects() {
        let ev = board_subject("tasks", 12, "created");
        assert_eq!(ev, "board.tasks.12.created");
        assert!(matches(&board_interest("tasks", 12), &ev));
        assert!(!matches(&board_interest("tasks", 1), &ev), "not board 1");
        assert!(!matches(&board_interest("tasks", 123), &ev));
        assert!(matches(&all_boards("tasks"), &ev));
        assert!(
            !matches(&wildcard("tasks"), &ev),
            "the original's api-gateway (tasks.>) must not get a second copy"
        );
        assert!(!matches(&all_boards("other"), &ev), "another prefix");
        let legacy = legacy_subject("tasks", "created");
        assert_eq!(legacy, "tasks.created", "the Go original's subject");
        assert!(matches(&wildcard("tasks"), &legacy));
        assert!(!matches(&all_boards("tasks"), &legacy));
        assert!(!matches(&board_interest("tasks", 12), &legacy));
        let p = presence_subject("tasks", 12);
        assert!(matches(&presence_wildcard("tasks"), &p));
        assert!(!matches(&wildcard("tasks"), &p), "presence is not an event");
        assert!(!matches(&all_boards("tasks"), "board.tasks.12.created.x"));
        assert!(
            !matches(&all_boards("tasks"), &p),
            "presence is not a board event"
        );
    }

    #[test]
    fn a_reset_payload_is_the_documented_json() {
        assert_eq!(
            reset_payload(3, 17),
            r#"{"type":"reset","board_id":3,"seq":17}"#
        );
    }
}
