//! Where an event from NATS belongs: its board and seq from the headers the task service sets, or
//! (header-less events of the Go original) its board from the JSON payload. A leaf the intake uses.
use taskboard_proto::nats::{HEADER_BOARD, HEADER_SEQ};

/// Routing data of an event, from its NATS headers.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    pub board_id: i64,
    pub seq: i64,
}

/// Reads `Taskboard-Board` and `Taskboard-Seq`.
pub fn route(headers: Option<&async_nats::HeaderMap>) -> Option<Route> {
    let h = headers?;
    let num = |k: &str| h.get(k)?.as_str().parse::<i64>().ok().filter(|v| *v > 0);
    Some(Route {
        board_id: num(HEADER_BOARD)?,
        seq: num(HEADER_SEQ)?,
    })
}

/// The board of a header-less event, from its JSON payload (the Go original's task service
/// publishes `{"type":…,"task_id":…,"board_id":…,…}` with no headers).
pub fn board_of_payload(payload: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Legacy {
        board_id: i64,
    }
    serde_json::from_slice::<Legacy>(payload)
        .ok()
        .map(|l| l.board_id)
        .filter(|b| *b > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_reads_board_and_seq_headers() {
        let mut h = async_nats::HeaderMap::new();
        h.insert(HEADER_BOARD, "7");
        h.insert(HEADER_SEQ, "42");
        assert_eq!(
            route(Some(&h)),
            Some(Route {
                board_id: 7,
                seq: 42
            })
        );
    }

    #[test]
    fn messages_without_valid_headers_have_no_route() {
        assert_eq!(route(None), None);
        let mut h = async_nats::HeaderMap::new();
        h.insert(HEADER_BOARD, "x");
        h.insert(HEADER_SEQ, "1");
        assert_eq!(route(Some(&h)), None);
        let mut h = async_nats::HeaderMap::new();
        h.insert(HEADER_BOARD, "-1");
        h.insert(HEADER_SEQ, "1");
        assert_eq!(route(Some(&h)), None);
    }
}
