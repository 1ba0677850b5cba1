//! How a session ends: the reasons, the close code and reason each one sends, and the resume hint
//! a slow client gets (always a query the server accepts, naming only events it received whole).
use std::collections::HashMap;

use super::outbound::WriteError;
use crate::fanout::delivery::{Delivery, Kind as DeliveryKind};

/// The longest close reason RFC 6455 allows.
const MAX_CLOSE_REASON: usize = 123;
/// Why a session ended (logged; the close code already told the client).
#[derive(Debug)]
pub(super) enum End {
    ClientClosed(u16),
    Shutdown,
    SlowConsumer,
    PingTimeout,
    ReplayUnavailable,
    WriteTimeout,
    /// The bearer token's `exp` passed (1008): the client reconnects with a fresh token.
    TokenExpired,
    /// A token sent in-band names another user or role (1008).
    OtherPrincipal(&'static str),
    /// An access change reached the socket (removed from a board, downgraded, board deleted).
    Revoked(crate::fanout::access::Revoked),
    Io(String),
}

impl End {
    /// The `reason` label of `taskboard_ws_disconnects_total`.
    pub(super) fn label(&self) -> &'static str {
        match self {
            End::ClientClosed(_) => "client_closed",
            End::Shutdown => "shutdown",
            End::SlowConsumer => "slow_consumer",
            End::PingTimeout => "ping_timeout",
            End::ReplayUnavailable => "replay_unavailable",
            End::WriteTimeout => "write_timeout",
            End::TokenExpired => "token_expired",
            End::OtherPrincipal(_) => "token_other_principal",
            End::Revoked(_) => "access_changed",
            End::Io(_) => "error",
        }
    }
}

impl From<WriteError> for End {
    fn from(e: WriteError) -> End {
        match e {
            WriteError::TimedOut => End::WriteTimeout,
            WriteError::Io(e) => End::Io(e),
        }
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::ClientClosed(code) => write!(f, "client closed ({code})"),
            End::Shutdown => f.write_str("server shutting down (1001)"),
            End::SlowConsumer => f.write_str("slow consumer (1013)"),
            End::PingTimeout => f.write_str("ping timeout (1001)"),
            End::ReplayUnavailable => f.write_str("replay unavailable (1013)"),
            End::WriteTimeout => f.write_str("write timed out"),
            End::TokenExpired => f.write_str("token expired (1008)"),
            End::OtherPrincipal(why) => write!(f, "{why} (1008)"),
            End::Revoked(r) => write!(f, "{} ({})", r.reason, r.code),
            End::Io(e) => write!(f, "connection error: {e}"),
        }
    }
}

/// Whether a close code may be sent back (1005, 1006 and 1015 are only ever reported locally).
pub(super) fn sendable(code: u16) -> u16 {
    match code {
        1000..=1003 | 1007..=1014 | 3000..=4999 => code,
        _ => 1000,
    }
}

/// Moves each board's `last` back to just before its first event in `unsent`.
pub(super) fn rewind(last: &mut HashMap<i64, i64>, unsent: &[Delivery]) {
    for d in unsent.iter().rev() {
        if d.kind == DeliveryKind::Event {
            last.insert(d.board_id, d.seq - 1);
        }
    }
}

/// A close reason telling a slow client where to resume, as query parameters the server accepts
/// added to the client's own `board_id`s (within the 123-byte limit of a close reason; when the
/// boards do not fit, it says to reload instead).
pub(super) fn resume_hint(what: &str, boards: &[i64], last: &HashMap<i64, i64>) -> String {
    if let [b] = boards {
        if let Some(seq) = last.get(b) {
            return format!("{what}; resume with since={seq}");
        }
    }
    let mut s = format!("{what}; resume with ");
    let mut pairs: Vec<(&i64, &i64)> = last.iter().collect();
    pairs.sort();
    let query = pairs
        .iter()
        .map(|(b, seq)| format!("since={b}:{seq}"))
        .collect::<Vec<_>>()
        .join("&");
    if query.is_empty() || s.len() + query.len() > MAX_CLOSE_REASON {
        return format!("{what}; reload the board and reconnect");
    }
    s.push_str(&query);
    s
}

/// The code and reason of a close frame's payload (1005, "no status", when it has none).
pub(super) fn close_of(p: &[u8]) -> (u16, String) {
    if p.len() < 2 {
        return (1005, String::new());
    }
    let reason = String::from_utf8_lossy(&p[2..]).into_owned();
    (u16::from_be_bytes([p[0], p[1]]), reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query a client would reconnect with: its own board filters plus the hint's.
    fn reconnect_query(boards: &[i64], hint: &str) -> Option<String> {
        let params = hint.split_once("resume with ")?.1;
        let mut q: Vec<String> = boards.iter().map(|b| format!("board_id={b}")).collect();
        q.push(params.to_owned());
        Some(q.join("&"))
    }

    #[test]
    fn every_resume_hint_is_accepted_by_the_server() {
        let cases: Vec<(Vec<i64>, HashMap<i64, i64>)> = vec![
            (vec![4], HashMap::from([(4, 17)])),
            (vec![4, 5], HashMap::from([(4, 17), (5, 1)])),
            // All boards: the boards it has seen so far.
            (vec![], HashMap::from([(4, 17), (9, 3)])),
        ];
        for (boards, last) in cases {
            let hint = resume_hint("slow consumer", &boards, &last);
            assert!(hint.len() <= MAX_CLOSE_REASON, "{hint}");
            let q = reconnect_query(&boards, &hint).expect(&hint);
            let sub = crate::ws::parse_query(Some(&q))
                .unwrap_or_else(|e| panic!("hint {hint:?} rejected: {e:?}"));
            assert_eq!(sub.since, last.into_iter().collect(), "{hint}");
        }
        // Too many boards to list: no since at all, but never a query the server refuses.
        let many: HashMap<i64, i64> = (1..=40).map(|b| (b * 1000, 99_999)).collect();
        let boards: Vec<i64> = many.keys().copied().collect();
        let hint = resume_hint("slow consumer", &boards, &many);
        assert!(hint.len() <= MAX_CLOSE_REASON);
        assert!(hint.ends_with("reload the board and reconnect"), "{hint}");
    }

    #[test]
    fn a_timed_out_batch_rewinds_to_the_last_event_sent_whole() {
        let mut last = HashMap::from([(1, 5), (2, 9)]);
        let unsent = [
            Delivery::new(1, 4, b"{}"),
            Delivery::unsequenced(2, b"{}"),
            Delivery::new(2, 8, b"{}"),
            Delivery::new(1, 5, b"{}"),
            Delivery::new(2, 9, b"{}"),
        ];
        rewind(&mut last, &unsent);
        assert_eq!(last, HashMap::from([(1, 3), (2, 7)]));
    }

    #[test]
    fn only_sendable_close_codes_are_echoed() {
        assert_eq!(sendable(1000), 1000);
        assert_eq!(sendable(4001), 4001);
        assert_eq!(sendable(1005), 1000);
        assert_eq!(sendable(1006), 1000);
    }
}
